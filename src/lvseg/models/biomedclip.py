"""BiomedCLIP's image and text towers run with ``transformers`` alone (no open_clip, timm or torchvision).

BiomedCLIP (``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) is published as an open_clip
checkpoint, ``open_clip_pytorch_model.bin``: a timm ViT-B/16 image trunk with a 768 -> 512 projection and a
PubMedBERT text model whose CLS state goes through a 768 -> 640 -> 512 MLP (exact GELU, no biases).
:func:`load_biomedclip` maps that state dict onto ``ViTModel`` + ``BertModel`` + the two projections
(:class:`BiomedCLIPTowers`); every key is used except ``logit_scale`` (contrastive temperature) and, in
older files, ``position_ids`` / the unused BERT pooler. The architecture is read from the tensor shapes;
the number of attention heads is ``width // 64`` (ViT-B and BERT-base: 12), the convention of both.

Folder layout (one folder, ``--model-option biomedclip=FOLDER``; default ``~/.cache/lvseg/biomedclip``):
``open_clip_pytorch_model.bin`` (or ``open_clip_model.safetensors``) from the BiomedCLIP repository and
``vocab.txt`` from ``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract`` (lower-cased WordPiece).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvseg.errors import LvsegError
from lvseg.models.pretrained import CLIP_MEAN, CLIP_STD

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
DEFAULT_BIOMEDCLIP_DIR = "~/.cache/lvseg/biomedclip"
WEIGHT_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")
VOCAB_FILE = "vocab.txt"
#: Prompt tokens BiomedCLIP was trained with (open_clip's context length).
CONTEXT_LENGTH = 256
#: Width of one attention head in ViT-B and BERT-base; heads = width // HEAD_WIDTH.
HEAD_WIDTH = 64
#: CLIP's image statistics (BiomedCLIP's open_clip config).
BIOMEDCLIP_MEAN, BIOMEDCLIP_STD = CLIP_MEAN, CLIP_STD
#: Keys of the open_clip file no tower uses.
UNUSED_KEYS = re.compile(r"^(logit_scale|text\.transformer\.pooler\..*|text\.transformer\.embeddings\.position_ids)$")

#: The published architecture (shapes of ``open_clip_pytorch_model.bin``), to describe the model without it.
BIOMEDCLIP_SHAPES: dict[str, Any] = {
    "vision": {
        "width": 768,
        "layers": 12,
        "mlp": 3072,
        "patch": 16,
        "image_size": 224,
        "channels": 3,
        "qkv_bias": True,
    },
    "text": {"vocab": 30522, "width": 768, "layers": 12, "mlp": 3072, "positions": 512, "types": 2},
    "text_hidden": 640,
    "projection": 512,
}


def missing_biomedclip_message(folder: str) -> str:
    return (
        f"BiomedCLIP is not in '{folder}': download open_clip_pytorch_model.bin from {BIOMEDCLIP_REPO} and "
        f"vocab.txt from {BIOMEDBERT_REPO} into that folder (`hf download {BIOMEDCLIP_REPO} "
        f"open_clip_pytorch_model.bin --local-dir {folder}` and `hf download {BIOMEDBERT_REPO} vocab.txt "
        f"--local-dir {folder}`), or pass the folder holding them with --model-option biomedclip=FOLDER."
    )


def shapes_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The architecture of an open_clip BiomedCLIP state dict, read from its tensor shapes."""
    try:
        patch = state["visual.trunk.patch_embed.proj.weight"]
        positions = state["visual.trunk.pos_embed"].shape[1] - 1
        vision_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("visual.trunk.blocks."))
        text_layers = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("text.transformer.encoder.layer."))
        words = state["text.transformer.embeddings.word_embeddings.weight"]
        grid = math.isqrt(positions)
        if grid * grid != positions:
            raise LvsegError(f"BiomedCLIP image positions {positions} do not form a square grid")
        return {
            "vision": {
                "width": int(patch.shape[0]),
                "layers": vision_layers,
                "mlp": int(state["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0]),
                "patch": int(patch.shape[-1]),
                "image_size": grid * int(patch.shape[-1]),
                "channels": int(patch.shape[1]),
                "qkv_bias": "visual.trunk.blocks.0.attn.qkv.bias" in state,
            },
            "text": {
                "vocab": int(words.shape[0]),
                "width": int(words.shape[1]),
                "layers": text_layers,
                "mlp": int(state["text.transformer.encoder.layer.0.intermediate.dense.weight"].shape[0]),
                "positions": int(state["text.transformer.embeddings.position_embeddings.weight"].shape[0]),
                "types": int(state["text.transformer.embeddings.token_type_embeddings.weight"].shape[0]),
            },
            "text_hidden": int(state["text.proj.0.weight"].shape[0]),
            "projection": int(state["visual.head.proj.weight"].shape[0]),
        }
    except (KeyError, ValueError) as error:
        raise LvsegError(f"not a BiomedCLIP open_clip state dict: {error!r} is missing or malformed") from None


class BiomedCLIPTowers(nn.Module):
    """BiomedCLIP's towers in ``transformers`` modules.

    ``vision``: ``ViTModel`` (pre-norm, LN eps 1e-6, no pooler); ``visual_projection``: Linear(W, P, no bias);
    ``text``: ``BertModel`` (no pooler); ``text_projection``: Linear(Wt, H) -> GELU -> Linear(H, P), no biases.
    """

    def __init__(self, shapes: dict[str, Any]) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel, ViTConfig, ViTModel

        vision, text = shapes["vision"], shapes["text"]
        self.shapes = shapes
        self.vision = ViTModel(
            ViTConfig(
                hidden_size=vision["width"],
                num_hidden_layers=vision["layers"],
                num_attention_heads=max(1, vision["width"] // HEAD_WIDTH),
                intermediate_size=vision["mlp"],
                hidden_act="gelu",
                layer_norm_eps=1e-6,
                image_size=vision["image_size"],
                patch_size=vision["patch"],
                num_channels=vision["channels"],
                qkv_bias=vision["qkv_bias"],
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            ),
            add_pooling_layer=False,
        )
        self.visual_projection = nn.Linear(vision["width"], shapes["projection"], bias=False)
        self.text = BertModel(
            BertConfig(
                vocab_size=text["vocab"],
                hidden_size=text["width"],
                num_hidden_layers=text["layers"],
                num_attention_heads=max(1, text["width"] // HEAD_WIDTH),
                intermediate_size=text["mlp"],
                max_position_embeddings=text["positions"],
                type_vocab_size=text["types"],
                hidden_act="gelu",
                pad_token_id=0,
            ),
            add_pooling_layer=False,
        )
        self.text_projection = nn.Sequential(
            nn.Linear(text["width"], shapes["text_hidden"], bias=False),
            nn.GELU(),
            nn.Linear(shapes["text_hidden"], shapes["projection"], bias=False),
        )

    def image_hidden_states(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised images (B, 3, S, S) -> (embeddings, block 0 output, ...), each (B, 1 + N, W); positions
        are interpolated for sizes other than the trained one."""
        return self.vision(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, P): the final-normed CLS state, projected."""
        final = self.vision(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        return self.visual_projection(final[:, 0])

    def text_embedding(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """ids (B, L), mask (B, L) or None (no padding) -> (B, P): the CLS state through the projection MLP."""
        hidden = self.text(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.text_projection(hidden[:, 0])


def _target_names(towers: BiomedCLIPTowers) -> set[str]:
    return set(towers.state_dict())


def convert_open_clip_state_dict(state: dict[str, torch.Tensor], towers: BiomedCLIPTowers) -> dict[str, torch.Tensor]:
    """open_clip BiomedCLIP keys -> :class:`BiomedCLIPTowers` keys (ViTModel's layout of transformers 5.x or
    4.x, whichever is installed). Every key must be used (except :data:`UNUSED_KEYS`) and every tower weight
    filled, with equal shapes; else a :class:`LvsegError` lists what does not fit."""
    targets = _target_names(towers)
    new_layout = "vision.layers.0.attention.q_proj.weight" in targets
    converted: dict[str, torch.Tensor] = {}
    unused: list[str] = []

    def vit_block(n: str, part: str) -> str:
        new = {
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "attn.proj": "attention.o_proj",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
        }
        old = {
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "attn.proj": "attention.output.dense",
            "mlp.fc1": "intermediate.dense",
            "mlp.fc2": "output.dense",
        }
        return f"vision.layers.{n}.{new[part]}" if new_layout else f"vision.encoder.layer.{n}.{old[part]}"

    for key, value in state.items():
        if UNUSED_KEYS.match(key):
            continue
        if key.startswith("text.transformer."):
            converted["text." + key[len("text.transformer.") :]] = value
            continue
        if key.startswith("text.proj."):
            converted["text_projection." + key[len("text.proj.") :]] = value
            continue
        if key == "visual.head.proj.weight":
            converted["visual_projection.weight"] = value
            continue
        trunk = {
            "visual.trunk.cls_token": "vision.embeddings.cls_token",
            "visual.trunk.pos_embed": "vision.embeddings.position_embeddings",
            "visual.trunk.patch_embed.proj.weight": "vision.embeddings.patch_embeddings.projection.weight",
            "visual.trunk.patch_embed.proj.bias": "vision.embeddings.patch_embeddings.projection.bias",
            "visual.trunk.norm.weight": "vision.layernorm.weight",
            "visual.trunk.norm.bias": "vision.layernorm.bias",
        }
        if key in trunk:
            converted[trunk[key]] = value
            continue
        match = re.fullmatch(
            r"visual\.trunk\.blocks\.(\d+)\.(norm1|norm2|attn\.proj|mlp\.fc1|mlp\.fc2|attn\.qkv)\."
            r"(weight|bias)",
            key,
        )
        if not match:
            unused.append(key)
            continue
        n, part, kind = match.groups()
        if part == "attn.qkv":  # timm fuses q, k, v row-wise
            for name, chunk in zip("qkv", value.chunk(3, dim=0)):
                target = (
                    f"vision.layers.{n}.attention.{name}_proj.{kind}"
                    if new_layout
                    else f"vision.encoder.layer.{n}.attention.attention.{dict(q='query', k='key', v='value')[name]}.{kind}"
                )
                converted[target] = chunk
        else:
            converted[f"{vit_block(n, part)}.{kind}"] = value
    expected = towers.state_dict()
    problems = [f"unused key {key}" for key in unused]
    problems += [
        f"{key} has shape {tuple(value.shape)}, the tower expects {tuple(expected[key].shape)}"
        for key, value in converted.items()
        if key in expected and expected[key].shape != value.shape
    ]
    problems += [f"unexpected key {key}" for key in converted if key not in expected]
    problems += [f"missing weight {key}" for key in expected if key not in converted]
    if problems:
        raise LvsegError(
            f"the BiomedCLIP state dict does not fit its towers: {'; '.join(problems[:8])}"
            + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "")
        )
    return converted


def biomedclip_files(folder: str | Path) -> tuple[Path, Path]:
    """(weights file, vocab.txt) in ``folder``; a missing one is the one-sentence download message."""
    root = Path(folder).expanduser()
    weights = next((root / name for name in WEIGHT_FILES if (root / name).is_file()), None)
    vocab = root / VOCAB_FILE
    if weights is None or not vocab.is_file():
        raise LvsegError(missing_biomedclip_message(str(folder)))
    return weights, vocab


def read_open_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an open_clip checkpoint (``.bin`` read with ``weights_only=True``, or safetensors)."""
    from lvseg.foreign import read_foreign_state_dict

    return read_foreign_state_dict(path, "open_clip BiomedCLIP checkpoint", "visual.trunk.cls_token")


def load_biomedclip(folder: str | Path) -> BiomedCLIPTowers:
    """BiomedCLIP's towers with the weights of ``folder`` (see the module docstring), in eval mode."""
    weights, _ = biomedclip_files(folder)
    state = read_open_clip_state_dict(weights)
    towers = BiomedCLIPTowers(shapes_from_state_dict(state))
    towers.load_state_dict(convert_open_clip_state_dict(state, towers), strict=True)
    return towers.eval()


def load_biomedclip_tokenizer(folder: str | Path) -> Any:
    """BiomedBERT's lower-cased WordPiece tokenizer from ``folder``/vocab.txt."""
    from transformers import BertTokenizer

    _, vocab = biomedclip_files(folder)
    return BertTokenizer(vocab_file=str(vocab), do_lower_case=True)
