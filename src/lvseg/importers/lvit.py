"""Import checkpoints trained with the official LViT code into :class:`lvseg.models.lvit.LViT`.

The official network carries modules its forward pass never calls (each ViT stage's ``norm`` and
``head``, unused ``CTBN``s, the up stages' embeddings, PLAM's ``conv_sig``, ``pix_module1..4``);
their weights are dropped. Every other official key maps to exactly one of our keys with the same
shape, and every one of our keys is filled, or the import fails.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.errors import CheckpointError, LvsegError
from lvseg.importers.base import ImporterOption, ImportResult, OfficialImporter, check_finite
from lvseg.models.lvit import PATCH_SIZE, LViT
from lvseg.text import frozen_encoder_config

logger = logging.getLogger(__name__)

_SUFFIX = r"(?P<rest>(?:\.[A-Za-z0-9_]+)+)$"
_STAGE = r"(?P<stage>[1-3]?)"


def _stage(match: re.Match[str]) -> int:
    return int(match["stage"] or 0)


def _level(match: re.Match[str]) -> int:
    return int(match["k"]) - 1


# (official key pattern, function giving our key prefix); ``rest`` (the tail such as ".conv.weight")
# is appended unchanged unless the rule rewrites it.
_USED_RULES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"^inc" + _SUFFIX), lambda m: "inc"),
    (re.compile(r"^down(?P<k>[1-4])\.nConvs" + _SUFFIX), lambda m: f"down.{_level(m)}.convs"),
    (re.compile(r"^up(?P<k>[1-4])\.nConvs" + _SUFFIX), lambda m: f"up.{_level(m)}.convs"),
    (
        re.compile(r"^up(?P<k>[1-4])\.pixModule(?P<rest>\.(?:conv_avg|conv_max|bottleneck\.[02])\.(?:weight|bias))$"),
        lambda m: f"up.{_level(m)}.attention",
    ),
    (re.compile(r"^outc" + _SUFFIX), lambda m: "head"),
    (re.compile(r"^reconstruct(?P<k>[1-4])" + _SUFFIX), lambda m: f"reconstruct.{_level(m)}"),
    (re.compile(r"^text_module(?P<k>[1-4])" + _SUFFIX), lambda m: f"text_proj.{_level(m)}"),
    (re.compile(r"^downVit\.CTBN3" + _SUFFIX), lambda m: "text_to_tokens"),
    (
        re.compile(r"^downVit" + _STAGE + r"\.embeddings\.position_embeddings(?P<rest>)$"),
        lambda m: f"embed.{_stage(m)}.pos_embed",
    ),
    (
        re.compile(r"^downVit" + _STAGE + r"\.embeddings\.patch_embeddings" + _SUFFIX),
        lambda m: f"embed.{_stage(m)}.proj",
    ),
    (re.compile(r"^downVit" + _STAGE + r"\.Encoder_blocks\.0" + _SUFFIX), lambda m: f"down_vit.{_stage(m)}"),
    (re.compile(r"^upVit" + _STAGE + r"\.Encoder_blocks\.0" + _SUFFIX), lambda m: f"up_vit.{_stage(m)}"),
    (re.compile(r"^downVit(?P<stage>[1-3])\.CTBN" + _SUFFIX), lambda m: f"token_down.{_stage(m) - 1}"),
    (re.compile(r"^upVit(?P<stage>[12]?)\.CTBN2" + _SUFFIX), lambda m: f"token_up.{_stage(m)}"),
]

# Official modules that exist in the state_dict but that the official forward pass never calls.
_UNUSED_RULES: list[re.Pattern[str]] = [
    re.compile(r"^(?:down|up)Vit[1-3]?\.(?:norm|head)\."),
    re.compile(r"^downVit\.(?:CTBN|CTBN2)\."),
    re.compile(r"^downVit[1-3]\.(?:CTBN2|CTBN3)\."),
    re.compile(r"^upVit[1-3]?\.embeddings\."),
    re.compile(r"^upVit[1-3]?\.(?:CTBN|CTBN3)\."),
    re.compile(r"^upVit3\.CTBN2\."),
    re.compile(r"^up[1-4]\.pixModule\.conv_sig\."),
    re.compile(r"^pix_module[1-4]\."),
]

# Keys that identify an official LViT state_dict and give its sizes.
_SIGNATURE_KEYS = (
    "inc.conv.weight",
    "outc.weight",
    "text_module4.weight",
    "downVit.CTBN3.conv.weight",
    "downVit.embeddings.position_embeddings",
)

#: Why the dropped official keys are left out: their modules are never called.
UNUSED = "unused"


def map_official_key(key: str) -> str | None:
    """Our key for an official LViT state_dict key; None for a key of a module the official forward
    never calls. Raises KeyError for a key that belongs to no official LViT module."""
    for pattern, prefix in _USED_RULES:
        match = pattern.match(key)
        if match:
            return prefix(match) + match["rest"]
    if any(pattern.match(key) for pattern in _UNUSED_RULES):
        return None
    raise KeyError(key)


def infer_official_options(official: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Model options of :class:`LViT` read off an official state_dict's shapes."""
    missing = [key for key in _SIGNATURE_KEYS if key not in official]
    if missing:
        raise LvsegError(
            f"not an official LViT state_dict: missing {', '.join(missing)} "
            f"(expected keys such as inc.conv.weight, downVit.CTBN3.conv.weight, text_module4.weight)"
        )
    inc = official["inc.conv.weight"]  # (b, in_channels, 3, 3)
    n_tokens = official["downVit.embeddings.position_embeddings"].shape[1]  # (1, N, b)
    grid = math.isqrt(n_tokens)
    if grid * grid != n_tokens:
        raise LvsegError(f"official LViT position embedding has {n_tokens} tokens, not a square grid")
    n_classes = int(official["outc.weight"].shape[0])
    if n_classes != 1:
        raise LvsegError(f"official LViT state_dict has a {n_classes}-class head; lvseg models are binary (one class)")
    return {
        "in_channels": int(inc.shape[1]),
        "img_size": int(grid * PATCH_SIZE),
        "base_channels": int(inc.shape[0]),
        "text_dim": int(official["text_module4.weight"].shape[1]),
        "text_len": int(official["downVit.CTBN3.conv.weight"].shape[1]),
    }


