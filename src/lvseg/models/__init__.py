"""Segmentation models behind one registry and one contract (:class:`SegmentationModel`).

Importing this package registers every built-in model (``unet``, ``lvit``, ``c2fvl``, ``reclmis``, ``clipseg``,
``biomedclipseg``, ``biomedclipseg-d``, ``cris``)::

    from lvseg.models import create_model, list_models
    net = create_model("lvit", img_size=224, text_encoder="learned", texts=train_reports)
    probabilities = net.eval().predict_proba(images, reports)       # (B, 1, S, S)
"""

from lvseg.models import biomedclipseg as _biomedclipseg  # noqa: F401  (registers "biomedclipseg", "-d")
from lvseg.models import c2fvl as _c2fvl  # noqa: F401  (registers "c2fvl")
from lvseg.models import clipseg as _clipseg  # noqa: F401  (registers "clipseg")
from lvseg.models import cris as _cris  # noqa: F401  (registers "cris")
from lvseg.models import lvit as _lvit  # noqa: F401  (registers "lvit")
from lvseg.models import reclmis as _reclmis  # noqa: F401  (registers "reclmis")
from lvseg.models import unet as _unet  # noqa: F401  (registers "unet")
from lvseg.models.base import ModelOutput, SegmentationModel
from lvseg.models.lvit import LViT
from lvseg.models.registry import (
    create_model,
    list_models,
    model_class,
    model_options,
    register_model,
    unregister_model,
)
from lvseg.models.unet import UNet

__all__ = [
    "LViT",
    "ModelOutput",
    "SegmentationModel",
    "UNet",
    "create_model",
    "list_models",
    "model_class",
    "model_options",
    "register_model",
    "unregister_model",
]
