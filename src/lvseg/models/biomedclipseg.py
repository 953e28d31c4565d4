"""BiomedCLIPSeg and BiomedCLIPSeg-D (the medvlsm study): frozen BiomedCLIP towers + a CLIPSeg decoder.

The image tower (ViT-B/16, 224 px) and the text tower (PubMedBERT, 256 tokens) of BiomedCLIP
(:mod:`lvseg.models.biomedclip`, run with ``transformers`` alone) are frozen; a CLIPSeg decoder (64 wide,
3 layers, FiLM-conditioned on BiomedCLIP's 512-d text embedding) is trained. ``biomedclipseg`` starts the
decoder from random weights; ``biomedclipseg-d`` from the decoder of a CLIPSeg checkpoint
(``decoder_init``, default ``CIDAS/clipseg-rd64-refined``, whose widths match: 768-wide image tokens,
512-d condition, patch 16).

Which layers feed the decoder: the outputs of image blocks 3, 6 and 9 (0-based; ``hidden_states[4, 7,
10]``), the layers the CLIPSeg design taps (``extract_layers = [3, 6, 9]``, and the layers a CLIPSeg
decoder's weights were trained on, which matters for ``-d``). The study's code indexes a block list that
lacks the embedding entry with ``[i + 1]`` and so taps blocks 4, 7 and 10, one deeper than intended; that
is not copied. Its taps also come from ``torch.inference_mode``, which cannot be saved for backward, so it
only trained under fp16 autocast; here the frozen towers run under ``no_grad``, which trains in fp32 and in
mixed precision alike.

Text: BiomedBERT WordPiece ids, whitespace collapsed, truncated to ``text_len`` (256) and padded to the
longest prompt of the batch (the CLS embedding moves by at most ~2e-6 against padding to 256, as measured
for the medvlsm study's BiomedCLIP), with the attention mask. Images: [0, 1] at ``img_size`` (224), normalised with CLIP's statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lvseg.errors import LvsegError
from lvseg.models.base import PretrainedFolders
from lvseg.models.biomedclip import (
    BIOMEDCLIP_MEAN,
    BIOMEDCLIP_SHAPES,
    BIOMEDCLIP_STD,
    CONTEXT_LENGTH,
    DEFAULT_BIOMEDCLIP_DIR,
    BiomedCLIPTowers,
    biomedclip_files,
    load_biomedclip,
    load_biomedclip_tokenizer,
    read_open_clip_state_dict,
    shapes_from_state_dict,
)
from lvseg.models.clipseg import (
    CIDAS_CONFIG,
    DECODER_KEYS,
    DEFAULT_CLIPSEG,
    CLIPSegStyleModel,
    build_clipseg_decoder,
    clipseg_available,
    load_clipseg,
    load_clipseg_config,
    missing_clipseg_message,
)
from lvseg.models.pretrained import PretrainedTower, weight_source
from lvseg.models.registry import register_model

#: What a ``decoder_init`` checkpoint is, in messages.
DECODER_WHAT = "CLIPSeg decoder checkpoint"


def _architecture(folder: str) -> dict[str, Any]:
    """The tower shapes, without building weights: from the file when present, else the published ones."""
    try:
        weights, _ = biomedclip_files(folder)
    except LvsegError:
        return BIOMEDCLIP_SHAPES
    return shapes_from_state_dict(read_open_clip_state_dict(weights))


@register_model("biomedclipseg")
class BiomedCLIPSeg(CLIPSegStyleModel):
    """Frozen BiomedCLIP + a CLIPSeg decoder from random weights (see the module docstring).

    Options: ``biomedclip`` (folder with open_clip_pytorch_model.bin and vocab.txt), ``img_size`` (224),
    ``in_channels`` (3; 1 is replicated), ``text_len`` (256, BiomedCLIP's context), ``decoder_init`` (a CLIPSeg id or folder whose
    decoder weights start training; None: random), and the decoder geometry ``extract_layers``,
    ``reduce_dim``, ``decoder_heads``, ``decoder_mlp`` (default: CIDAS/clipseg-rd64-refined's, or
    ``decoder_init``'s), ``conditional_layer`` (the decoder layer FiLM conditions, 0) and
    ``complex_upsampling`` (CLIPSeg's "refined" conv + two transposed convolutions, True; False: one).
    Every geometry value is recorded in the config, so a checkpoint rebuilds its decoder without
    ``decoder_init``.
    """

    tower: PretrainedTower[BiomedCLIPTowers]

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        return {
            "biomedclip": str(pretrained("biomedclip")),
            "extract_layers": [0, 1, 2],
            "reduce_dim": 16,
            "decoder_heads": 2,
            "decoder_mlp": 32,
        }

    def __init__(
        self,
        *,
        biomedclip: str = DEFAULT_BIOMEDCLIP_DIR,
        img_size: int = 224,
        in_channels: int = 3,
        text_len: int | None = None,
        decoder_init: str | None = None,
        extract_layers: list[int] | None = None,
        reduce_dim: int | None = None,
        decoder_heads: int | None = None,
        decoder_mlp: int | None = None,
        conditional_layer: int | None = None,
        complex_upsampling: bool | None = None,
    ) -> None:
        super().__init__()
        given_path = Path(biomedclip).expanduser()
        # a relative folder is recorded absolute (checkpoints load from anywhere); "~/..." stays portable
        self.biomedclip = (
            str(given_path.resolve()) if not given_path.is_absolute() and given_path.exists() else biomedclip
        )
        biomedclip = self.biomedclip
        self.decoder_init = decoder_init
        source = weight_source()
        try:
            towers = load_biomedclip(biomedclip) if source != "nowhere" else BiomedCLIPTowers(_architecture(biomedclip))
        except LvsegError as error:
            raise LvsegError(self._with_missing_decoder(str(error), source)) from error
        shapes = towers.shapes
        self.tower = PretrainedTower(towers, str(Path(biomedclip).expanduser()), frozen=True)
        self.patch_size = int(shapes["vision"]["patch"])
        self.text_len = min(CONTEXT_LENGTH, shapes["text"]["positions"]) if text_len is None else int(text_len)
        if not 2 <= self.text_len <= shapes["text"]["positions"]:
            raise LvsegError(
                f"{self.model_name}: text_len must be between 2 and the text tower's "
                f"{shapes['text']['positions']} positions, got {text_len}"
            )

        init_weights = None
        geometry = {key: CIDAS_CONFIG[key] for key in DECODER_KEYS}
        if self.decoder_init is not None:
            if source == "pretrained":  # a checkpoint's own decoder weights replace these: read only to train
                clipseg = load_clipseg(self.decoder_init, option="decoder_init", what=DECODER_WHAT)
                config, init_weights = clipseg.config, clipseg.decoder.state_dict()
            else:
                config = load_clipseg_config(self.decoder_init, "decoder_init") if source == "nowhere" else None
            if config is not None:
                geometry = {key: getattr(config, key) for key in DECODER_KEYS}
        given = {
            "extract_layers": extract_layers,
            "reduce_dim": reduce_dim,
            "decoder_num_attention_heads": decoder_heads,
            "decoder_intermediate_size": decoder_mlp,
            "conditional_layer": conditional_layer,
            "use_complex_transposed_convolution": complex_upsampling,
        }
        if init_weights is not None:
            clash = [
                f"{name}={value}" for name, value in given.items() if value is not None and value != geometry[name]
            ]
            if clash:
                raise LvsegError(
                    f"{self.model_name}: {', '.join(clash)} contradict the decoder of "
                    f"'{self.decoder_init}' ({', '.join(f'{k}={geometry[k]}' for k in given)})"
                )
        geometry.update({name: value for name, value in given.items() if value is not None})
        self.extract_layers = [int(layer) for layer in geometry["extract_layers"]]
        self.geometry = geometry
        self._check_geometry(img_size, int(shapes["vision"]["layers"]))
        self.decoder = build_clipseg_decoder(shapes["vision"]["width"], self.patch_size, shapes["projection"], geometry)
        if init_weights is not None:
            expected = self.decoder.state_dict()
            misfits = [
                f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
                for key, value in init_weights.items()
                if key in expected and value.shape != expected[key].shape
            ]
            if misfits or set(expected) != set(init_weights):
                raise LvsegError(
                    f"{self.model_name}: the decoder of '{self.decoder_init}' does not fit BiomedCLIP's "
                    f"widths ({shapes['vision']['width']}-wide image tokens, {shapes['projection']}-d "
                    f"condition, patch {self.patch_size}): {'; '.join(misfits[:3]) or 'other keys'}"
                )
            self.decoder.load_state_dict(init_weights, strict=True)
        self._set_normalisation(BIOMEDCLIP_MEAN, BIOMEDCLIP_STD, in_channels)
        self._tokenizer: Any = None

    def _with_missing_decoder(self, message: str, source: str) -> str:
        """``message`` (BiomedCLIP is missing) plus the decoder checkpoint when that is missing too, so one error
        lists every download the model needs."""
        if self.decoder_init is None or source != "pretrained" or clipseg_available(self.decoder_init):
            return message
        decoder = missing_clipseg_message(self.decoder_init, option="decoder_init", what=DECODER_WHAT)
        return f"{message} {self.model_name} also needs its decoder's weights: {decoder}"

    def _finalize_config(self, config: dict[str, Any]) -> dict[str, Any]:
        geometry = self.geometry
        config.update(
            biomedclip=self.biomedclip,
            text_len=self.text_len,
            decoder_init=self.decoder_init,
            extract_layers=self.extract_layers,
            reduce_dim=int(geometry["reduce_dim"]),
            decoder_heads=int(geometry["decoder_num_attention_heads"]),
            decoder_mlp=int(geometry["decoder_intermediate_size"]),
            conditional_layer=int(geometry["conditional_layer"]),
            complex_upsampling=bool(geometry["use_complex_transposed_convolution"]),
        )
        return super()._finalize_config(config)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokenizer is None:
            self._tokenizer = load_biomedclip_tokenizer(self.biomedclip)
        encoded = self._tokenizer(
            texts, padding="longest", truncation=True, max_length=self.text_len, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def image_hidden_states(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.tower.hf_model.image_hidden_states(pixels)

    def text_condition(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.tower.hf_model.text_embedding(ids, mask)

    def extra_repr(self) -> str:
        return f"biomedclip={self.biomedclip!r}, decoder_init={self.decoder_init!r}"


@register_model("biomedclipseg-d")
class BiomedCLIPSegD(BiomedCLIPSeg):
    """BiomedCLIPSeg whose decoder starts from CIDAS/clipseg-rd64-refined's decoder (``decoder_init``)."""

    @classmethod
    def tiny_options(cls, pretrained: PretrainedFolders) -> dict[str, Any]:
        return {"biomedclip": str(pretrained("biomedclip")), "decoder_init": str(pretrained("clipseg"))}

    def __init__(
        self,
        *,
        biomedclip: str = DEFAULT_BIOMEDCLIP_DIR,
        img_size: int = 224,
        in_channels: int = 3,
        text_len: int | None = None,
        decoder_init: str | None = DEFAULT_CLIPSEG,
        extract_layers: list[int] | None = None,
        reduce_dim: int | None = None,
        decoder_heads: int | None = None,
        decoder_mlp: int | None = None,
        conditional_layer: int | None = None,
        complex_upsampling: bool | None = None,
    ) -> None:
        super().__init__(
            biomedclip=biomedclip,
            img_size=img_size,
            in_channels=in_channels,
            text_len=text_len,
            decoder_init=decoder_init,
            extract_layers=extract_layers,
            reduce_dim=reduce_dim,
            decoder_heads=decoder_heads,
            decoder_mlp=decoder_mlp,
            conditional_layer=conditional_layer,
            complex_upsampling=complex_upsampling,
        )
