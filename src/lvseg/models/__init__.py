"""Segmentation networks behind one registry.

Importing this package registers every built-in network (``unet``, ``lvit``)::

    from lvseg.models import create_model
    net = create_model("lvit", img_size=224, text_len=10, text_dim=768)
"""

from lvseg.models import lvit as _lvit  # noqa: F401  (registers "lvit")
from lvseg.models import unet as _unet  # noqa: F401  (registers "unet")
from lvseg.models.lvit import LViT
from lvseg.models.registry import create_model, list_models, register_model
from lvseg.models.unet import UNet

__all__ = ["LViT", "UNet", "create_model", "list_models", "register_model"]
