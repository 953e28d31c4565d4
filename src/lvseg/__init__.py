"""lvseg: language-guided medical image segmentation.

Quick start::

    import lvseg
    segmenter = lvseg.load_model("runs/demo/lvit/best.ckpt")
    result = segmenter.predict("xray.png", "Unilateral pulmonary infection, one infected area, lower left lung.")
    result.mask          # (H, W) uint8 {0, 1} at the image's resolution
    result.probability   # (H, W) float32 in [0, 1]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["__version__", "create_model", "load_model", "LvsegError"]

from lvseg.errors import LvsegError

if TYPE_CHECKING:  # pragma: no cover
    from lvseg.inference import Segmenter


def create_model(name: str, **options: Any):
    """Build a registered segmentation network; see :func:`lvseg.models.create_model`."""
    from lvseg.models import create_model as _create_model

    return _create_model(name, **options)


def load_model(
    checkpoint: str, device: str | None = None, backend: str | None = None, expected_images: int | None = None
) -> Segmenter:
    """Load a trained checkpoint, or a folder written by ``lvseg export``, for prediction; see
    :func:`lvseg.inference.load_model` (``backend``: eager (a checkpoint's default), bf16, compile, onnx, openvino,
    openvino-bf16 or auto (an export folder's default); :mod:`lvseg.inference.backends`; ``expected_images=1``:
    ``auto`` runs a checkpoint eager, as exporting costs more than it saves for one image)."""
    from lvseg.inference import load_model as _load_model

    return _load_model(checkpoint, device=device, backend=backend, expected_images=expected_images)
