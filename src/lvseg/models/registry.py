"""One registry for every segmentation model: ``create_model(name, **options)``, ``list_models()``.

Built-in models register when :mod:`lvseg.models` is imported; models of other packages register through
the entry-point group ``lvseg.models`` (``[project.entry-points."lvseg.models"] mynet = "mypkg.mynet:MyNet"``),
loaded the first time the registry is read, so they reach every command.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from lvseg.errors import LvsegError
from lvseg.models.base import SegmentationModel

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=type[SegmentationModel])

#: The entry-point group through which other packages register models.
ENTRY_POINT_GROUP = "lvseg.models"

_REGISTRY: dict[str, type[SegmentationModel]] = {}
_loaded_entry_points: set[str] = set()
_plugins_scanned = False


def load_plugins(rescan: bool = False) -> None:
    """Import the models that installed packages declare in the ``lvseg.models`` entry-point group (once
    each). An entry point names a module (importing it registers its models) or a model class (registered
    under the entry point's name unless it registered itself). A plug-in that fails to load is logged and
    skipped: it must not take the built-in models down with it. The installed packages are scanned once per
    process (``rescan=True`` scans again, e.g. after installing one)."""
    global _plugins_scanned
    if _plugins_scanned and not rescan:
        return
    _plugins_scanned = True
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        key = f"{entry_point.name}={entry_point.value}"
        if key in _loaded_entry_points:
            continue
        _loaded_entry_points.add(key)
        try:
            loaded = entry_point.load()
        except Exception as error:  # a broken third-party package raises anything on import
            logger.warning(
                "lvseg plug-in %r (%s) could not be loaded and is skipped: %s: %s",
                entry_point.name,
                entry_point.value,
                type(error).__name__,
                error,
            )
            continue
        if isinstance(loaded, type) and issubclass(loaded, SegmentationModel) and loaded not in _REGISTRY.values():
            register_model(entry_point.name)(loaded)


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
    load_plugins()
    return sorted(_REGISTRY)


def model_class(name: str) -> type[SegmentationModel]:
    if name not in _REGISTRY:
        load_plugins()
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
        raise LvsegError(f"model {name!r} does not take option(s) {', '.join(unknown)}; it takes {', '.join(accepted)}")
    if texts is not None and "texts" in accepted:
        options["texts"] = texts
    return cls(**options)
