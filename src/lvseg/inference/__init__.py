"""Prediction: ``load_model(checkpoint) -> Segmenter`` with ``.predict(image, text)``, and folder prediction.

The names load on first use, so that ``lvseg.inference.backend_choice`` and ``lvseg.inference.threshold`` (help
texts and checks the CLI reads) import without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lvseg.inference.loading import load_model
    from lvseg.inference.segmenter import Prediction, Segmenter, resolve_device, upsample_probability

__all__ = ["Prediction", "Segmenter", "load_model", "resolve_device", "upsample_probability"]


def __getattr__(name: str) -> Any:
    """``load_model``, ``Segmenter``, ...: imported from their module when first asked for."""
    if name == "load_model":
        from lvseg.inference.loading import load_model

        return load_model
    if name in __all__:
        from lvseg.inference import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
