"""RecLMIS: cross-modal conditioned reconstruction for language-guided segmentation (Huang et al., IEEE TMI 2025).

Inference path (the official ``nets/RecLMIS.py``): a U-Net encoder (LViT's blocks); the report's per-token
states from a frozen CLIP text tower (``text_encoder="clip"``, B x 18 x 512) through a Conv1d
(``text_proj``); a Conditioned Interaction on the bottleneck: V = Conv1x1(x5) tokens + a learned
position embedding (zero init), T' = MHA(q=T, k=v=V), V' = MHA(q=V, k=v=T') (4 heads, no residuals,
no norms, no key-padding mask: padded tokens are attended, as the weights were trained); V' replaces x5
as the bottleneck of LViT's PLAM decoder. Text reaches the mask only through V'.

Training-only branch (the paper's Sections III-B and III-C), dropped from inference checkpoints: words
and patches of interest w_t = softmax over valid tokens of ``word_scorer``(CTBN(T')) and w_v = softmax
over patches of ``patch_scorer``(V'); conditioned visual reconstruction (CVR) rebuilds V' from the raw
CNN tokens flat(x5) with n_v = max(int(N r_v), 1) positions, drawn by w_v, zeroed, attending to the text
(context from T, attention re-weighted by w_t); conditioned language reconstruction (CLR) rebuilds the
CLIP states from T with n_t = max(int(L_valid r_t), 1) tokens, drawn by w_t, zeroed, attending to the
image (re-weighted by w_v); the conditioned contrastive loss (CCL) matches reports and images through
w_t/w_v-weighted max cosine similarities (x 100, CLIP's frozen temperature). Loss = 5 L_seg + 0.2 L_ccl
+ L_text + L_image, L_seg = 0.5 Dice + 0.5 class-balanced BCE (LViT's).

Where the official code has a defect, this follows the paper's intent:

* weights are softmaxed once (the official CCL applies softmax to w a second time);
* the reconstructors attend bidirectionally (the official decoders apply a causal mask to all
  self-attention, which makes token i unable to use tokens after it, meaningless for image patches)
  and ignore padded text tokens as keys;
* the reconstruction targets are detached (the official image target V' is not, so L_image also pulls
  the segmentation path toward whatever the reconstructor produces);
* there is no try/except around the branch (the official one switches it off for good on any exception,
  e.g. on a CPU, and trains on L_seg alone without a word); a NaN loss stays NaN, so it is seen;
* the masked positions are drawn with torch's generator (the official code uses numpy's).

One choice is lvseg's own, not the official code's (``contrastive_weights``): by default the CCL reads
the words/patches-of-interest weights *detached*. It scores how well a report and an image match under
those weights; it does not choose them, so its gradient reaches T and flat(x5) only, and the scorers are
trained by the two reconstructions. Left attached (``attached``), the CCL's gradient also flows through
the scorers into T' and V', the segmentation path's bottleneck. The official code keeps them attached, but
its second softmax (``official``) flattens the weights (no two differ by more than a factor e) and shrinks
that gradient by roughly the number of positions (16 patches at 64 px, 196 at 224; up to 18 tokens).
Measured on lvseg's synthetic set at the demo's budget (benchmarks/RESULTS.md; 5.5 CPU minutes, 64 px,
learned text, paper loss weights, one run each): ``attached`` Dice 0.60, text reliance 0.00 (the model did
not learn to use the reports); ``official`` 0.79, +0.46; ``detached`` 0.93, +0.67; U-Net 0.60.

Presets (``preset``): ``qata`` (r_v 0.5, r_t 0.3, 4 reconstructor layers, no scorer dropout) and
``mosmed`` (r_v 0.3, r_t 0.3, 3 layers, scorer dropout 0.5); an explicit option overrides its preset value.
``recipe`` holds the QaTa-COV19 training settings (Adam 3e-4, batch 32, patience 100); MosMedData+ used
batch 20 and patience 30 (``--batch-size 20 --patience 30``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
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
    check_choices,
    check_img_size,
    check_positive,
)
from lvseg.models.blocks import ConvTransBN, UpBlockAttention
from lvseg.models.cnn_encoder import DOWNSAMPLING, build_cnn_decoder, build_cnn_encoder, decode_cnn, encode_cnn
from lvseg.models.registry import register_model

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, float | int]] = {
    "qata": {"image_mask_rate": 0.5, "text_mask_rate": 0.3, "reconstructor_layers": 4, "scorer_dropout": 0.0},
    "mosmed": {"image_mask_rate": 0.3, "text_mask_rate": 0.3, "reconstructor_layers": 3, "scorer_dropout": 0.5},
}
#: How the conditioned contrastive loss reads the word/patch weights (module docstring): lvseg's default
#: ``detached``; ``attached`` (softmaxed once, gradient kept); ``official`` (a second softmax, gradient kept).
CONTRASTIVE_WEIGHTS = ("detached", "attached", "official")
#: Text input of the official model when no encoder is given: 18 tokens of CLIP ViT-B/32 projected states.
PAPER_TEXT_LEN, PAPER_TEXT_DIM = 18, 512


class WeightedAttention(nn.Module):
    """Multi-head attention whose probabilities can be re-weighted per key and renormalised per query.

    query (B, Q, D), key/value (B, K, D), ``key_weights`` (B, K) >= 0 or None, ``key_padding`` (B, K) bool
    (True = ignore) or None -> (B, Q, D).
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        key_weights: torch.Tensor | None = None,
        key_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, n_query, dim = query.shape
        head_dim = dim // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, self.heads, head_dim).transpose(1, 2)  # (B, H, n, d)

        q, k, v = split(self.query(query)), split(self.key(context)), split(self.value(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)  # (B, H, Q, K)
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        probabilities = scores.softmax(dim=-1)
        if key_weights is not None:
            probabilities = probabilities * key_weights[:, None, None, :]
            probabilities = probabilities / probabilities.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        attended = self.dropout(probabilities) @ v  # (B, H, Q, d)
        return self.out(attended.transpose(1, 2).reshape(batch, n_query, dim))


class ReconstructionLayer(nn.Module):
    """Post-norm transformer layer: self-attention, optional cross-attention, FFN (dim -> 2 dim -> dim)."""

    def __init__(self, dim: int, heads: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.self_attention = WeightedAttention(dim, heads, dropout)
        self.self_norm = nn.LayerNorm(dim)
        self.cross_attention = WeightedAttention(dim, heads, dropout) if cross else None
        self.cross_norm = nn.LayerNorm(dim) if cross else None
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        self_weights: torch.Tensor | None = None,
        self_padding: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_weights: torch.Tensor | None = None,
        context_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.self_norm(x + self.dropout(self.self_attention(x, x, self_weights, self_padding)))
        if self.cross_attention is not None:
            assert context is not None and self.cross_norm is not None
            attended = self.cross_attention(x, context, context_weights, context_padding)
            x = self.cross_norm(x + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class ConditionedReconstructor(nn.Module):
    """The official ``DualTransformer``: ``context`` (N self-attention layers over the condition, re-weighted
    by its weights) and ``decoder`` (N layers of self-attention over the masked sequence and cross-attention
    to the context, re-weighted by the condition's weights)."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.context = nn.ModuleList([ReconstructionLayer(dim, heads, dropout, cross=False) for _ in range(layers)])
        self.decoder = nn.ModuleList([ReconstructionLayer(dim, heads, dropout, cross=True) for _ in range(layers)])

    def forward(
        self,
        masked: torch.Tensor,
        condition: torch.Tensor,
        condition_weights: torch.Tensor,
        masked_padding: torch.Tensor | None = None,
        condition_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """masked (B, M, D), condition (B, C, D), condition_weights (B, C) -> reconstruction (B, M, D)."""
        context = condition
        for layer in self.context:
            context = layer(context, condition_weights, condition_padding)
        x = masked
        for layer in self.decoder:
            x = layer(x, None, masked_padding, context, condition_weights, condition_padding)
        return x


def _scorer(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))


def zero_by_weights(tokens: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D) with ``counts[b]`` positions of row b, drawn without replacement with probability
    ``weights[b]`` (B, N), set to 0 (positions of zero weight are drawn last, uniformly)."""
    keep = torch.ones(tokens.shape[:2], dtype=tokens.dtype, device=tokens.device)
    probabilities = weights.detach().float().clamp_min(0) + 1e-12  # so zero-weight positions can fill up
    for row in range(tokens.shape[0]):
        chosen = torch.multinomial(probabilities[row], int(counts[row]), replacement=False)
        keep[row, chosen] = 0
    return tokens * keep.unsqueeze(-1)


@register_model("reclmis")
class RecLMIS(SegmentationModel):
    """RecLMIS with base width b (bottleneck width 8b) for images of ``img_size`` x ``img_size``.

    Submodules (official names in brackets, see :mod:`lvseg.importers.reclmis`): inc [inc],
    down.i [down{i+1}], up.i [up{i+1}] (PLAM ``up.i.attention`` [pixModule]), head [outc], text_proj
    [text_module4], patch_embed / pos_embed [interact.embeddings.patch_embeddings / position_embeddings],
    attn_text [interact.attn_text], attn_image [interact.attn_img]; training only: text_context
    [interact.CTBN], word_scorer [mlp_woi], patch_scorer [mlp_visual], image_reconstructor
    [rec_img_trans1], text_reconstructor [rec_text_trans1].

    ``forward(images (B, C, S, S), text_input) -> logits (B, 1, S, S)``; ``text_input`` is
    ``(tokens (B, L, text_dim), mask (B, L) bool)`` from :meth:`encode_text`, or the tokens alone (all
    valid). Training mode: a :class:`ModelOutput` whose ``aux`` holds what the training losses read.
    """

    requires_text = True
    default_text_encoder = "clip"
    training_only_modules = (
        "text_context",
        "word_scorer",
        "patch_scorer",
        "image_reconstructor",
        "text_reconstructor",
        "text_output",
    )
    loss_weights = MappingProxyType(
        {"dice": 2.5, "bce": 2.5, "ccl": 0.2, "text_reconstruction": 1.0, "image_reconstruction": 1.0}
    )
    recipe = MappingProxyType({"batch_size": 32, "lr": 3e-4, "patience": 100})
    importer = "lvseg.importers.reclmis:RecLMISImporter"

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        return {"base_channels": 8, "text_encoder": f"clip:{pretrained('clip-text')}"}

    def __init__(
        self,
        *,
        in_channels: int = 3,
        img_size: int = 224,
        base_channels: int = 64,
        text_encoder: Any = None,
        text_len: int | None = None,
        text_dim: int | None = None,
        heads: int = 4,
        dropout: float = 0.1,
        preset: str = "qata",
        image_mask_rate: float | None = None,
        text_mask_rate: float | None = None,
        reconstructor_layers: int | None = None,
        scorer_dropout: float | None = None,
        logit_scale: float = 100.0,
        contrastive_weights: str = "detached",
        texts: Sequence[str] | None = None,
    ) -> None:
        super().__init__(text_encoder=text_encoder, text_len=text_len, texts=texts)
        check_img_size("reclmis", img_size)
        check_choices(
            "reclmis", preset=(preset, PRESETS), contrastive_weights=(contrastive_weights, CONTRASTIVE_WEIGHTS)
        )
        self.contrastive_weights = contrastive_weights
        settings = dict(PRESETS[preset])
        for name, value in (
            ("image_mask_rate", image_mask_rate),
            ("text_mask_rate", text_mask_rate),
            ("reconstructor_layers", reconstructor_layers),
            ("scorer_dropout", scorer_dropout),
        ):
            if value is not None:
                settings[name] = value
        for name in ("image_mask_rate", "text_mask_rate", "scorer_dropout"):
            if not 0.0 <= float(settings[name]) < 1.0:
                raise LvsegError(f"reclmis: {name} must be in [0, 1), got {settings[name]}")
        text_len, text_dim = self.token_input_shape(text_len, text_dim, default=(PAPER_TEXT_LEN, PAPER_TEXT_DIM))
        check_positive(
            "reclmis",
            in_channels=in_channels,
            base_channels=base_channels,
            text_dim=text_dim,
            text_len=text_len,
            heads=heads,
            reconstructor_layers=int(settings["reconstructor_layers"]),
        )
        width = 8 * base_channels
        if width % heads:
            raise LvsegError(
                f"reclmis: the bottleneck width 8 x base_channels = {width} must be divisible by heads = {heads}"
            )
        self.in_channels, self.img_size, self.text_len, self.text_dim = in_channels, img_size, text_len, text_dim
        self.settings = settings
        self.logit_scale = float(logit_scale)
        n_patches = (img_size // DOWNSAMPLING) ** 2  # one token per bottleneck pixel

        self.inc, self.down = build_cnn_encoder(in_channels, base_channels)
        self.up, self.head = build_cnn_decoder(base_channels, UpBlockAttention)  # PLAM-gated skips
        self.text_proj = nn.Conv1d(text_dim, width, kernel_size=3, padding=1)
        self.patch_embed = nn.Conv2d(width, width, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches, width))
        self.embed_dropout = nn.Dropout(dropout)
        self.attn_text = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.attn_image = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)

        layers, scorer_p = int(settings["reconstructor_layers"]), float(settings["scorer_dropout"])
        self.text_context = ConvTransBN(width, width)
        self.word_scorer = _scorer(width, scorer_p)
        self.patch_scorer = _scorer(width, scorer_p)
        self.image_reconstructor = ConditionedReconstructor(width, heads, layers, dropout)
        self.text_reconstructor = ConditionedReconstructor(width, heads, layers, dropout)
        self.text_output = nn.Identity() if width == text_dim else nn.Linear(width, text_dim)
        self._warned_small_batch = False

    def _finalize_config(self, config: dict[str, Any]) -> dict[str, Any]:
        config = super()._finalize_config(config)
        config.update(self.settings)
        return config

    # ------------------------------------------------------------------------------------------ text

    def encode_text(self, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """B reports -> (CLIP states (B, L, text_dim), mask (B, L) bool), on the model's device."""
        if self.text_encoder is None:
            raise LvsegError(
                "model 'reclmis' was built without a text encoder; build it with text_encoder='clip' "
                "(or 'clip:<id or folder>'), or call forward() with text features"
            )
        features = self.text_encoder(list(texts))
        return features.tokens.to(self.device), features.mask.to(self.device)

    def example_text_input(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch_size, self.text_len, self.text_dim, device=device)

    # --------------------------------------------------------------------------------------- forward

    def _text_input(self, images: torch.Tensor, text_input: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = text_input if isinstance(text_input, (tuple, list)) else (text_input, None)
        expected = (images.shape[0], self.text_len, self.text_dim)
        if tokens is None or tuple(tokens.shape) != expected:
            raise LvsegError(
                f"reclmis expects text states of shape (B={expected[0]}, text_len={expected[1]}, "
                f"text_dim={expected[2]}), got {None if tokens is None else tuple(tokens.shape)}"
            )
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, mask.bool()

    def forward(self, images: torch.Tensor, text_input: Any = None) -> torch.Tensor | ModelOutput:
        """images (B, C, S, S), text_input (states (B, L, D), mask (B, L)) -> logits (B, 1, S, S)."""
        self.check_images(images, self.in_channels, self.img_size)
        states, mask = self._text_input(images, text_input)

        skips, bottom = encode_cnn(self.inc, self.down, images)  # (B, w_i, S/2^i, S/2^i); x5: (B, 8b, S/16, S/16)
        batch, width, height, breadth = bottom.shape

        text = self.text_proj(states.transpose(1, 2)).transpose(1, 2)  # T: (B, L, 8b)
        patches = self.patch_embed(bottom).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, 8b)
        patches = self.embed_dropout(patches)
        text_attended = self.attn_text(text, patches, patches, need_weights=False)[0]  # T'
        image_attended = self.attn_image(patches, text_attended, text_attended, need_weights=False)[0]  # V'

        x = image_attended.transpose(1, 2).reshape(batch, width, height, breadth)  # V' as a map
        logits = self.head(decode_cnn(self.up, x, skips))
        if not self.training:
            return logits
        return ModelOutput(
            logits, self._reconstruction_branch(bottom, states, mask, text, text_attended, image_attended)
        )

    def _reconstruction_branch(
        self,
        bottom: torch.Tensor,
        states: torch.Tensor,
        mask: torch.Tensor,
        text: torch.Tensor,
        text_attended: torch.Tensor,
        image_attended: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """What the training-only losses read, each batch-first (see :meth:`compute_losses`)."""
        image_tokens = bottom.flatten(2).transpose(1, 2)  # raw CNN tokens flat(x5): (B, N, 8b)
        context = self.text_context(text_attended.transpose(1, 2)).transpose(1, 2)  # T'': (B, L, 8b)
        word_logits = self.word_scorer(context).squeeze(-1).masked_fill(~mask, float("-inf"))
        word_weights = word_logits.softmax(dim=-1)  # (B, L), 0 at padding
        patch_weights = self.patch_scorer(image_attended).squeeze(-1).softmax(dim=-1)  # (B, N)

        n_patches = image_tokens.shape[1]
        image_counts = torch.full((len(mask),), max(int(n_patches * self.settings["image_mask_rate"]), 1))
        text_counts = (mask.sum(dim=1).float() * self.settings["text_mask_rate"]).long().clamp_min(1)
        masked_image = zero_by_weights(image_tokens, patch_weights, image_counts)
        masked_text = zero_by_weights(text, word_weights, text_counts)

        padding = ~mask
        image_reconstruction = self.image_reconstructor(
            masked_image, text, word_weights, condition_padding=padding
        )  # CVR: (B, N, 8b)
        text_reconstruction = self.text_output(
            self.text_reconstructor(masked_text, image_tokens, patch_weights, masked_padding=padding)
        )  # CLR: (B, L, D)
        return {
            "image_reconstruction": image_reconstruction,
            "image_target": image_attended.detach(),
            "text_reconstruction": text_reconstruction,
            "text_target": states.detach(),
            "text_tokens": text,
            "image_tokens": image_tokens,
            "text_mask": mask,
            "word_weights": word_weights,
            "patch_weights": patch_weights,
        }

    # ------------------------------------------------------------------------------------------ loss

    def compute_losses(
        self, output: ModelOutput | torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """5 L_seg (``dice``, ``bce``) + 0.2 ``ccl`` + ``text_reconstruction`` + ``image_reconstruction``.

        The training-only terms exist in training mode; ``ccl`` needs two or more images (skipped, with one
        log line, for a batch of one) and reads the word/patch weights as ``contrastive_weights`` says
        (module docstring). ``weight`` applies to the segmentation terms.
        """
        terms = super().compute_losses(output, target, weight)
        aux = as_output(output).aux
        if not aux:
            return terms
        weights = self.loss_weights
        terms["image_reconstruction"] = weights["image_reconstruction"] * F.mse_loss(
            aux["image_reconstruction"], aux["image_target"]
        )
        terms["text_reconstruction"] = weights["text_reconstruction"] * F.mse_loss(
            aux["text_reconstruction"], aux["text_target"]
        )
        if len(aux["text_tokens"]) >= 2:
            word_weights, patch_weights = self._contrastive_weights(
                aux["word_weights"], aux["patch_weights"], aux["text_mask"]
            )
            terms["ccl"] = weights["ccl"] * conditioned_contrastive_loss(
                aux["text_tokens"], aux["image_tokens"], aux["text_mask"], word_weights, patch_weights, self.logit_scale
            )
        elif not self._warned_small_batch:
            logger.warning(
                "reclmis: the conditioned contrastive loss needs two or more images per batch; it is "
                "skipped for batches of one"
            )
            self._warned_small_batch = True
        return terms

    def _contrastive_weights(
        self, word_weights: torch.Tensor, patch_weights: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """word (B, L) and patch (B, N) weights as the CCL reads them (``contrastive_weights``)."""
        if self.contrastive_weights == "detached":
            return word_weights.detach(), patch_weights.detach()
        if self.contrastive_weights == "official":
            return word_weights.masked_fill(~mask, float("-inf")).softmax(dim=-1), patch_weights.softmax(dim=-1)
        return word_weights, patch_weights


def conditioned_contrastive_loss(
    text: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor,
    word_weights: torch.Tensor,
    patch_weights: torch.Tensor,
    logit_scale: float = 100.0,
) -> torch.Tensor:
    """CCL between B reports and B images (pairs on the diagonal).

    text (B, L, D), image (B, N, D), mask (B, L) bool, word_weights (B, L), patch_weights (B, N).
    s[a, b, t, v] = cos(text[a, t], image[b, v]) * mask[a, t]; t2v[a, b] = sum_t w_t[a, t] max_v s;
    v2t[a, b] = sum_v w_v[b, v] max_t s; logits = (t2v + v2t) / 2 * logit_scale;
    loss = (CE(logits) + CE(logits^T)) / 2 with the diagonal as targets.
    """
    text, image = F.normalize(text.float(), dim=-1), F.normalize(image.float(), dim=-1)
    similarity = torch.einsum("atd,bvd->abtv", text, image) * mask[:, None, :, None].float()
    text_to_image = (similarity.amax(dim=3) * word_weights[:, None, :]).sum(dim=2)  # (B, B)
    image_to_text = (similarity.amax(dim=2) * patch_weights[None, :, :]).sum(dim=2)  # (B, B)
    logits = 0.5 * (text_to_image + image_to_text) * logit_scale
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
