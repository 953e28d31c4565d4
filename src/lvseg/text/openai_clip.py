"""OpenAI CLIP's text transformer in ``transformers`` terms: its config, its state-dict keys and its token ids.

Shared by every model and importer that reads OpenAI's CLIP layout (``token_embedding.weight``,
``positional_embedding``, ``transformer.resblocks.<i>.*``, ``ln_final.*``, ``text_projection``; RecLMIS's
``clip.*``, CRIS's ``backbone.*``, open_clip's ``RN50``) into ``CLIPTextModelWithProjection``:

* ``attn.in_proj_weight/bias`` rows split in thirds into ``self_attn.q_proj/k_proj/v_proj``;
* ``ln_1/ln_2`` -> ``layer_norm1/2``, ``mlp.c_fc/c_proj`` -> ``mlp.fc1/fc2``, ``ln_final`` -> ``final_layer_norm``;
* ``text_projection`` (used as x @ P) transposed into a Linear weight.

Token ids are CLIP's ``[<|startoftext|>, BPE ids ..., <|endoftext|>]`` cut to a length (a cut sequence still
ends with the end token), as OpenAI's ``clip.tokenize`` and the official RecLMIS and CRIS code make them.
"""

from __future__ import annotations

import re
from typing import Any

import torch

_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_LAYER_PARTS = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}


def openai_clip_text_config(
    vocab_size: int,
    width: int,
    layers: int,
    heads: int,
    context_length: int,
    projection: int | None = None,
    intermediate: int | None = None,
) -> dict[str, Any]:
    """The ``CLIPTextConfig`` fields of OpenAI's CLIP text transformer: QuickGELU, LayerNorm eps 1e-5, FFN
    ``intermediate`` wide (default 4 x width, CLIP's), ``projection_dim`` when ``projection`` is given. Token ids
    (start, end, pad) are the caller's: they differ between published configs."""
    config: dict[str, Any] = {
        "vocab_size": int(vocab_size),
        "hidden_size": int(width),
        "intermediate_size": int(4 * width if intermediate is None else intermediate),
        "num_hidden_layers": int(layers),
        "num_attention_heads": int(heads),
        "max_position_embeddings": int(context_length),
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    if projection is not None:
        config["projection_dim"] = int(projection)
    return config


def text_layer_count(keys: Any, prefix: str = "") -> int:
    """Residual blocks of an OpenAI CLIP text transformer whose keys start with ``prefix`` (0 when none)."""
    found = {
        int(match.group(1))
        for key in keys
        if str(key).startswith(prefix) and (match := _LAYER.match(str(key)[len(prefix) :]))
    }
    return 1 + max(found) if found else 0


def map_openai_clip_text_key(key: str, value: torch.Tensor, prefix: str) -> dict[str, torch.Tensor] | None:
    """``CLIPTextModelWithProjection`` key(s) (under ``prefix``, e.g. ``"text_encoder.hf_model."``) and tensor(s)
    for one key of OpenAI's CLIP text tower (its own name, without the model's prefix); None for a key that is
    no part of it (the image tower, ``logit_scale``, ...)."""
    model = prefix + "text_model."
    if key == "token_embedding.weight":
        return {model + "embeddings.token_embedding.weight": value}
    if key == "positional_embedding":
        return {model + "embeddings.position_embedding.weight": value}
    if key in ("ln_final.weight", "ln_final.bias"):
        return {model + "final_layer_norm." + key.rsplit(".", 1)[1]: value}
    if key == "text_projection":  # used as x @ P: a Linear's weight is P transposed
        return {prefix + "text_projection.weight": value.t().contiguous()}
    match = _LAYER.match(key)
    if match is None:
        return None
    layer, part = match.groups()
    base = f"{model}encoder.layers.{layer}."
    if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = part.rsplit("_", 1)[1]  # weight / bias
        return {f"{base}self_attn.{name}_proj.{kind}": chunk for name, chunk in zip("qkv", value.chunk(3, dim=0))}
    if part in _LAYER_PARTS:
        return {base + _LAYER_PARTS[part]: value}
    return None


def clip_token_sequence(body: list[int], start: int, end: int, length: int) -> list[int]:
    """``[start, *body, end]`` cut to ``length`` tokens; a cut sequence ends with ``end``."""
    sequence = [start, *body, end]
    return sequence if len(sequence) <= length else [*sequence[: length - 1], end]
