"""CLIPSeg fine-tuned for medical segmentation (Lüddecke & Ecker, CVPR 2022; the medvlsm study, MIDL 2024).

``clipseg`` runs ``transformers``' CLIPSeg (default ``CIDAS/clipseg-rd64-refined``, any Hub id or local
folder written by ``save_pretrained``): a CLIP ViT-B/16 image tower whose encoder layers 3, 6 and 9
(0-based; ``hidden_states[4, 7, 10]``) feed a 3-layer, 64-wide decoder conditioned (FiLM) on the CLIP
text embedding of the prompt, then transposed convolutions back to the input size.

What differs from running ``CLIPSegForImageSegmentation`` directly, and why:

* the model owns its image preprocessing: inputs are images in [0, 1] at ``img_size`` (352 by default, as
  the CLIPSeg processor; any multiple of the patch size works, positions are interpolated as
  ``transformers`` does), normalised with the mean/std of the checkpoint's processor config;
* ``train_encoders=True`` really trains the image and text towers: ``transformers``' own forward runs them
  under ``torch.no_grad``, so the medvlsm study's ``freeze_encoder: false`` changed nothing there; this
  forward is written here so it does. Default: decoder only (1.127 M trainable parameters), as the study
  trained in practice; the frozen towers are then reloaded from their source, never stored in checkpoints;
* the loss is the study's Dice + 0.2 BCE with a real BCE term on logits (the study's pinned MONAI made
  its cross-entropy term zero for one-channel output), and the recipe is the study's (``recipe = "vlsm"``).

Text input: CLIP BPE ids padded to the longest prompt of the batch (at most ``text_len``, 77) with their
attention mask; CLIP's causal attention and end-of-text pooling make the embedding independent of the
padding length.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lvseg.errors import LvsegError
from lvseg.models.base import ModelOutput, PretrainedFolders, SegmentationModel, as_output, check_positive
from lvseg.models.pretrained import PretrainedTower, weight_source
from lvseg.models.registry import register_model
from lvseg.text.openai_clip import openai_clip_text_config

if TYPE_CHECKING:
    from transformers import CLIPSegModel

logger = logging.getLogger(__name__)

DEFAULT_CLIPSEG = "CIDAS/clipseg-rd64-refined"
#: ImageNet statistics, CIDAS/clipseg-rd64-refined's processor config.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The architecture of CIDAS/clipseg-rd64-refined (its config.json), used to describe the model
#: (``lvseg info``) when its files are not downloaded.
CIDAS_CONFIG: dict[str, Any] = {
    "text_config": {
        **openai_clip_text_config(vocab_size=49408, width=512, layers=12, heads=8, context_length=77),
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 16,
        "hidden_act": "quick_gelu",
    },
    "projection_dim": 512,
    "extract_layers": [3, 6, 9],
    "reduce_dim": 64,
    "decoder_num_attention_heads": 4,
    "decoder_intermediate_size": 2048,
    "conditional_layer": 0,
    "use_complex_transposed_convolution": True,
}

#: The decoder geometry of a CLIPSeg config (what :func:`build_clipseg_decoder` needs besides the widths).
DECODER_KEYS = (
    "extract_layers",
    "reduce_dim",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
    "conditional_layer",
    "use_complex_transposed_convolution",
)


def hf_local_only() -> bool:
    from lvseg.text.huggingface import downloads_allowed

    return not downloads_allowed()


def missing_clipseg_message(
    name_or_path: str, error: BaseException | None = None, option: str = "name_or_path", what: str = "CLIPSeg model"
) -> str:
    """The sentence for a CLIPSeg checkpoint that does not load; ``option``: the model option that names it."""
    from lvseg.text.huggingface import download_failed_message, downloads_allowed

    if Path(name_or_path).expanduser().exists():
        return (
            f"CLIPSeg folder '{name_or_path}' does not hold a loadable CLIPSeg model (config.json and model "
            "weights as written by `save_pretrained`, with vocab.json, merges.txt and preprocessor_config.json); "
            f"re-save it there or pass another folder with `--model-option {option}=/path/to/folder`."
        )
    if downloads_allowed():
        return download_failed_message(
            what, name_or_path, error, f"pass the folder as `--model-option {option}=/path/to/folder`"
        )
    return (
        f"{what} '{name_or_path}' is not available offline: download it with `hf download {name_or_path}` "
        "(into the Hugging Face cache, ~/.cache/huggingface) or into a folder passed as "
        f"`--model-option {option}=/path/to/folder` (or set LVSEG_ALLOW_DOWNLOAD=1 to let lvseg download it)."
    )


def clipseg_available(name_or_path: str) -> bool:
    """Whether the CLIPSeg checkpoint ``name_or_path`` is a folder or in the Hugging Face cache (nothing is
    downloaded: for messages that list everything a model still needs)."""
    if Path(name_or_path).expanduser().exists():
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name_or_path, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def load_clipseg_config(name_or_path: str, option: str = "name_or_path") -> Any:
    """The ``CLIPSegConfig`` of a checkpoint (config.json only); the built-in CIDAS one when the default
    checkpoint is not downloaded."""
    from transformers import CLIPSegConfig

    try:
        return CLIPSegConfig.from_pretrained(name_or_path, local_files_only=hf_local_only())
    except (OSError, ValueError, KeyError, TypeError) as error:
        if name_or_path == DEFAULT_CLIPSEG:
            return CLIPSegConfig(**CIDAS_CONFIG)
        raise LvsegError(missing_clipseg_message(name_or_path, error, option)) from error


def load_clipseg(name_or_path: str, option: str = "name_or_path", what: str = "CLIPSeg model") -> Any:
    """``CLIPSegForImageSegmentation`` with its published weights, offline unless downloads are allowed; a missing
    one is a :class:`LvsegError` naming ``what`` and the model ``option`` that gives a folder."""
    from transformers import CLIPSegForImageSegmentation

    try:
        return CLIPSegForImageSegmentation.from_pretrained(name_or_path, local_files_only=hf_local_only())
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.debug("loading CLIPSeg %r failed: %r", name_or_path, error)
        raise LvsegError(missing_clipseg_message(name_or_path, error, option, what)) from error


def processor_statistics(name_or_path: str) -> tuple[list[float], list[float]]:
    """(mean, std) of the checkpoint's image processor config; ImageNet's when it has none."""
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        values, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path, local_files_only=hf_local_only())
        return [float(v) for v in values["image_mean"]], [float(v) for v in values["image_std"]]
    except (OSError, ValueError, KeyError, TypeError):
        return list(IMAGENET_MEAN), list(IMAGENET_STD)


def build_clipseg_decoder(
    vision_width: int, patch_size: int, projection_dim: int, geometry: dict[str, Any], layer_norm_eps: float = 1e-5
) -> nn.Module:
    """A randomly initialised ``transformers`` CLIPSeg decoder for an image tower of ``vision_width`` and a
    conditioning vector of ``projection_dim``, with the geometry (:data:`DECODER_KEYS`) of ``geometry``."""
    from transformers import CLIPSegConfig, CLIPSegVisionConfig
    from transformers.models.clipseg.modeling_clipseg import CLIPSegDecoder

    config = CLIPSegConfig(
        text_config={"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1},
        vision_config={
            "hidden_size": vision_width,
            "patch_size": patch_size,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "intermediate_size": 64,
            "layer_norm_eps": layer_norm_eps,
        },
        projection_dim=projection_dim,
        **{key: geometry[key] for key in DECODER_KEYS},
    )
    assert isinstance(config.vision_config, CLIPSegVisionConfig)  # CLIPSegConfig builds it from the dict
    config._attn_implementation = config.vision_config._attn_implementation = "sdpa"  # built outside a parent model
    return CLIPSegDecoder(config)


class CLIPSegStyleModel(SegmentationModel, abstract=True):
    """Frozen (or fine-tuned) vision-language towers + a CLIPSeg decoder: the shared part of ``clipseg``
    and ``biomedclipseg(-d)``.

    Subclasses build ``self.tower`` (a :class:`PretrainedTower`), ``self.decoder`` (a ``transformers``
    ``CLIPSegDecoder``), set ``self.extract_layers``, ``self.patch_size``, ``self.text_len``, the mean/std
    buffers through :meth:`_set_normalisation`, and implement :meth:`image_hidden_states`,
    :meth:`text_condition` and :meth:`tokenize`.

    forward(images (B, C, S, S) in [0, 1], (ids (B, L) long, mask (B, L) long or None: no padding))
    -> logits (B, 1, S, S).
    """

    requires_text = True
    text_tower_in_forward = True
    #: The medvlsm study's loss: Dice + 0.2 BCE (on logits).
    loss_weights = MappingProxyType({"dice": 1.0, "bce": 0.2})
    recipe = "vlsm"

    tower: PretrainedTower[nn.Module]
    decoder: nn.Module
    pixel_mean: torch.Tensor  # buffers set by _set_normalisation
    pixel_std: torch.Tensor
    extract_layers: list[int]
    patch_size: int
    text_len: int

    @property
    def has_text_front_end(self) -> bool:
        return True

    def _set_normalisation(self, mean: Sequence[float], std: Sequence[float], in_channels: int) -> None:
        if in_channels not in (1, 3):
            raise LvsegError(f"{self.model_name}: in_channels must be 1 (gray, replicated) or 3, got {in_channels}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise LvsegError(
                f"{self.model_name}: image_mean/image_std must be 3 values each (std > 0), got "
                f"{list(mean)} / {list(std)}"
            )
        self.in_channels = in_channels
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def _check_geometry(self, img_size: int, layers: int) -> None:
        check_positive(self.model_name, img_size=img_size)
        if img_size % self.patch_size:
            raise LvsegError(
                f"{self.model_name}: img_size must be a multiple of the patch size {self.patch_size}, got {img_size}"
            )
        if not self.extract_layers or max(self.extract_layers) >= layers or min(self.extract_layers) < 0:
            raise LvsegError(
                f"{self.model_name}: extract_layers {self.extract_layers} must name layers of the "
                f"{layers}-layer image tower (0-based)"
            )

    # ---------------------------------------------------------------------------- subclass hooks

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts -> (ids (B, L), attention mask (B, L)), L <= ``text_len``."""
        raise NotImplementedError

    def image_hidden_states(self, pixels: torch.Tensor) -> Sequence[torch.Tensor]:
        """Normalised images (B, 3, S, S) -> hidden states (embeddings, block 0, ...), each (B, 1 + N, W)."""
        raise NotImplementedError

    def text_condition(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(ids, mask or None) -> the decoder's conditioning vector (B, P)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ the contract

    def encode_text(self, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize([" ".join(str(text).split()) for text in texts])
        return ids.to(self.device), mask.to(self.device)

    def example_text_input(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, None]:
        """Full-length ids without padding (mask None: nothing data-dependent, so it runs on the meta device)."""
        return torch.ones(batch_size, self.text_len, dtype=torch.long, device=device), None

    def forward(self, images: torch.Tensor, text_input: Any = None) -> torch.Tensor | ModelOutput:
        if not isinstance(text_input, (tuple, list)) or len(text_input) != 2:
            raise LvsegError(f"{self.model_name}: forward needs (ids, mask) from encode_text(reports)")
        ids, mask = text_input
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        pixels = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        frozen = contextlib.nullcontext() if not self.tower.frozen else torch.no_grad()
        with frozen:
            hidden = self.image_hidden_states(pixels)
            taps = [hidden[index + 1] for index in self.extract_layers]
            condition = self.text_condition(ids, mask)
        logits = self.decoder(taps, condition).logits  # (B, S, S): the decoder squeezes its channel
        logits = logits.reshape(images.shape[0], 1, *logits.shape[-2:])
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return ModelOutput(logits, {}) if self.training else logits

    def compute_losses(
        self, output: ModelOutput | torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Soft Dice (MONAI's, unsquared) + BCE with logits, weighted 1 / 0.2 (the medvlsm study's)."""
        from lvseg.models.losses import bce_with_logits, soft_dice_loss

        logits = as_output(output).logits.float()  # losses in fp32 under autocast
        return {
            "dice": self.loss_weights["dice"] * soft_dice_loss(logits, target, weight, squared=False),
            "bce": self.loss_weights["bce"] * bce_with_logits(logits, target, weight),
        }


@register_model("clipseg")
class CLIPSeg(CLIPSegStyleModel):
    """``transformers`` CLIPSeg as an lvseg model (see the module docstring).

    Options: ``name_or_path`` (Hub id or local folder), ``img_size`` (352), ``in_channels`` (3; 1 is
    replicated), ``text_len`` (max prompt tokens; default the text tower's 77), ``train_encoders`` (False:
    decoder only), ``image_mean``/``image_std`` (default: the checkpoint's processor config).
    """

    tower: PretrainedTower[CLIPSegModel]

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        return {"name_or_path": str(pretrained("clipseg"))}

    def __init__(
        self,
        *,
        name_or_path: str = DEFAULT_CLIPSEG,
        img_size: int = 352,
        in_channels: int = 3,
        text_len: int | None = None,
        train_encoders: bool = False,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
    ) -> None:
        super().__init__()
        local = Path(name_or_path).expanduser()
        self.name_or_path = str(local.resolve()) if local.exists() else name_or_path
        source = weight_source()
        if source == "pretrained" or (source == "checkpoint" and not train_encoders):
            full = load_clipseg(self.name_or_path)
        else:  # weights come from an lvseg checkpoint, or none are needed (describing the model)
            from transformers import CLIPSegForImageSegmentation

            full = CLIPSegForImageSegmentation(load_clipseg_config(self.name_or_path))
        config = full.config
        if train_encoders:  # what segmentation never reads stays frozen: the image embedding (final norm and
            # projection), the contrastive temperature and the image layers after the deepest tap
            vision = full.clip.vision_model
            unused = [
                vision.post_layernorm,
                full.clip.visual_projection,
                *vision.encoder.layers[max(config.extract_layers) + 1 :],
            ]
            for module in unused:
                module.requires_grad_(False)
            full.clip.logit_scale.requires_grad_(False)
        self.tower = PretrainedTower(full.clip, self.name_or_path, frozen=not train_encoders)
        self.decoder = full.decoder
        self.extract_layers = list(config.extract_layers)
        self.patch_size = int(config.vision_config.patch_size)
        limit = int(config.text_config.max_position_embeddings)
        self.text_len = limit if text_len is None else int(text_len)
        if not 2 <= self.text_len <= limit:
            raise LvsegError(f"clipseg: text_len must be between 2 and the text tower's {limit} tokens, got {text_len}")
        self._check_geometry(img_size, int(config.vision_config.num_hidden_layers))
        if image_mean is None or image_std is None:
            mean, std = (
                processor_statistics(self.name_or_path) if source != "nowhere" else (IMAGENET_MEAN, IMAGENET_STD)
            )
            image_mean, image_std = list(image_mean or mean), list(image_std or std)
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self._set_normalisation(self.image_mean, self.image_std, in_channels)
        self._tokenizer: Any = None
        vision_forward = inspect.signature(full.clip.vision_model.forward).parameters
        self._interpolate = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in vision_forward else {}

    def _finalize_config(self, config: dict[str, Any]) -> dict[str, Any]:
        config.update(
            name_or_path=self.name_or_path, text_len=self.text_len, image_mean=self.image_mean, image_std=self.image_std
        )
        return super()._finalize_config(config)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokenizer is None:
            from lvseg.text.clip import load_clip_tokenizer

            self._tokenizer = load_clip_tokenizer(self.name_or_path)
        encoded = self._tokenizer(
            texts, padding="longest", truncation=True, max_length=self.text_len, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def image_hidden_states(self, pixels: torch.Tensor) -> Sequence[torch.Tensor]:
        clip = self.tower.hf_model
        return clip.vision_model(pixel_values=pixels, output_hidden_states=True, **self._interpolate).hidden_states

    def text_condition(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        clip = self.tower.hf_model
        pooled = clip.text_model(input_ids=ids, attention_mask=mask).pooler_output  # end-of-text state
        return clip.text_projection(pooled)

    def extra_repr(self) -> str:
        return f"name_or_path={self.name_or_path!r}, train_encoders={not self.tower.frozen}"
