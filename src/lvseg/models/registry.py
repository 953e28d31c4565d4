"""One registry for every segmentation model: ``create_model(name, **options)``, ``list_models()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from lvseg.errors import LvsegError
from lvseg.models.base import SegmentationModel

ModelT = TypeVar("ModelT", bound=type[SegmentationModel])

_REGISTRY: dict[str, type[SegmentationModel]] = {}


def register_model(name: str) -> Callable[[ModelT], ModelT]:
    """Class decorator that makes a :class:`SegmentationModel` subclass available as ``create_model(name)``.

    Registering (the module is imported by :mod:`lvseg.models`) is all a new model needs: training,
    evaluation, prediction, the web app, ``lvseg info``, ``benchmarks/compare.py`` and the contract test
    (tests/test_model_contract.py) pick it up.
    """

    def decorator(cls: ModelT) -> ModelT:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if not issubclass(cls, SegmentationModel):
            raise TypeError(f"model {name!r} must subclass lvseg.models.SegmentationModel")
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plug-ins that register temporarily)."""
    _REGISTRY.pop(name, None)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> type[SegmentationModel]:
    if name not in _REGISTRY:
        raise LvsegError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_options(name: str) -> list[str]:
    """The keyword options ``create_model(name, ...)`` takes (``texts`` included)."""
    return [p for p in inspect.signature(model_class(name).__init__).parameters if p != "self"]


def create_model(name: str, texts: Any = None, **options: Any) -> SegmentationModel:
    """Build the registered model ``name``; ``options`` are its constructor's keyword options (a model's
    ``config`` rebuilds it) plus ``texts`` (training reports, for a ``learned`` text encoder; ignored by
    models that build no vocabulary).

    An option the model does not take is a :class:`LvsegError` naming it and the accepted ones.
    """
    cls = model_class(name)
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise LvsegError(f"model {name!r} does not take option(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(accepted)}")
    if texts is not None and "texts" in accepted:
        options["texts"] = texts
    return cls(**options)
