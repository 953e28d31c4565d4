"""C2FVL: coarse-to-fine segmentation with vision-language alignment (Shan et al., ICASSP 2023).

LViT's CNN encoder beside the *down* path of its ViT branch (no text enters the ViT); at each of the four
upper levels the CNN map and the tokens turned back into a map are added, then multiplied by the report
vector tiled over the channels; the decoder gates every skip with a vision-language alignment block
(VLAB) instead of LViT's PLAM; in training mode the four VLAB outputs give side outputs whose cosine
similarity to the finest one is a loss (coarse-to-fine alignment).

The text input is C2FVL's 8-value report vector ``[bilateral, number, lupper, lmiddle, llower, rupper,
rmiddle, rlower]``, read from the report by the package's report grammar
(:class:`lvseg.text.report_vector.ReportVectorEncoder`); a text table carrying those 8 columns gives the
report through :func:`lvseg.data.layout.load_split`.

Facts from the official code (``HUANGLIZI/C2FVL``), kept: the skip of level i is
``(Reconstruct_i(y_i) + x_i) * T_i`` with ``T_i[c] = text[c mod 8]`` (the deepest map x5 is not
multiplied; a zero value zeroes every eighth channel); VLAB pools *over channels per pixel* (the paper's
figure says GAP/GMP); side output k is a 1x1 conv after a *nearest* upsampling of the VLAB output to full
size, the finest reusing the main head; the loss is 0.5 Dice + 0.5 class-balanced BCE + 0.5 (1 - cos) for
the pairs (1, 2), (1, 3), (1, 4) of side outputs, per image over the flattened logits, no detach.
Defects of the official code not copied: it builds 16.3 M parameters its forward never uses (up ViT
stages, CTBN2/CTBN3, text modules, top-level VLABs, ``conv_sig``) and computes the side outputs at
inference too; this build has only what forward uses (24,196,088 parameters at 224 / base 64, the
official code's 24.2 M "reached by forward") and computes side outputs in training mode only, so
``lvseg info`` GFLOPs are those of inference.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lvseg.errors import LvsegError
from lvseg.models.base import (
    ModelOutput,
    PretrainedFolders,
    SegmentationModel,
    as_output,
    check_img_size,
    check_positive,
)
from lvseg.models.blocks import (
    ConvTransBN,
    PatchEmbedding,
    Reconstruct,
    TransformerBlock,
    UpBlock,
    tokens_to_channels_first,
)
from lvseg.models.cnn_encoder import N_LEVELS, build_cnn_decoder, build_cnn_encoder, encode_cnn, level_widths
from lvseg.models.lvit import PATCH_SIZE
from lvseg.models.registry import register_model
from lvseg.text.report_vector import ReportVectorEncoder

#: Values of the report vector (its length); the skip widths must be multiples of it.
VECTOR_SIZE = 8
#: Pairs (finest, coarser) of side outputs whose cosine similarity is trained, as in the official code.
SIDE_PAIRS = ((1, 2), (1, 3), (1, 4))


class VisionLanguageAlignment(nn.Module):
    """VLAB: re-weights every pixel of a (text-modulated) skip map by a learned scalar.

    a = mean over channels of ReLU(Linear_a(Conv_a(x))), m = max over channels of ReLU(Linear_m(Conv_m(x)))
    (1x1 convolutions without bias, then a channel-mixing Linear with bias); w = Linear(1, 4) -> ReLU ->
    Linear(4, 1) of (a + m) per pixel; returns w * x. (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, hidden: int = 4) -> None:
        super().__init__()
        self.conv_avg = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.linear_avg = nn.Linear(channels, channels)
        self.conv_max = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.linear_max = nn.Linear(channels, channels)
        self.bottleneck = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @staticmethod
    def _channel_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.relu(self._channel_linear(self.linear_avg, self.conv_avg(x))).mean(dim=1, keepdim=True)
        peak = F.relu(self._channel_linear(self.linear_max, self.conv_max(x))).amax(dim=1, keepdim=True)
        weight = self.bottleneck((avg + peak).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, 1, H, W)
        return weight * x


