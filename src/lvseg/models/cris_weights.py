"""Published CRIS and CLIP weights mapped onto :class:`lvseg.models.cris.CRIS` (key for key, shapes checked).

Two sources, both read by :func:`lvseg.foreign.load_foreign` (``weights_only=True`` or safetensors; the pickled
Python objects of a Lightning ``.ckpt`` are read inert and dropped):

* a **CRIS checkpoint** (Wang et al., CVPR 2022; github.com/DerrickWang005/CRIS.pytorch) in one of its three
  published layouts: the official DDP file (a dict whose ``state_dict`` keys start with ``module.``), the medvlsm
  study's bare ``cris.pt`` (the same keys without the prefix; Poudel et al., MIDL 2024) and the study's
  Lightning ``.ckpt`` (``state_dict`` with the prefix ``net.``). Keys: ``backbone.visual.*`` (CLIP's
  ModifiedResNet + CRIS's attention pool), ``backbone.*`` (the CLIP text transformer), ``neck.*``,
  ``decoder.*``, ``proj.*``; ``backbone.logit_scale`` (CLIP's contrastive temperature) is never used and dropped;
* **CLIP RN50** in the open_clip state-dict layout (OpenAI's key names: ``visual.*``, ``token_embedding.weight``,
  ``transformer.resblocks.*``, ...), ``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors`` of the
  Hub repository ``timm/resnet50_clip.openai``. CLIP has no ``attnpool.connect`` (CRIS's extra shortcut): it
  keeps its PyTorch initialisation and is said so; the CRIS head (neck, decoder, projector) starts random.

The CLIP text transformer becomes ``transformers``' ``CLIPTextModelWithProjection`` under ``text_tower.``
(:mod:`lvseg.text.openai_clip`: ``in_proj`` rows split in thirds into q/k/v, ``text_projection`` transposed, ...).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lvseg.errors import CheckpointError, LvsegError
from lvseg.foreign import foreign_tensors, load_foreign, read_foreign_state_dict
from lvseg.text.openai_clip import map_openai_clip_text_key, text_layer_count

logger = logging.getLogger(__name__)

#: Where CLIP RN50 in the open_clip layout is published.
CLIP_RN50_REPO = "timm/resnet50_clip.openai"
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: Keys of a CLIP file that CRIS never reads (the temperature; integers OpenAI's TorchScript state keeps).
CLIP_UNUSED = ("logit_scale", "input_resolution", "context_length", "vocab_size")
#: The three published CRIS checkpoint layouts, as :func:`read_cris_checkpoint` names them.
CRIS_LAYOUTS = ("official", "bare", "lightning")

_TEXT = "text_tower."


def map_clip_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Our key(s) and tensor(s) for one key of a CLIP state dict in OpenAI's names (``in_proj`` splits into
    q, k, v: :func:`lvseg.text.openai_clip.map_openai_clip_text_key`); None for a key that is no part of CLIP's
    image or text tower."""
    if key.startswith("visual."):
        return {key: value}
    return map_openai_clip_text_key(key, value, _TEXT)


def map_cris_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | str:
    """Our key(s) and tensor(s) for one CRIS key (without ``module.``/``net.``), or the reason it is dropped.

    Raises KeyError for a key of no CRIS module."""
    if key == "backbone.logit_scale":
        return "unused (CLIP's contrastive temperature)"
    if key.startswith(("neck.", "decoder.", "proj.")):
        return {key: value}
    if key.startswith("backbone."):
        mapped = map_clip_key(key[len("backbone.") :], value)
        if mapped is not None:
            return mapped
    raise KeyError(key)


# ---------------------------------------------------------------------------------------- architecture


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for key in state if (m := re.match(pattern, key))}
    return 1 + max(found) if found else 0


def architecture(state: Mapping[str, torch.Tensor], prefix: str = "backbone.") -> dict[str, Any]:
    """The :class:`~lvseg.models.cris.CRIS` options a CRIS (``prefix="backbone."``) or CLIP (``prefix=""``) state
    dict was built with, read off its shapes (heads are not in the shapes: the caller gives them). A CLIP file
    gives the tower options only."""
    visual = prefix + "visual."
    try:
        options: dict[str, Any] = {
            "width": int(state[visual + "conv3.weight"].shape[0]),
            "layers": [_count(state, rf"^{re.escape(visual)}layer{i}\.(\d+)\.") for i in range(1, 5)],
            "embed_dim": int(state[visual + "attnpool.c_proj.weight"].shape[0]),
            "pool_grid": round((int(state[visual + "attnpool.positional_embedding"].shape[0]) - 1) ** 0.5),
            "vocab_size": int(state[prefix + "token_embedding.weight"].shape[0]),
            "text_width": int(state[prefix + "token_embedding.weight"].shape[1]),
            "text_layers": text_layer_count(state, prefix),
            "context_length": int(state[prefix + "positional_embedding"].shape[0]),
        }
        if prefix:
            options.update(
                neck_dims=[
                    int(state["neck.f3_v_proj.0.weight"].shape[0]),
                    int(state["neck.f2_v_proj.0.weight"].shape[0]),
                    int(state["neck.f1_v_proj.0.weight"].shape[0]),
                ],
                decoder_layers=_count(state, r"^decoder\.layers\.(\d+)\."),
                decoder_ffn=int(state["decoder.layers.0.ffn.0.weight"].shape[0]),
            )
    except KeyError as error:
        what = "CRIS checkpoint" if prefix else "CLIP state dict"
        raise LvsegError(f"not a {what}: it has no {error.args[0]}") from None
    return options


