"""CRIS: CLIP-driven referring image segmentation (Wang et al., "CRIS: CLIP-Driven Referring Image Segmentation",
CVPR 2022; github.com/DerrickWang005/CRIS.pytorch), as the medvlsm study fine-tuned it for medical images
(Poudel et al., "Exploring Transfer Learning in Medical Image Segmentation using Vision-Language Models",
MIDL 2024; github.com/naamiinepal/medvlsm).

Network (:mod:`lvseg.models.cris_parts`): CLIP's ModifiedResNet (RN50 by default: ``width`` 64, ``layers``
3-4-6-3) with CRIS's attention pool over all positions gives C3 (stride 8), C4 (stride 16) and C5 (stride 32,
``embed_dim`` wide); the CLIP text transformer (``transformers`` ``CLIPTextModelWithProjection``) gives the
per-token states (after the final LayerNorm, not projected) and the sentence state (the first end-token state,
projected to ``embed_dim``); the neck fuses C5 with the sentence state and the C4/C3 path into a map at stride
16; three decoder layers let its positions attend to each other and to the words; the projector turns the
sentence state into a 3x3 kernel applied at stride 4; the logits are upsampled bicubically (align_corners=True)
to the input size. Images are [0, 1] at ``img_size`` (416; any multiple of 32), normalised with CLIP's mean and
std inside the model.

Text front end: by default the model's own CLIP tower reads CLIP BPE ids ``[SOT, BPE ..., EOT]`` (at most
``text_len`` = 77 tokens; a cut prompt ends with EOT) from the ``tokenizer`` files (vocab.json, merges.txt). Any
lvseg text encoder replaces it (``text_encoder="learned"``, ``"hf:<id or path>"``, ...): its per-token features
become the words (projected to the decoder width when they differ) and its pooled vector the sentence state.

Where this differs from the official code and the study's copy, and why:

* padding (``text_padding``): ``masked`` (default, CRIS's intent) pads after the end token and hides those
  positions from the cross-attention; positions are found from the end token, so a genuine "!" (id 0) is never
  hidden (the official mask ``ids == 0`` hides it). ``end-token`` reproduces the study: prompts padded to
  ``text_len`` with the end token and nothing masked (its models were trained that way and behave as trained);
* loss (``loss``): ``dice-bce`` (default) is the study's configuration, soft Dice + 0.2 BCE on logits, with a real
  BCE term (the study's pinned MONAI made its cross-entropy term zero, so it trained on Dice alone); ``bce`` is
  the official mean BCE-with-logits at stride 4 against the nearest-resized mask;
* the causal text mask is built per call for any length (the official one is fixed to ``word_len``); CLIP's
  weights load strictly, and ``connect`` (which CLIP lacks) is initialised and said so (the official
  ``strict=False`` load hid it);
* a training batch of one does not crash the neck's BatchNorm1d (the study's defect M3): such a batch is
  normalised with the running statistics (:class:`~lvseg.models.blocks.GuardedBatchNorm1d`);
* the token embedding is trained like the rest of the towers (the official code meant to freeze it but did
  not, so its published weights were trained that way); the parameter groups put the towers in ``towers`` and
  the head plus both position tables in ``head``, so ``--lr-scale towers=0.1`` gives the official 1e-5 / 1e-4
  from the first epoch (the official code ran its first epoch with every group at 1e-4).

Weights: ``clip_weights=FILE`` starts the towers from CLIP RN50 (open_clip layout, ``.safetensors`` or
``.bin``); ``cris_weights=FILE`` starts every module from a CRIS checkpoint (any of the three published
layouts, :mod:`lvseg.models.cris_weights`), the medvlsm study's starting point. ``lvseg import-cris`` converts
one into an lvseg checkpoint to evaluate, predict and serve.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lvseg.errors import LvsegError
from lvseg.models.base import (
    ModelOutput,
    ParameterGroup,
    PretrainedFolders,
    SegmentationModel,
    as_output,
    check_choices,
    check_img_size,
    check_positive,
)
from lvseg.models.cris_parts import CRISDecoder, CRISNeck, CRISProjector, ModifiedResNet
from lvseg.models.pretrained import CLIP_MEAN, CLIP_STD, weight_source
from lvseg.models.registry import register_model
from lvseg.text.openai_clip import clip_token_sequence, openai_clip_text_config

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection

logger = logging.getLogger(__name__)

#: The CLIP tokenizer files (vocab.json, merges.txt) the default text tower reads: CLIP's BPE, as in
#: openai/clip-vit-base-patch32 (the same vocabulary as RN50's).
DEFAULT_TOKENIZER = "openai/clip-vit-base-patch32"
TEXT_PADDINGS = ("masked", "end-token")
LOSSES = ("dice-bce", "bce")
#: Prompts about the structures the medvlsm study segments (short first, long last).
CRIS_EXAMPLE_REPORTS = (
    "polyp",
    "one small pink round polyp, located in the center of the image",
    "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
)


@register_model("cris")
class CRIS(SegmentationModel):
    """CRIS with CLIP's ModifiedResNet and text transformer (see the module docstring).

    Options: image tower ``width`` (64), ``layers`` ([3, 4, 6, 3]), ``embed_dim`` (1024: C5 and the sentence
    state), ``vision_heads`` (default width * 32 / 64, CLIP's rule), ``pool_grid`` (7: the position table's
    grid, CLIP's 224 px / 32); text tower ``text_width`` (512), ``text_layers`` (12), ``text_heads`` (8),
    ``vocab_size`` (49408), ``context_length`` (77 positions), ``text_len`` (tokens per prompt, default 77, or
    the text encoder's), ``tokenizer`` (CLIP tokenizer files: Hub id in the local cache or folder),
    ``text_encoder`` (None: the CLIP tower; any lvseg spec replaces it), ``text_padding`` (``masked`` |
    ``end-token``); head ``neck_dims`` ([256, 512, 1024]; the decoder is neck_dims[1] wide), ``decoder_layers``
    (3), ``decoder_heads`` (8), ``decoder_ffn`` (2048), ``dropout`` (0.2, the study's; CRIS's 0.1); ``loss``
    (``dice-bce`` | ``bce``); weights ``clip_weights`` / ``cris_weights`` (files, read when training starts).

    forward(images (B, C, S, S) in [0, 1], text_input) -> logits (B, 1, S, S); ``text_input`` is ``(ids (B, L)
    long, keep (B, L) bool or None)`` for the CLIP tower or ``(tokens (B, L, D), keep (B, L) bool, pooled (B,
    D))`` for an lvseg text encoder (:meth:`encode_text` makes either). Training mode: a :class:`ModelOutput`
    whose ``aux["stride4_logits"]`` (B, 1, S/4, S/4) are the logits before upsampling.
    """

    requires_text = True
    text_tower_in_forward = True
    #: The study's loss configuration: soft Dice + 0.2 BCE (here a real BCE term).
    loss_weights = MappingProxyType({"dice": 1.0, "bce": 0.2})
    #: The medvlsm study's CRIS fine-tuning (its scripts): AdamW 2e-5 on everything, weight decay 1e-3,
    #: ReduceLROnPlateau, batch 32, gradient clipping 0.5, early stopping after 20 epochs.
    recipe = MappingProxyType(
        {
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 2e-5,
            "weight_decay": 1e-3,
            "lr_schedule": "plateau",
            "grad_clip": 0.5,
            "patience": 20,
        }
    )
    decision_threshold = 0.35
    example_reports = CRIS_EXAMPLE_REPORTS
    importer = "lvseg.importers.cris:CRISImporter"

    visual: ModifiedResNet
    text_tower: CLIPTextModelWithProjection | None

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        import json

        folder = pretrained("clip-text")
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        return {
            "width": 8,
            "layers": [1, 1, 1, 1],
            "embed_dim": 24,
            "pool_grid": 2,
            "text_width": 16,
            "text_layers": 1,
            "text_heads": 2,
            "vocab_size": len(vocab),
            "context_length": 24,
            "tokenizer": str(folder),
            "neck_dims": [8, 16, 24],
            "decoder_layers": 1,
            "decoder_heads": 2,
            "decoder_ffn": 32,
        }

    def __init__(
        self,
        *,
        img_size: int = 416,
        in_channels: int = 3,
        width: int = 64,
        layers: list[int] | None = None,
        embed_dim: int = 1024,
        vision_heads: int | None = None,
        pool_grid: int = 7,
        text_width: int = 512,
        text_layers: int = 12,
        text_heads: int = 8,
        vocab_size: int = 49408,
        context_length: int = 77,
        text_len: int | None = None,
        tokenizer: str = DEFAULT_TOKENIZER,
        text_encoder: Any = None,
        text_padding: str = "masked",
        neck_dims: list[int] | None = None,
        decoder_layers: int = 3,
        decoder_heads: int = 8,
        decoder_ffn: int = 2048,
        dropout: float = 0.2,
        loss: str = "dice-bce",
        clip_weights: str | None = None,
        cris_weights: str | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        own_tower = text_encoder is None
        super().__init__(text_encoder=text_encoder, text_len=None if own_tower else text_len, texts=texts)
        layers = [3, 4, 6, 3] if layers is None else [int(n) for n in layers]
        neck_dims = [256, 512, 1024] if neck_dims is None else [int(n) for n in neck_dims]
        vision_heads = width * 32 // 64 if vision_heads is None else vision_heads
        check_img_size("cris", img_size)
        check_choices("cris", text_padding=(text_padding, TEXT_PADDINGS), loss=(loss, LOSSES))
        if in_channels not in (1, 3):
            raise LvsegError(f"cris: in_channels must be 1 (gray, replicated) or 3, got {in_channels}")
        if len(layers) != 4 or len(neck_dims) != 3:
            raise LvsegError(
                f"cris: layers must be 4 block counts and neck_dims 3 widths, got layers={layers}, "
                f"neck_dims={neck_dims}"
            )
        check_positive(
            "cris",
            width=width,
            embed_dim=embed_dim,
            vision_heads=vision_heads,
            pool_grid=pool_grid,
            text_width=text_width,
            text_layers=text_layers,
            text_heads=text_heads,
            vocab_size=vocab_size,
            context_length=context_length,
            decoder_layers=decoder_layers,
            decoder_heads=decoder_heads,
            decoder_ffn=decoder_ffn,
            **{f"layers_{i}": n for i, n in enumerate(layers)},
            **{f"neck_dims_{i}": n for i, n in enumerate(neck_dims)},
        )
        pool_width = 32 * width  # layer4's output, the attention pool's width (2048 at RN50)
        problems = []
        if width % 2:
            problems.append(f"width must be even (the stem starts at width / 2), got {width}")
        if pool_width % vision_heads:
            problems.append(f"the attention pool's width 32 x width = {pool_width} must be divisible by vision_heads")
        if text_width % text_heads:
            problems.append(f"text_width {text_width} must be divisible by text_heads {text_heads}")
        decoder_dim = neck_dims[1]
        if decoder_dim % decoder_heads or decoder_dim % 4 or neck_dims[1] % 2:
            problems.append(
                f"the decoder width neck_dims[1] = {decoder_dim} must be divisible by decoder_heads "
                f"{decoder_heads} and by 4 (sine positions)"
            )
        if not 0.0 <= dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {dropout}")
        if clip_weights and cris_weights:
            problems.append("give clip_weights or cris_weights, not both (a CRIS checkpoint holds the towers too)")
        if problems:
            raise LvsegError("cris: " + "; ".join(problems))

        self.in_channels, self.img_size = in_channels, img_size
        self.text_padding, self.loss = text_padding, loss
        self.vision_heads, self.vocab_size = vision_heads, vocab_size
        self.layers, self.neck_dims = layers, neck_dims
        self.tokenizer_source = tokenizer
        self._shapes = {
            "width": width,
            "layers": layers,
            "embed_dim": embed_dim,
            "pool_grid": pool_grid,
            "text_width": text_width,
            "text_layers": text_layers,
            "vocab_size": vocab_size,
            "context_length": context_length,
            "neck_dims": neck_dims,
            "decoder_layers": decoder_layers,
            "decoder_ffn": decoder_ffn,
        }
        self.visual = ModifiedResNet(layers, width, vision_heads, embed_dim, pool_grid)
        if own_tower:
            from transformers import CLIPTextConfig, CLIPTextModelWithProjection

            self.text_len = context_length if text_len is None else int(text_len)
            if not 2 <= self.text_len <= context_length:
                raise LvsegError(
                    f"cris: text_len must be between 2 (start and end tokens) and context_length {context_length}, "
                    f"got {text_len}"
                )
            # CLIP's vocabulary ends with the start and end tokens; masked padding is id 0
            config = CLIPTextConfig(
                **openai_clip_text_config(vocab_size, text_width, text_layers, text_heads, context_length, embed_dim),
                bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1,
                pad_token_id=0,
            )
            self.text_tower = CLIPTextModelWithProjection(config)
            word_dim, state_dim = text_width, embed_dim
        else:
            assert self.text_encoder is not None
            self.text_tower = None
            self.text_len = self.text_encoder.max_length
            word_dim = state_dim = self.text_encoder.feature_dim
        self.word_proj: nn.Module = nn.Identity() if word_dim == decoder_dim else nn.Linear(word_dim, decoder_dim)
        self.neck = CRISNeck(8 * width, 16 * width, embed_dim, state_dim, neck_dims)
        self.decoder = CRISDecoder(decoder_layers, decoder_dim, decoder_heads, decoder_ffn, dropout)
        self.proj = CRISProjector(state_dim, decoder_dim // 2)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._tokenizer: Any = None
        if weight_source() == "pretrained":  # a checkpoint's own weights replace these; describing reads none
            if cris_weights:
                self._start_from(cris_weights, "cris")
            elif clip_weights:
                self._start_from(clip_weights, "clip")

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def _finalize_config(self, config: dict[str, Any]) -> dict[str, Any]:
        from pathlib import Path

        local = Path(self.tokenizer_source).expanduser()
        config.update(
            layers=list(self.layers),
            neck_dims=list(self.neck_dims),
            vision_heads=self.vision_heads,
            tokenizer=str(local.resolve()) if local.exists() else self.tokenizer_source,
        )
        return super()._finalize_config(config)

    # ------------------------------------------------------------------------------------------ weights

    def _start_from(self, path: str, kind: str) -> None:
        """Load a CRIS checkpoint (every module) or CLIP RN50 (the towers) strictly into this model."""
        from lvseg.models import cris_weights as weights

        if kind == "cris":
            source, layout = weights.read_cris_checkpoint(path, option="cris_weights")
            if self.text_tower is None:
                raise LvsegError(
                    "cris: cris_weights need the CLIP text tower the checkpoint was trained with; leave "
                    "text_encoder unset (or use clip_weights to start the image tower alone)"
                )
        else:
            source, layout = weights.read_clip_state_dict(path), "open_clip"
        reference = self.state_dict()
        converted, dropped, problems = weights.convert_state_dict(
            source, reference, kind, drop_text=self.text_tower is None
        )
        expected = [key for key in reference if key.startswith(("visual.", "text_tower."))] if kind == "clip" else []
        expected = expected or list(reference)
        unfilled = [key for key in expected if key not in converted and not key.endswith("position_ids")]
        if kind == "clip":
            connect = [key for key in unfilled if key.startswith("visual.attnpool.connect.")]
            unfilled = [key for key in unfilled if key not in connect]
        if unfilled:
            problems.append(f"{len(unfilled)} key(s) with no weight in the file, such as {', '.join(unfilled[:4])}")
        if problems:
            raise LvsegError(
                f"cris: {path} does not fit the model built with {self._shape_summary()}: "
                + "; ".join(problems[:8])
                + " (give the options the file was built with, e.g. width, layers, embed_dim)"
            )
        self.load_state_dict({**reference, **converted}, strict=True)
        summary = {reason: len(keys) for reason, keys in dropped.items()}
        if kind == "clip":
            logger.info(
                "cris: towers start from CLIP %s (%d tensors; dropped %s); attnpool.connect, which CLIP does not "
                "have, starts from PyTorch's default initialisation, and the neck, decoder and projector from "
                "random weights",
                path,
                len(converted),
                summary,
            )
        else:
            logger.info(
                "cris: every module starts from the CRIS checkpoint %s (%s layout; dropped %s)", path, layout, summary
            )

    def _shape_summary(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self._shapes.items())

    def parameter_groups(self) -> list[ParameterGroup]:
        """``towers`` (the image and CLIP text towers, without their position tables) and ``head`` (neck,
        decoder, projector, both position tables and any lvseg text encoder); both at the run's learning rate
        unless the recipe or ``--lr-scale`` says otherwise (the official CRIS runs ``towers=0.1``)."""
        towers: list[nn.Parameter] = []
        head: list[nn.Parameter] = []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            in_tower = name.startswith(("visual.", "text_tower."))
            is_position = name.endswith(("attnpool.positional_embedding", "embeddings.position_embedding.weight"))
            (towers if in_tower and not is_position else head).append(parameter)
        return [ParameterGroup("towers", towers), ParameterGroup("head", head)]

    # --------------------------------------------------------------------------------------------- text

    @property
    def has_text_front_end(self) -> bool:
        return self.text_tower is not None or self.text_encoder is not None

    def _clip_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from lvseg.text.clip import load_clip_tokenizer

            tokenizer = load_clip_tokenizer(self.config.get("tokenizer", self.tokenizer_source))
            if len(tokenizer) > self.vocab_size:
                raise LvsegError(
                    f"cris: the tokenizer '{self.tokenizer_source}' has {len(tokenizer)} tokens but the text tower "
                    f"reads {self.vocab_size} (vocab_size)"
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """B prompts -> (ids (B, L) long, keep (B, L) bool or None): ``[SOT, BPE ..., EOT]`` cut to ``text_len``
        (a cut prompt ends with EOT). ``masked``: padded with 0 to the longest prompt, keep = up to the end token;
        ``end-token``: padded with EOT to ``text_len``, keep None (nothing masked)."""
        tokenizer = self._clip_tokenizer()
        start, end = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
        rows = []
        for text in texts:
            body = tokenizer(" ".join(str(text).split()), add_special_tokens=False)["input_ids"]
            rows.append(clip_token_sequence(body, start, end, self.text_len))
        masked = self.text_padding == "masked"
        length = max(len(row) for row in rows) if masked else self.text_len
        ids = torch.full((len(rows), length), 0 if masked else end, dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        if not masked:
            return ids, None
        lengths = torch.tensor([len(row) for row in rows])
        return ids, torch.arange(length)[None, :] < lengths[:, None]

    def encode_text(self, texts: Any) -> tuple[Any, ...]:
        texts = list(texts)
        if self.text_encoder is not None:
            features = self.text_encoder(texts)
            device = self.device
            return features.tokens.to(device), features.mask.to(device), features.pooled.to(device)
        ids, keep = self.token_ids(texts)
        return ids.to(self.device), None if keep is None else keep.to(self.device)

    def example_text_input(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[Any, ...]:
        """Full-length inputs without padding (nothing data-dependent: it runs on the meta device)."""
        if self.text_encoder is not None:
            dim = self.text_encoder.feature_dim
            return (
                torch.zeros(batch_size, self.text_len, dim, device=device),
                None,
                torch.zeros(batch_size, dim, device=device),
            )
        return torch.ones(batch_size, self.text_len, dtype=torch.long, device=device), None

    def _words_and_state(self, text_input: Any, batch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """text_input -> (words (B, L, d), padding (B, L) bool True = ignore, or None, state (B, P))."""
        if not isinstance(text_input, (tuple, list)) or len(text_input) not in (2, 3):
            raise LvsegError("cris: forward needs the text input of encode_text(reports)")
        if self.text_tower is None:
            if len(text_input) != 3:
                raise LvsegError("cris: built with an lvseg text encoder, forward needs (tokens, keep, pooled)")
            tokens, keep, state = text_input
            words = self.word_proj(tokens)
        else:
            if len(text_input) != 2:
                raise LvsegError("cris: built with its CLIP text tower, forward needs (ids, keep)")
            ids, keep = text_input
            if ids.ndim != 2 or ids.shape[1] > self.text_len:
                raise LvsegError(
                    f"cris expects token ids of shape (B, L <= text_len={self.text_len}), got {tuple(ids.shape)}"
                )
            hidden = self.text_tower.text_model(input_ids=ids).last_hidden_state  # (B, L, W), after ln_final
            end = ids.to(torch.int32).argmax(dim=-1)  # the first end token: the largest id of CLIP's vocabulary
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), end]
            state = self.text_tower.text_projection(pooled)  # (B, embed_dim)
            words = self.word_proj(hidden)
        if words.shape[0] != batch:
            raise LvsegError(f"cris: {batch} images but text input for {words.shape[0]}")
        return words, None if keep is None else ~keep.bool(), state

    # ------------------------------------------------------------------------------------------ forward

    def forward(self, images: torch.Tensor, text_input: Any = None) -> torch.Tensor | ModelOutput:
        self.check_images(images, self.in_channels, self.img_size)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        pixels = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        words, padding, state = self._words_and_state(text_input, images.shape[0])
        c3, c4, c5 = self.visual(pixels)
        fq = self.neck(c3, c4, c5, state)  # (B, d, S/16, S/16)
        fq = self.decoder(fq, words, padding)
        coarse = self.proj(fq, state)  # (B, 1, S/4, S/4)
        logits = F.interpolate(coarse, size=images.shape[-2:], mode="bicubic", align_corners=True)
        return ModelOutput(logits, {"stride4_logits": coarse}) if self.training else logits

    # --------------------------------------------------------------------------------------------- loss

    def compute_losses(
        self, output: ModelOutput | torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``dice-bce``: soft Dice (MONAI's, unsquared) + 0.2 BCE with logits at the input size (the study's
        configuration with a real BCE term). ``bce``: the official mean BCE with logits at stride 4 (in training
        mode; at the input size otherwise) against the nearest-resized target.

        output: the training-mode :class:`ModelOutput` (logits (B, 1, S, S), ``aux["stride4_logits"]`` (B, 1,
        S/4, S/4)) or logits (B, 1, S, S); target (B, 1, S, S) in [0, 1]; weight None, (B,) per sample or
        (B, 1, S, S) per pixel -> {term name: scalar}."""
        from lvseg.models.losses import bce_with_logits, soft_dice_loss

        output = as_output(output)
        if self.loss == "bce":
            logits = output.aux.get("stride4_logits", output.logits).float()
            size = logits.shape[-2:]
            if target.shape[-2:] != size:
                target = F.interpolate(target.float(), size=size, mode="nearest")
                if weight is not None and weight.dim() == 4:
                    weight = F.interpolate(weight.float(), size=size, mode="nearest")
            return {"bce": bce_with_logits(logits, target, weight)}
        logits = output.logits.float()  # losses in fp32 under autocast
        return {
            "dice": self.loss_weights["dice"] * soft_dice_loss(logits, target, weight, squared=False),
            "bce": self.loss_weights["bce"] * bce_with_logits(logits, target, weight),
        }

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, text_padding={self.text_padding!r}, loss={self.loss!r}"