class UpBlockAlignment(UpBlock):
    """:class:`UpBlock` whose skip first goes through :class:`VisionLanguageAlignment` (in_channels/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.alignment = VisionLanguageAlignment(in_channels // 2)

    def gate_skip(self, skip: torch.Tensor) -> torch.Tensor:
        return self.alignment(skip)


@register_model("c2fvl")
class C2FVL(SegmentationModel):
    """C2FVL with base width b for images of ``img_size`` x ``img_size`` (any multiple of 32).

    Level i (0..3) has width w_i = b * 2**i at img_size / 2**i; ViT stage i runs on (img_size / 16)^2
    tokens of size w_i. Submodules: inc, down.i, embed.i, down_vit.i, token_down.(i-1), reconstruct.i
    (as LViT), up.i (decoder blocks with VLAB ``up.i.alignment``), head (main 1x1 conv, also side output
    1), side_heads.(k-2) (side outputs 2..4: w_{k-1} -> 1).

    ``unparsable_reports``: ``"error"`` (a report outside the grammar is an error naming it) or
    ``"zero"`` (read as the zero vector).

    ``forward(images (B, C, S, S), text_input (B, 8)) -> logits (B, 1, S, S)``; in training mode a
    :class:`ModelOutput` whose ``aux`` holds ``side_1`` ... ``side_4`` (B, 1, S, S) side-output logits.
    """

    requires_text = True
    training_only_modules = ("side_heads",)  # side outputs 2..4 only feed the training losses
    loss_weights = MappingProxyType({"dice": 0.5, "bce": 0.5, **{f"cos_{a}_{b}": 0.5 for a, b in SIDE_PAIRS}})
    #: C2FVL's official recipe where it differs from lvseg train's defaults (the LViT paper's).
    recipe = MappingProxyType({"batch_size": 4})

    text_encoder: ReportVectorEncoder  # always (built in __init__)
    channel_to_value: torch.Tensor  # buffer

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        return {"base_channels": 8}

    def __init__(
        self,
        *,
        in_channels: int = 3,
        img_size: int = 224,
        base_channels: int = 64,
        dropout: float = 0.1,
        unparsable_reports: str = "error",
    ) -> None:
        super().__init__(text_encoder=ReportVectorEncoder(unparsable=unparsable_reports))
        check_img_size("c2fvl", img_size)
        check_positive("c2fvl", in_channels=in_channels)
        if (
            isinstance(base_channels, bool)
            or not isinstance(base_channels, int)
            or base_channels <= 0
            or base_channels % VECTOR_SIZE
        ):
            raise LvsegError(
                f"c2fvl: base_channels must be a positive multiple of 8 (8 attention heads, the "
                f"8-value report vector tiled over channels), got {base_channels!r}"
            )
        self.in_channels, self.img_size = in_channels, img_size
        b = base_channels
        widths = level_widths(b)  # b, 2b, 4b, 8b
        n_tokens = (img_size // PATCH_SIZE) ** 2

        self.inc, self.down = build_cnn_encoder(in_channels, b)
        self.embed = nn.ModuleList(
            [PatchEmbedding(w, w, PATCH_SIZE // 2**i, n_tokens, dropout) for i, w in enumerate(widths)]
        )
        self.down_vit = nn.ModuleList([TransformerBlock(w, dropout=dropout) for w in widths])
        self.token_down = nn.ModuleList([ConvTransBN(w, w // 2) for w in widths[1:]])
        self.reconstruct = nn.ModuleList([Reconstruct(w, w, PATCH_SIZE // 2**i) for i, w in enumerate(widths)])
        self.up, self.head = build_cnn_decoder(b, UpBlockAlignment)  # VLAB-gated skips: up.i.alignment
        self.side_heads = nn.ModuleList([nn.Conv2d(w, 1, kernel_size=1) for w in widths[1:]])
        self.register_buffer("channel_to_value", torch.arange(max(widths)) % VECTOR_SIZE, persistent=False)

    # ------------------------------------------------------------------------------------------ text

    def encode_text(self, texts: Any) -> torch.Tensor:
        """B reports -> (B, 8) report vectors."""
        return self.text_encoder.vectors(list(texts)).to(self.device)

    def report_problems(self, texts: Any) -> dict[int, str]:
        """Reports outside the report grammar ({position: the part not understood})."""
        return {index: str(error) for index, error in self.text_encoder.problems(list(texts)).items()}

    @property
    def accepts_unreadable_reports(self) -> bool:  # type: ignore[override]  # a read-only view of the encoder's mode
        return self.text_encoder.unparsable == "zero"

    def example_text_input(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch_size, VECTOR_SIZE, device=device)

    # --------------------------------------------------------------------------------------- forward

    def _check_inputs(self, images: torch.Tensor, text: torch.Tensor | None) -> None:
        self.check_images(images, self.in_channels, self.img_size)
        if text is None or tuple(text.shape) != (images.shape[0], VECTOR_SIZE):
            raise LvsegError(
                f"c2fvl expects report vectors of shape (B={images.shape[0]}, {VECTOR_SIZE}), got "
                f"{None if text is None else tuple(text.shape)}"
            )

    def forward(self, images: torch.Tensor, text_input: torch.Tensor | None = None) -> torch.Tensor | ModelOutput:
        """images (B, C, S, S), text_input (B, 8) -> logits (B, 1, S, S) (training: ModelOutput with sides)."""
        self._check_inputs(images, text_input)
        assert text_input is not None
        text = text_input.to(images.dtype)

        # CNN levels (B, w_i, S/2^i, S/2^i) and bottom (B, 8b, S/16, S/16, not text-modulated), then the ViT.
        feats, bottom = encode_cnn(self.inc, self.down, images)
        tokens = [self.down_vit[0](self.embed[0](feats[0]))]  # (B, N, b)
        for i in range(1, N_LEVELS):
            t = tokens_to_channels_first(self.down_vit[i](self.embed[i](feats[i])), self.token_down[i - 1])
            tokens.append(torch.cat([t, tokens[-1]], dim=2))  # (B, N, w_i)

        skips = []
        for feat, rec, t in zip(feats, self.reconstruct, tokens):
            tiled = text[:, self.channel_to_value[: feat.shape[1]]]  # (B, w_i): T_i[c] = text[c mod 8]
            skips.append((rec(t) + feat) * tiled[:, :, None, None])

        x = bottom
        gated: dict[int, torch.Tensor] = {}
        for i in range(N_LEVELS - 1, -1, -1):
            up = self.up[i]
            assert isinstance(up, UpBlockAlignment)
            gated[i] = up.gate_skip(skips[i])
            x = up.merge(x, gated[i])
        logits = self.head(x)
        if not self.training:
            return logits
        size = images.shape[-2:]
        sides = {"side_1": self.head(gated[0])}
        for level in range(1, N_LEVELS):
            upsampled = F.interpolate(gated[level], size=size, mode="nearest")
            sides[f"side_{level + 1}"] = self.side_heads[level - 1](upsampled)
        return ModelOutput(logits, sides)

    # ------------------------------------------------------------------------------------------ loss

    def compute_losses(
        self, output: ModelOutput | torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Dice + BCE on the main logits; in training mode also ``cos_1_k`` = 0.5 mean(1 - cos(side_1, side_k))."""
        from lvseg.models.losses import image_weight  # the losses module loads MONAI: only when training

        terms = super().compute_losses(output, target, weight)
        aux = as_output(output).aux
        if not aux:
            return terms
        finest = aux["side_1"].flatten(1).float()
        per_image = image_weight(weight)
        for first, other in SIDE_PAIRS:
            distance = 1.0 - F.cosine_similarity(finest, aux[f"side_{other}"].flatten(1).float(), dim=1)  # (B,)
            if per_image is None:
                mean = distance.mean()
            else:
                mean = (distance * per_image).sum() / per_image.sum().clamp_min(1e-8)
            terms[f"cos_{first}_{other}"] = self.loss_weights[f"cos_{first}_{other}"] * mean
        return terms
