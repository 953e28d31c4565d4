"""The built-in text-encoder kinds: ``learned``, ``hf:<id or path>`` (and ``minilm``), ``clip[:<id or path>]`` and
``report-vector``, registered in :mod:`lvseg.text.registry` when :mod:`lvseg.text` is imported.

Each kind's options are read off its encoder's constructor (:func:`lvseg.text.registry.options_from_signature`),
so a new keyword of an encoder becomes a spec option (``clip:FOLDER,eof_padding=false``) and a line of
``lvseg train --help`` without further code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lvseg.errors import LvsegError
from lvseg.text.base import TextEncoder
from lvseg.text.clip import DEFAULT_CLIP, CLIPTextEncoder
from lvseg.text.huggingface import PACKAGED_MODEL_SUMMARIES, PACKAGED_MODELS, HuggingFaceTextEncoder
from lvseg.text.learned import LearnedTextEncoder
from lvseg.text.registry import (
    TextEncoderKind,
    TextEncoderSpec,
    options_from_signature,
    register_text_encoder,
    text_encoder_kinds,
)
from lvseg.text.report_vector import UNPARSABLE_MODES, ReportVectorEncoder


def _build_learned(spec: TextEncoderSpec, texts: Sequence[str] | None) -> TextEncoder:
    if not texts:
        raise LvsegError("text encoder 'learned' builds its vocabulary from the training reports, but none were given")
    return LearnedTextEncoder.from_texts(list(texts), **spec.options)


def _learned_from_config(config: Mapping[str, Any], runtime: Mapping[str, Any]) -> TextEncoder:
    # configs written before context_layers existed had none
    return LearnedTextEncoder(
        config["vocab"],
        dim=config["dim"],
        max_length=config["max_length"],
        context_layers=config.get("context_layers", 0),
        **runtime,
    )


def _build_hf(spec: TextEncoderSpec, texts: Sequence[str] | None) -> TextEncoder:
    assert spec.source is not None  # the registry refuses an hf spec without a model
    return HuggingFaceTextEncoder(spec.source, **spec.options)


def _hf_unloaded_config(spec: TextEncoderSpec, max_length: int) -> dict[str, Any]:
    asked = spec.options.get("max_length", max_length)
    if int(asked) != int(max_length):
        raise LvsegError(
            f"text encoder {spec.format()!r}: max_length={asked} contradicts the checkpoint's {max_length}"
        )
    return {"type": "hf", "name_or_path": spec.source, "max_length": int(max_length)}


def _hf_from_config(config: Mapping[str, Any], runtime: Mapping[str, Any]) -> TextEncoder:
    return HuggingFaceTextEncoder(config["name_or_path"], max_length=config["max_length"], **runtime)


def _build_clip(spec: TextEncoderSpec, texts: Sequence[str] | None) -> TextEncoder:
    return CLIPTextEncoder(spec.source or DEFAULT_CLIP, **spec.options)


def _clip_from_config(config: Mapping[str, Any], runtime: Mapping[str, Any]) -> TextEncoder:
    return CLIPTextEncoder(
        config["name_or_path"],
        max_length=config["max_length"],
        eof_padding=config.get("eof_padding", True),
        text_config=config.get("text_config"),
        **runtime,
    )


def _build_report_vector(spec: TextEncoderSpec, texts: Sequence[str] | None) -> TextEncoder:
    return ReportVectorEncoder(**spec.options)


def _report_vector_from_config(config: Mapping[str, Any], runtime: Mapping[str, Any]) -> TextEncoder:
    return ReportVectorEncoder(unparsable=config.get("unparsable", "error"), **runtime)


LEARNED = TextEncoderKind(
    name="learned",
    summary="word embeddings trained with the model, vocabulary from the training reports (words seen "
    "min_count times); context_layers Transformer layers give each word its sentence's context",
    build=_build_learned,
    from_config=_learned_from_config,
    options=options_from_signature(
        LearnedTextEncoder.from_texts,
        skip=("texts",),
        minimum={"dim": 1, "max_length": 1, "min_count": 1, "context_layers": 0},
    ),
)

HUGGING_FACE = TextEncoderKind(
    name="hf",
    summary="a frozen Hugging Face encoder (BERT, CXR-BERT, ...), per-token last hidden states, loaded offline "
    "(LVSEG_ALLOW_DOWNLOAD=1 lets it download); cache/cache_dir: on-disk feature cache, not recorded in checkpoints",
    build=_build_hf,
    from_config=_hf_from_config,
    unloaded_config=_hf_unloaded_config,
    pretrained_source_field="name_or_path",
    options=options_from_signature(
        HuggingFaceTextEncoder.__init__,
        skip=("name_or_path",),
        minimum={"max_length": 1},
        not_recorded=("cache", "cache_dir"),
    ),
    source="<model id or local path>",
    aliases={
        name: (name, PACKAGED_MODEL_SUMMARIES.get(name, f"shipped by the {package} package"))
        for name, (package, _, _) in PACKAGED_MODELS.items()
    },
    runtime_options=("cache", "cache_dir"),
)

CLIP = TextEncoderKind(
    name="clip",
    summary="a frozen CLIP text tower, projected per-token states (RecLMIS); eof_padding: short reports get "
    "' EOF XXX' appended as in the official code",
    build=_build_clip,
    from_config=_clip_from_config,
    options=options_from_signature(
        CLIPTextEncoder.__init__, skip=("name_or_path", "text_config"), minimum={"max_length": 2}
    ),
    source="<id or path>",
    default_source=DEFAULT_CLIP,
)

REPORT_VECTOR = TextEncoderKind(
    name="report-vector",
    summary="the report grammar's 8-value vector (C2FVL); unparsable: a report outside the grammar is an error "
    "or a zero vector",
    build=_build_report_vector,
    from_config=_report_vector_from_config,
    options=options_from_signature(ReportVectorEncoder.__init__, choices={"unparsable": UNPARSABLE_MODES}),
)

BUILTIN_KINDS: tuple[TextEncoderKind, ...] = (LEARNED, HUGGING_FACE, CLIP, REPORT_VECTOR)


def register_builtin_kinds() -> None:
    """Register the built-in kinds (once: a kind already registered under its name is left as it is)."""
    registered = text_encoder_kinds()
    for kind in BUILTIN_KINDS:
        if kind.name not in registered:
            register_text_encoder(kind)