def convert_official_lvit_state_dict(
    official: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """Map an official LViT state_dict (keys without ``module.``) to ours.

    Returns (our state_dict, the official keys dropped because their modules are never called,
    the inferred model options). Raises :class:`LvsegError` unless every used official key maps to
    exactly one of our keys with an equal shape and every key of ``LViT(**options)`` is filled.
    """
    options = infer_official_options(official)
    try:
        reference = LViT(**options).state_dict()
    except LvsegError as error:
        raise LvsegError(f"official LViT state_dict implies unsupported options {options}: {error}") from error

    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    problems: list[str] = []
    for key, value in official.items():
        try:
            ours = map_official_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if ours is None:
            dropped.append(key)
            continue
        if ours in sources:
            problems.append(f"{key} and {sources[ours]} both map to {ours}")
            continue
        if ours not in reference:
            problems.append(f"{key} maps to {ours}, which LViT({options}) does not have")
            continue
        if tuple(value.shape) != tuple(reference[ours].shape):
            problems.append(f"{key}: shape {tuple(value.shape)} but {ours} expects {tuple(reference[ours].shape)}")
            continue
        sources[ours] = key
        converted[ours] = value.detach().clone().to(reference[ours].dtype)
    if unknown:
        problems.append(f"{len(unknown)} key(s) of no official LViT module: {', '.join(unknown[:8])}")
    unfilled = [key for key in reference if key not in converted]
    if unfilled:
        problems.append(f"{len(unfilled)} LViT key(s) with no official weight: {', '.join(unfilled[:8])}")
    if problems:
        raise LvsegError("official LViT state_dict does not convert: " + "; ".join(problems))
    ordered = {key: converted[key] for key in reference}
    return ordered, dropped, options


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official LViT ``.pth`` with ``torch.load(weights_only=True)``; errors name the file."""
    return LViTImporter().read(path)


def import_official_checkpoint(
    path: str | Path,
    out_path: str | Path,
    text_encoder: str = "hf:bert-base-uncased",
) -> ImportResult:
    """Convert the official LViT checkpoint ``path`` into an lvseg checkpoint at ``out_path``.

    The converted weights are loaded strictly into ``LViT(**options)`` before anything is written.
    ``text_encoder`` ("hf:<id or path>", the official code used per-token BERT-base features) is recorded
    in the checkpoint's config with the checkpoint's own text length; it is not loaded here, only when the
    checkpoint is used.
    """
    path, out_path = Path(path), Path(out_path)
    official = load_official_state_dict(path)
    try:
        state, dropped, options = convert_official_lvit_state_dict(official)
    except LvsegError as error:
        raise CheckpointError(f"{path}: {error}") from error
    text_config = frozen_encoder_config(text_encoder, max_length=options["text_len"])
    net = LViT(**options)
    net.load_weights(state, source=str(path))
    net.eval()
    check_finite(path, state)
    logger.info("converted %s: %d keys kept, %d unused keys dropped", path, len(state), len(dropped))
    config = {**net.config, "text_encoder": text_config}
    save_inference_checkpoint(out_path, net, config=config)
    return ImportResult(
        source=path,
        output=out_path,
        model_options=config,
        dropped={UNUSED: dropped},
        n_parameters=sum(p.numel() for p in net.parameters()),
    )


class LViTImporter(OfficialImporter):
    """Checkpoints of the official LViT code (HUANGLIZI/LViT: ``torch.save`` of the network's state dict)."""

    family = "lvit"
    model_name = "lvit"
    source_description = "official LViT .pth checkpoint"
    example_key = "inc.conv.weight"
    summary = "Convert an official LViT checkpoint into an lvseg checkpoint, dropping unused weights."
    options = (
        ImporterOption(
            "text_encoder",
            "Frozen encoder the official model was trained with (per-token BERT-base features), "
            "'hf:<model id or local folder>'; loaded when the checkpoint is used, not now.",
            default="hf:bert-base-uncased",
        ),
    )

    def recognises(self, keys: Collection[str]) -> bool:
        return any(key.startswith("downVit.") for key in keys) and "inc.conv.weight" in keys

    def convert(self, source: Path, out: Path, **options: Any) -> ImportResult:
        return import_official_checkpoint(source, out, **options)

    def result_lines(self, result: ImportResult) -> list[str]:
        keys = result.dropped_keys
        return [f"dropped {len(keys)} {UNUSED} official keys:", *(f"  {key}" for key in keys)]
