"""Official-checkpoint importers, collected from the models that name one (plug-in models included).

``list_importers()`` gives {family: importer}; ``lvseg import-<family>`` verbs and the checkpoint loader's
"this looks like an official X checkpoint" hints are generated from it. This package sits above
:mod:`lvseg.models` and :mod:`lvseg.checkpoint` (an importer builds the model and writes the checkpoint).
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from typing import Any

from lvseg.errors import LvsegError
from lvseg.importers.base import ImporterOption, ImportResult, OfficialImporter

__all__ = ["ImportResult", "ImporterOption", "OfficialImporter", "list_importers", "official_checkpoint_hint"]


def _load(reference: str, model: str) -> OfficialImporter:
    module_name, _, class_name = reference.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise LvsegError(f"model {model!r} names the importer {reference!r}, which cannot be loaded: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, OfficialImporter)):
        raise LvsegError(f"model {model!r} names the importer {reference!r}, which is not an OfficialImporter")
    if cls.model_name != model:
        raise LvsegError(f"model {model!r} names the importer {reference!r}, which converts '{cls.model_name}' models")
    return cls()


def list_importers() -> dict[str, OfficialImporter]:
    """{family: importer} for every registered model that names an importer, by family name."""
    from lvseg.models import list_models, model_class

    importers: dict[str, OfficialImporter] = {}
    for name in list_models():
        reference = model_class(name).importer
        if reference:
            importer = _load(reference, name)
            importers[importer.family] = importer
    return dict(sorted(importers.items()))


def official_checkpoint_hint(state_dict: Mapping[str, Any] | Collection[str]) -> str:
    """'it looks like an official X checkpoint: convert it first with `lvseg import-x`' for a state dict an
    importer recognises, else ''."""
    keys = [str(key)[len("module.") :] if str(key).startswith("module.") else str(key) for key in state_dict]
    for importer in list_importers().values():
        if importer.recognises(keys):
            return importer.hint()
    return ""
