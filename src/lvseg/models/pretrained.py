"""Pretrained sub-models of segmentation models (CLIP/CLIPSeg/BiomedCLIP towers) and where their weights come from.

A model built from a pretrained checkpoint (``CIDAS/clipseg-rd64-refined``, BiomedCLIP) gets its weights
from one of three places, chosen by the caller with :func:`weights_from`:

* ``"pretrained"`` (default): the published weights, read from their id or folder (training starts here);
* ``"checkpoint"``: an lvseg checkpoint is about to load the trained weights, so the frozen towers (which
  checkpoints never store) are read, and files needed only for other weights are not: a decoder's
  initialisation checkpoint (``biomedclipseg-d``) or the towers of a fully fine-tuned CLIPSeg (config only).
  A frozen CLIPSeg still reads its one published file, decoder included;
* ``"nowhere"``: architecture only (``lvseg info`` on the meta device): nothing is read but configs.

:class:`PretrainedTower` wraps a Hugging Face module: frozen (eval mode, no gradient, kept out of
``state_dict()`` and reloaded from its source) or fine-tuned (stored like any weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Generic, Literal, TypeVar

from torch import nn

from lvseg.text.huggingface import allow_missing_pretrained_weights, drop_pretrained_weights

#: OpenAI CLIP's image statistics (its preprocessing; CRIS's and BiomedCLIP's open_clip config).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

WeightSource = Literal["pretrained", "checkpoint", "nowhere"]

#: The wrapped module's type (each model calls its own tower's methods).
HFModule = TypeVar("HFModule", bound=nn.Module, covariant=True)
_WEIGHT_SOURCE: ContextVar[WeightSource] = ContextVar("lvseg_weight_source", default="pretrained")


@contextlib.contextmanager
def weights_from(source: WeightSource) -> Iterator[None]:
    """Within the block, models read pretrained weights as ``source`` says (see the module docstring)."""
    if source not in ("pretrained", "checkpoint", "nowhere"):
        raise ValueError(f"unknown weight source {source!r}")
    token = _WEIGHT_SOURCE.set(source)
    try:
        yield
    finally:
        _WEIGHT_SOURCE.reset(token)


def weight_source() -> WeightSource:
    """Where models being built now take their pretrained weights from (see :func:`weights_from`)."""
    return _WEIGHT_SOURCE.get()


class PretrainedTower(nn.Module, Generic[HFModule]):
    """A pretrained Hugging Face module (``hf_model``) inside a segmentation model.

    ``frozen=True``: ``requires_grad`` off, always in eval mode (no dropout), weights kept out of
    ``state_dict()`` and reloaded from ``source`` (listed by ``SegmentationModel.pretrained_sources``), and
    shared, not copied, by an EMA teacher. ``frozen=False``: an ordinary trained submodule.
    """

    def __init__(self, hf_model: HFModule, source: str, frozen: bool = True) -> None:
        super().__init__()
        self.hf_model: HFModule = hf_model
        self.frozen = bool(frozen)
        if self.frozen:
            self.pretrained_source = source
            hf_model.requires_grad_(False)
            hf_model.eval()
            # the same hooks as the frozen Hugging Face text encoders: weights under ``hf_model.`` are not stored
            self.register_state_dict_post_hook(drop_pretrained_weights)
            self.register_load_state_dict_post_hook(allow_missing_pretrained_weights)

    def train(self, mode: bool = True) -> PretrainedTower[HFModule]:
        super().train(mode)
        if self.frozen:
            self.hf_model.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.hf_model(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"frozen={self.frozen}"
