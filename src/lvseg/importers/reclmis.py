"""Import checkpoints saved by the official RecLMIS code (``ShawnHuang497/RecLMIS``) into :class:`RecLMIS`.

The official ``state_dict`` (``RecLMIS`` in the official repository's ``nets/``, saved with its
``module.`` prefix by the training script) holds the segmentation path, the frozen CLIP ViT-B/32 text tower,
the training-only reconstruction branch, the CLIP image tower (never called) and a few never-used
modules. The official code fed images as OpenCV reads them (BGR); lvseg reads RGB, which is the same for
the grayscale QaTa-COV19 and MosMedData+ images the released weights were trained on. The converted
lvseg checkpoint keeps the segmentation path and the CLIP text tower, mapped onto
``transformers`` ``CLIPTextModelWithProjection`` (so it needs no CLIP download, only the tokenizer files),
and drops the rest, listing it. Every kept official key maps to exactly one of our keys with the same
shape, and every inference key of ours is filled, or the import fails.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.errors import CheckpointError, LvsegError
from lvseg.importers import lvit as lvit_importer
from lvseg.importers.base import ImporterOption, ImportResult, OfficialImporter, check_finite
from lvseg.models.reclmis import PRESETS, RecLMIS
from lvseg.text.openai_clip import map_openai_clip_text_key, openai_clip_text_config, text_layer_count

logger = logging.getLogger(__name__)

_UNET = re.compile(r"^(inc|down[1-4]|up[1-4]|outc)\.")
_DIRECT = {
    "text_module4.": "text_proj.",
    "interact.embeddings.patch_embeddings.": "patch_embed.",
    "interact.attn_text.": "attn_text.",
    "interact.attn_img.": "attn_image.",
}
_DROPPED = (
    (
        "training-only",
        re.compile(r"^(mlp_woi|mlp_visual|interact\.CTBN|rec_text_trans1|rec_img_trans1)\.|^clip\.logit_scale$"),
    ),
    ("CLIP image tower (never called)", re.compile(r"^clip\.visual\.")),
)
_CLIP = "text_encoder.hf_model."


def clip_text_config(official: Mapping[str, torch.Tensor], heads: int | None = None) -> dict[str, Any]:
    """The ``CLIPTextConfig`` of the official CLIP text tower, read off its shapes (heads: width / 64,
    as OpenAI's CLIP builds it, unless given)."""
    vocab, width = official["clip.token_embedding.weight"].shape
    heads = heads or width // 64
    if not heads or width % heads:
        raise LvsegError(f"the CLIP text tower is {width} wide: give its number of attention heads (clip_heads)")
    return openai_clip_text_config(
        int(vocab),
        int(width),
        text_layer_count(official, "clip."),
        int(heads),
        int(official["clip.positional_embedding"].shape[0]),
        projection=int(official["clip.text_projection"].shape[1]),
        intermediate=int(official["clip.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
    )


def map_clip_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our key(s) and tensor(s) for one official CLIP text key (``clip.`` + OpenAI's name; ``in_proj`` splits
    into q, k, v)."""
    mapped = map_openai_clip_text_key(key[len("clip.") :], value, _CLIP) if key.startswith("clip.") else None
    if mapped is None:
        raise KeyError(key)
    return mapped


def _drop_reason(key: str) -> str | None:
    if key.startswith("up") and ".pixModule.conv_sig." in key:
        return "never used"
    if re.match(r"^rec_(text|img)_trans1\.decoder1\.decoder_layers\.\d+\.encoder_attn", key):
        return "never used"
    for reason, pattern in _DROPPED:
        if pattern.match(key):
            return reason
    return None


def map_official_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | str:
    """Our key(s) and tensor(s) for one official RecLMIS key, or the reason it is dropped.

    Raises KeyError for a key of no official RecLMIS module.
    """
    reason = _drop_reason(key)
    if reason is not None:
        return reason
    if _UNET.match(key):
        ours = lvit_importer.map_official_key(key)
        return "never used" if ours is None else {ours: value}
    if key == "interact.embeddings.position_embeddings":
        return {"pos_embed": value}
    if key.startswith("clip."):
        return map_clip_key(key, value)
    for prefix, replacement in _DIRECT.items():
        if key.startswith(prefix):
            return {replacement + key[len(prefix) :]: value}
    raise KeyError(key)


def convert_official_reclmis_state_dict(
    official: Mapping[str, torch.Tensor],
    tokenizer: str,
    preset: str | None = None,
    clip_heads: int | None = None,
    max_length: int = 18,
) -> tuple[RecLMIS, dict[str, list[str]]]:
    """Build a :class:`RecLMIS` holding the official weights (keys without ``module.``).

    Returns (the model in eval mode, {reason: dropped official keys}). Raises :class:`LvsegError` listing
    every key that maps nowhere, every shape mismatch and every inference key left unfilled.
    """
    from lvseg.text.clip import CLIPTextEncoder

    for key in (
        "inc.conv.weight",
        "interact.embeddings.position_embeddings",
        "text_module4.weight",
        "clip.token_embedding.weight",
    ):
        if key not in official:
            raise LvsegError(
                f"not an official RecLMIS state_dict: missing {key} (expected keys such as "
                "inc.conv.weight, interact.attn_text.in_proj_weight, clip.token_embedding.weight)"
            )
    base = int(official["inc.conv.weight"].shape[0])
    n_patches = int(official["interact.embeddings.position_embeddings"].shape[1])
    grid = round(n_patches**0.5)
    if grid * grid != n_patches:
        raise LvsegError(f"official RecLMIS position embedding has {n_patches} patches, not a square grid")
    layers = [
        int(m.group(1))
        for key in official
        if (m := re.match(r"^rec_img_trans1\.decoder2\.decoder_layers\.(\d+)\.", key))
    ]
    if preset is None:
        preset = "mosmed" if layers and max(layers) + 1 == PRESETS["mosmed"]["reconstructor_layers"] else "qata"
    encoder = CLIPTextEncoder(tokenizer, max_length=max_length, text_config=clip_text_config(official, clip_heads))
    model = RecLMIS(
        in_channels=int(official["inc.conv.weight"].shape[1]),
        img_size=grid * 16,
        base_channels=base,
        text_encoder=encoder,
        preset=preset,
        reconstructor_layers=(max(layers) + 1) if layers else None,
    )
    reference = model.state_dict()
    training_only = tuple(f"{name}." for name in model.training_only_modules)
    converted: dict[str, torch.Tensor] = {}
    dropped: dict[str, list[str]] = {}
    problems: list[str] = []
    for key, value in official.items():
        try:
            mapped = map_official_key(key, value)
        except KeyError:
            problems.append(f"{key} belongs to no official RecLMIS module")
            continue
        if isinstance(mapped, str):
            dropped.setdefault(mapped, []).append(key)
            continue
        for ours_key, tensor in mapped.items():
            if ours_key not in reference:
                problems.append(f"{key} maps to {ours_key}, which the model does not have")
            elif tuple(tensor.shape) != tuple(reference[ours_key].shape):
                problems.append(
                    f"{key}: shape {tuple(tensor.shape)} but {ours_key} expects {tuple(reference[ours_key].shape)}"
                )
            else:
                converted[ours_key] = tensor.detach().clone().to(reference[ours_key].dtype)
    unfilled = [key for key in reference if key not in converted and not key.startswith(training_only)]
    if unfilled:
        problems.append(f"{len(unfilled)} key(s) with no official weight: {', '.join(unfilled[:8])}")
    if problems:
        raise LvsegError("official RecLMIS state_dict does not convert: " + "; ".join(problems[:20]))
    model.load_weights({key: converted.get(key, value) for key, value in reference.items()})
    return model.eval(), dropped


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official RecLMIS ``.pth.tar`` with ``weights_only=True``; ``module.`` prefixes removed."""
    return RecLMISImporter().read(path)


def import_official_checkpoint(
    path: str | Path,
    out_path: str | Path,
    preset: str | None = None,
    tokenizer: str = "openai/clip-vit-base-patch32",
    clip_heads: int | None = None,
) -> ImportResult:
    """Convert the official RecLMIS checkpoint ``path`` into an lvseg checkpoint at ``out_path``.

    ``preset``: ``qata`` or ``mosmed`` (default: read off the reconstructor depth); ``tokenizer``: where the
    CLIP tokenizer files (vocab.json, merges.txt) are, a Hub id in the local cache or a folder.
    """
    path, out_path = Path(path), Path(out_path)
    official = load_official_state_dict(path)
    try:
        model, dropped = convert_official_reclmis_state_dict(official, tokenizer, preset=preset, clip_heads=clip_heads)
    except LvsegError as error:
        raise CheckpointError(f"{path}: {error}") from None
    check_finite(path, model.state_dict())
    save_inference_checkpoint(out_path, model)
    logger.info("converted %s: dropped %s", path, {reason: len(keys) for reason, keys in dropped.items()})
    return ImportResult(
        source=path,
        output=out_path,
        model_options=dict(model.config),
        dropped=dropped,
        n_parameters=model.parameter_counts()["inference"],
        notes=[
            f"the checkpoint reads the CLIP tokenizer files (vocab.json, merges.txt) from '{tokenizer}' when it "
            "is loaded; nothing else is downloaded"
        ],
    )


class RecLMISImporter(OfficialImporter):
    """Checkpoints of the official RecLMIS code (ShawnHuang497/RecLMIS: ``best_model-RecLMIS.pth.tar``)."""

    family = "reclmis"
    model_name = "reclmis"
    source_description = "official RecLMIS checkpoint (best_model-RecLMIS.pth.tar)"
    example_key = "inc.conv.weight"
    summary = (
        "Convert an official RecLMIS checkpoint: segmentation path + its own CLIP text tower; the rest is dropped."
    )
    options = (
        ImporterOption(
            "config",
            "qata or mosmed (the training settings it was trained with; default: read off the reconstructor depth).",
            flag="--config",
        ),
        ImporterOption(
            "tokenizer",
            "CLIP tokenizer files (vocab.json, merges.txt): a Hub id in the local cache or a folder.",
            default="openai/clip-vit-base-patch32",
        ),
        ImporterOption(
            "clip_heads", "Attention heads of the CLIP text tower (default: width / 64, as CLIP).", type=int, minimum=1
        ),
    )

    def recognises(self, keys: Collection[str]) -> bool:
        return any(key.startswith("interact.") for key in keys) and any(key.startswith("clip.") for key in keys)

    def convert(self, source: Path, out: Path, **options: Any) -> ImportResult:
        preset = options.pop("config", None)
        return import_official_checkpoint(source, out, preset=preset, **options)