# --------------------------------------------------------------------------------------------- reading


def _cris_torchscript_advice(option: str | None) -> str:
    where = f"as {option}" if option else "to `lvseg import-cris`"
    return (
        f"pass a CRIS checkpoint {where} (the official DDP .pth, the medvlsm study's cris.pt or its Lightning "
        ".ckpt; OpenAI's RN50.pt is CLIP, which starts training with --model-option clip_weights=FILE, FILE "
        f"being open_clip_model.safetensors of {CLIP_RN50_REPO})"
    )


def read_cris_checkpoint(path: str | Path, option: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict with CRIS's own key names, layout) of a CRIS checkpoint file; layout is ``official`` (DDP,
    ``module.``), ``bare`` (``cris.pt``) or ``lightning`` (``net.``; its pickled hyper-parameters are read inert
    and dropped, :mod:`lvseg.foreign`). ``option``: the model option that named the file (``cris_weights``), for
    the advice of errors; None for ``lvseg import-cris``. Raises :class:`CheckpointError` naming the file."""
    path = Path(path).expanduser()
    what = "CRIS checkpoint (the official DDP file, the medvlsm study's cris.pt or its Lightning .ckpt)"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such file: download a {what} into {path.parent}, or give the path of the one you have"
        )
    loaded = load_foreign(path, what, torchscript_advice=_cris_torchscript_advice(option))
    state = foreign_tensors(loaded, path, what, "backbone.visual.conv1.weight")
    layout = "bare"
    for name, prefix in (("official", "module."), ("lightning", "net.")):
        owned = [key for key in state if key.startswith(prefix)]
        if owned and len(owned) >= len(state) // 2:
            state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            layout = name
            break
    if "backbone.visual.conv1.weight" not in state:
        raise CheckpointError(
            f"{path}: not a {what}: it has no backbone.visual.conv1.weight (keys such as "
            f"{', '.join(list(state)[:4]) or 'none'})"
        )
    return state, layout


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of CLIP RN50 in the open_clip state-dict layout (``.safetensors`` or ``.bin``; a ``state_dict``
    entry or a ``module.`` prefix is unwrapped). A TorchScript ``RN50.pt`` or a missing file is a
    :class:`CheckpointError` saying what to download."""
    path = Path(path).expanduser()
    download = f"`hf download {CLIP_RN50_REPO} open_clip_model.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such file: download it with {download} --local-dir {path.parent}` (or "
            "open_clip_pytorch_model.bin) and pass that file as clip_weights"
        )
    what = f"open_clip state dict of CLIP RN50 ({' or '.join(CLIP_FILES)} of {CLIP_RN50_REPO})"
    advice = (
        f"download the open_clip state dict instead ({download}`, or open_clip_pytorch_model.bin) and pass that "
        "file as clip_weights"
    )
    state = read_foreign_state_dict(path, what, "visual.conv1.weight", torchscript_advice=advice)
    if "visual.attnpool.positional_embedding" not in state or "visual.conv1.weight" not in state:
        hint = " (a ViT CLIP has no attention pool: CRIS needs a ModifiedResNet CLIP)" if "visual.proj" in state else ""
        raise CheckpointError(f"{path}: not an {what}: it has no visual.attnpool.positional_embedding{hint}")
    return state


# ---------------------------------------------------------------------------------------------- mapping


def convert_state_dict(
    source: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    kind: str,
    drop_text: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], list[str]]:
    """Map a CRIS (``kind="cris"``) or CLIP (``kind="clip"``) state dict onto ``reference`` (a model's
    ``state_dict()``). ``drop_text``: the model reads another text encoder, so the CLIP text keys are dropped.

    Returns (converted tensors in the reference's dtypes, {reason: dropped source keys}, problems: keys that map
    nowhere and shape mismatches; the caller decides which reference keys must be filled)."""
    converted: dict[str, torch.Tensor] = {}
    dropped: dict[str, list[str]] = {}
    problems: list[str] = []
    for key, value in source.items():
        if kind == "clip":
            if key in CLIP_UNUSED:
                dropped.setdefault("unused by CRIS", []).append(key)
                continue
            clip_mapped = map_clip_key(key, value)
            if clip_mapped is None:
                problems.append(f"{key} belongs to no CLIP RN50 tower")
                continue
            mapped: dict[str, torch.Tensor] | str = clip_mapped
        else:
            try:
                mapped = map_cris_key(key, value)
            except KeyError:
                problems.append(f"{key} belongs to no CRIS module")
                continue
        if isinstance(mapped, str):
            dropped.setdefault(mapped, []).append(key)
            continue
        if drop_text and any(ours.startswith(_TEXT) for ours in mapped):
            dropped.setdefault("CLIP text tower (the model reads another text encoder)", []).append(key)
            continue
        for ours, tensor in mapped.items():
            if ours not in reference:
                problems.append(f"{key} maps to {ours}, which the model does not have")
            elif tuple(tensor.shape) != tuple(reference[ours].shape):
                problems.append(f"{key}: shape {tuple(tensor.shape)} but {ours} is {tuple(reference[ours].shape)}")
            else:
                converted[ours] = tensor.detach().clone().to(reference[ours].dtype)
    return converted, dropped, problems
