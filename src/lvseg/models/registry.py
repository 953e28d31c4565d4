"""One registry for every segmentation network: ``create_model(name, **options)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from lvseg.errors import LvsegError

ModelT = TypeVar("ModelT", bound=type[nn.Module])

_REGISTRY: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[ModelT], ModelT]:
    """Class decorator that makes a network available as ``create_model(name)``.

    The class must accept keyword options only, expose ``config`` (a dict of those options,
    enough to rebuild it) and ``requires_text`` (False for image-only models), and implement
    ``forward(images: (B, C, H, W), text_features: (B, L, D) | None) -> logits (B, n_classes, H, W)``.
    """

    def decorator(cls: ModelT) -> ModelT:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **options: Any) -> nn.Module:
    """Build the registered network ``name`` with the given options."""
    if name not in _REGISTRY:
        raise LvsegError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _REGISTRY[name](**options)
