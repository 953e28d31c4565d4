"""LViT-T: the language-meets-vision transformer of Li et al. (IEEE TMI 2023).

A U-Net whose encoder runs beside a four-stage ViT branch (one transformer block per stage, all
stages on (img_size / 16)^2 tokens); the report's per-token features enter the first ViT stage
through a text pyramid, the ViT tokens are turned back into feature maps and added to the U-Net
skips, and the decoder gates each skip with pixel-level attention (PLAM).

This implementation computes exactly what the official code computes, but builds only the modules
its forward pass uses (29.9 M parameters at 224 / base 64 instead of 39.9 M). It returns logits: the
official network's output is ``sigmoid`` of ours. :mod:`lvseg.importers.lvit` loads official
checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lvseg.errors import LvsegError
from lvseg.models.base import ModelOutput, PretrainedFolders, SegmentationModel, check_img_size, check_positive
from lvseg.models.blocks import (
    ConvTransBN,
    PatchEmbedding,
    Reconstruct,
    TransformerBlock,
    UpBlockAttention,
    tokens_to_channels_first,
)
from lvseg.models.cnn_encoder import (
    N_LEVELS,
    build_cnn_decoder,
    build_cnn_encoder,
    decode_cnn,
    encode_cnn,
    level_widths,
)
from lvseg.models.registry import register_model

#: Side of a ViT patch at level 0, in pixels; level i uses patches of PATCH_SIZE / 2**i.
PATCH_SIZE = 16
#: Text input of the official model when no encoder is given: 10 tokens of BERT-base features.
PAPER_TEXT_LEN, PAPER_TEXT_DIM = 10, 768


@register_model("lvit")
class LViT(SegmentationModel):
    """LViT-T with base width b (options below) for images of ``img_size`` x ``img_size``.

    Level i (0..3) has width w_i = b * 2**i, a feature map of img_size / 2**i and a ViT stage on
    N = (img_size / 16)^2 tokens of size w_i (patches of 16 / 2**i pixels).

    Submodules (official names in brackets, see :mod:`lvseg.importers.lvit`):
      inc [inc], down.i [down{i+1}], up.i [up{i+1}], head [outc], reconstruct.i [reconstruct{i+1}],
      text_proj.i [text_module{i+1}]: Conv1d(w_{i+1} -> w_i, or text_dim -> 8b for i = 3),
      text_to_tokens [downVit.CTBN3]: ConvTransBN(text_len -> N) with the text tokens as channels,
      embed.i [downVit{i}.embeddings], down_vit.i [downVit{i}.Encoder_blocks.0],
      up_vit.i [upVit{i}.Encoder_blocks.0], token_down.(i-1) [downVit{i}.CTBN]: w_i -> w_i / 2,
      token_up.i [upVit{i}.CTBN2]: w_{i+1} -> w_i.

    Text: ``text_encoder`` (``"learned"`` with ``texts``, ``"hf:<id or path>"``, a config dict or an
    encoder) gives per-token features of size ``text_dim`` for ``text_len`` tokens (both taken from the
    encoder; given ones must agree). Without an encoder the model reads features the caller computes,
    (B, text_len, text_dim), by default the official 10 x 768 BERT-base tokens.

    ``forward(images (B, in_channels, S, S), text_input (B, text_len, text_dim))
    -> logits (B, 1, S, S)`` with S = img_size (training mode: a :class:`ModelOutput` without
    auxiliary outputs).
    """

    requires_text = True
    default_text_encoder = "learned"
    importer = "lvseg.importers.lvit:LViTImporter"

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        return {"base_channels": 8}

    def __init__(
        self,
        *,
        in_channels: int = 3,
        img_size: int = 224,
        base_channels: int = 64,
        text_encoder: Any = None,
        text_len: int | None = None,
        text_dim: int | None = None,
        dropout: float = 0.1,
        texts: Sequence[str] | None = None,
    ) -> None:
        super().__init__(text_encoder=text_encoder, text_len=text_len, texts=texts)
        check_img_size("lvit", img_size)
        if (
            isinstance(base_channels, bool)
            or not isinstance(base_channels, int)
            or base_channels <= 0
            or base_channels % 8
        ):
            raise LvsegError(
                f"lvit: base_channels must be a positive multiple of 8 (8 attention heads), got {base_channels!r}"
            )
        text_len, text_dim = self.token_input_shape(text_len, text_dim, default=(PAPER_TEXT_LEN, PAPER_TEXT_DIM))
        check_positive("lvit", in_channels=in_channels, text_dim=text_dim, text_len=text_len)
        self.in_channels, self.img_size, self.text_len, self.text_dim = in_channels, img_size, text_len, text_dim
        b = base_channels
        widths = level_widths(b)  # b, 2b, 4b, 8b
        self.n_tokens = (img_size // PATCH_SIZE) ** 2

        # CNN encoder and decoder (up.i takes [PLAM-gated skip_i (w_i), deeper map (w_i)], gives w_{i-1}; b at 0).
        self.inc, self.down = build_cnn_encoder(in_channels, b)
        self.up, self.head = build_cnn_decoder(b, UpBlockAttention)

        # Text pyramid: text_dim -> 8b -> 4b -> 2b -> b along the text tokens; only level 0 is used.
        self.text_proj = nn.ModuleList(
            [
                nn.Conv1d(widths[i + 1] if i + 1 < N_LEVELS else text_dim, w, kernel_size=3, padding=1)
                for i, w in enumerate(widths)
            ]
        )
        self.text_to_tokens = ConvTransBN(text_len, self.n_tokens)

        # ViT branch.
        self.embed = nn.ModuleList(
            [PatchEmbedding(w, w, PATCH_SIZE // 2**i, self.n_tokens, dropout) for i, w in enumerate(widths)]
        )
        self.down_vit = nn.ModuleList([TransformerBlock(w, dropout=dropout) for w in widths])
        self.up_vit = nn.ModuleList([TransformerBlock(w, dropout=dropout) for w in widths])
        self.token_down = nn.ModuleList([ConvTransBN(w, w // 2) for w in widths[1:]])
        self.token_up = nn.ModuleList([ConvTransBN(2 * w, w) for w in widths[:-1]])
        self.reconstruct = nn.ModuleList([Reconstruct(w, w, PATCH_SIZE // 2**i) for i, w in enumerate(widths)])

    def example_text_input(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch_size, self.text_len, self.text_dim, device=device)

    def _check_inputs(self, images: torch.Tensor, text_features: torch.Tensor | None) -> None:
        self.check_images(images, self.in_channels, self.img_size)
        if text_features is None:
            raise LvsegError(f"lvit needs text features of shape (B, {self.text_len}, {self.text_dim}), got None")
        expected = (images.shape[0], self.text_len, self.text_dim)
        if tuple(text_features.shape) != expected:
            raise LvsegError(
                f"lvit expects text features of shape (B={expected[0]}, text_len={expected[1]}, "
                f"text_dim={expected[2]}), got {tuple(text_features.shape)}"
            )

    def forward(self, images: torch.Tensor, text_input: torch.Tensor | None = None) -> torch.Tensor | ModelOutput:
        """images (B, C, S, S), text_input (B, text_len, text_dim) -> logits (B, 1, S, S)."""
        text_features = text_input
        self._check_inputs(images, text_features)
        assert text_features is not None

        # Text pyramid, channel-first (B, features, text_len); level 0 gives (B, text_len, b).
        text = text_features.transpose(1, 2)
        for proj in reversed(self.text_proj):
            text = proj(text)
        text_tokens = self.text_to_tokens(text.transpose(1, 2))  # (B, N, b)

        # Encoder: the CNN levels (B, w_i, S/2^i, S/2^i) and bottom (B, 8b, S/16, S/16), then the down ViT stages.
        feats, bottom = encode_cnn(self.inc, self.down, images)
        tokens = [self.down_vit[0](self.embed[0](feats[0]) + text_tokens)]  # (B, N, b)
        for i in range(1, N_LEVELS):
            t = self.down_vit[i](self.embed[i](feats[i]))  # (B, N, w_i)
            t = tokens_to_channels_first(t, self.token_down[i - 1])  # (B, N, w_i / 2)
            tokens.append(torch.cat([t, tokens[-1]], dim=2))  # (B, N, w_i)

        # Up ViT stages, deepest first, each adding the deeper stage's output.
        deeper = self.up_vit[-1](tokens[-1])
        tokens[-1] = deeper
        for i in range(N_LEVELS - 2, -1, -1):
            deeper = self.up_vit[i](tokens[i]) + tokens_to_channels_first(deeper, self.token_up[i])
            tokens[i] = deeper

        # Tokens back to feature maps, added to the CNN skips; decoder with PLAM-gated skips.
        skips = [feat + rec(t) for feat, rec, t in zip(feats, self.reconstruct, tokens)]
        logits = self.head(decode_cnn(self.up, bottom, skips))
        return ModelOutput(logits, {}) if self.training else logits
