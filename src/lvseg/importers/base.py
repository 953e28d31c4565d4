"""The contract of an official-checkpoint importer: :class:`OfficialImporter`.

An importer converts a checkpoint saved by a model family's official code into an lvseg checkpoint. It
declares, as class attributes, what the command line needs to build its verb (``lvseg import-<family>``,
its help, its options) and recognises such a checkpoint by its keys, so that the checkpoint loader can
tell a user who hands one to ``lvseg predict`` which verb converts it. A model names its importer
(``SegmentationModel.importer = "package.module:ClassName"``); :func:`lvseg.importers.list_importers`
collects them from the model registry, plug-in models included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lvseg.errors import CheckpointError
from lvseg.foreign import read_foreign_state_dict


@dataclass(frozen=True)
class ImporterOption:
    """One option of an importer's verb: ``--<name with dashes>`` (or ``flag``), parsed as ``type``."""

    name: str
    help: str
    default: Any = None
    type: type = str
    flag: str | None = None
    minimum: int | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass
class ImportResult:
    """What an import did: ``dropped`` lists the official keys left out, by reason; ``notes`` are sentences
    the command line prints after the summary."""

    source: Path
    output: Path
    model_options: dict[str, Any]
    dropped: dict[str, list[str]]
    n_parameters: int
    notes: list[str] = field(default_factory=list)

    @property
    def dropped_keys(self) -> list[str]:
        """Every dropped official key, whatever the reason."""
        return [key for keys in self.dropped.values() for key in keys]


def check_finite(source: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse converted weights holding NaN or infinity, naming ``source`` and the keys."""
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(f"{source}: non-finite values in {', '.join(bad[:8])}")


class OfficialImporter(ABC):
    """Converts the official code's checkpoints of one model family (subclass and declare the class
    attributes; implement :meth:`recognises` and :meth:`convert`)."""

    #: The verb is ``lvseg import-<family>``.
    family: ClassVar[str]
    #: The registered model the converted checkpoint holds.
    model_name: ClassVar[str]
    #: What the official file is, for help texts and errors, e.g. "official LViT .pth checkpoint".
    source_description: ClassVar[str]
    #: A key such a file holds (after any ``module.`` prefix), quoted when a file holds none of them.
    example_key: ClassVar[str]
    #: One line for ``lvseg import-<family> --help``.
    summary: ClassVar[str]
    #: The verb's options besides the source file and ``--out``; :meth:`convert` takes them by name.
    options: ClassVar[tuple[ImporterOption, ...]] = ()

    @abstractmethod
    def recognises(self, keys: Collection[str]) -> bool:
        """Whether a state dict with these keys (``module.`` prefixes removed) was saved by the official code."""

    @abstractmethod
    def convert(self, source: Path, out: Path, **options: Any) -> ImportResult:
        """Read ``source``, convert it, load it strictly into the lvseg model and write ``out`` atomically.
        Raises :class:`lvseg.errors.CheckpointError` naming the file when it does not convert."""

    def result_lines(self, result: ImportResult) -> list[str]:
        """What ``lvseg import-<family>`` prints about the dropped keys (default: per reason, their
        modules)."""
        lines = []
        for reason, keys in result.dropped.items():
            modules = sorted({".".join(key.split(".")[:2]) for key in keys})
            lines.append(f"dropped {len(keys)} {reason} official keys: {', '.join(modules)}")
        return lines

    def read(self, source: str | Path) -> dict[str, torch.Tensor]:
        """The tensors of an official file (:func:`lvseg.foreign.read_foreign_state_dict`: ``weights_only=True``,
        pickled Python objects besides the tensors read inert and dropped; ``module.`` prefixes removed)."""
        return read_foreign_state_dict(source, self.source_description, self.example_key)

    @property
    def verb(self) -> str:
        return f"import-{self.family}"

    def hint(self) -> str:
        """The sentence the checkpoint loader adds for a file this importer recognises."""
        return f"it looks like an {self.source_description}: convert it first with `lvseg {self.verb}`"
