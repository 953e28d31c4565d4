"""Reading checkpoints saved by other code bases (official repositories, open_clip, Lightning): an I/O leaf module.

Nothing here knows a particular model. :func:`load_foreign` reads one file:

* ``.safetensors`` with safetensors (tensors only, no code by construction);
* anything else with ``torch.load(weights_only=True)``, torch's own restricted unpickler;
* a file that ``weights_only=True`` refuses because it pickles Python objects besides the tensors (a
  Lightning ``.ckpt``, whose ``hyper_parameters`` hold the loss module, ``functools.partial`` optimisers and
  the like) is re-read with :class:`InertUnpickler`, which never imports or calls code from the file;
* a TorchScript archive (OpenAI's ``RN50.pt``) is refused in one sentence that the caller completes with
  what to pass instead (``torchscript_advice``): its code cannot be read without running it.

Why :class:`InertUnpickler` is safe: a pickle runs code only through globals. Every global the file names
(the ``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ`` and ``EXT`` opcodes) is resolved by ``find_class``, and
only a resolved object is ever called (``REDUCE``, ``NEWOBJ``, ``INST``/``OBJ``) or given state (``BUILD``). Ours
resolves a short allow-list (:data:`TENSOR_GLOBALS`: torch's tensor-rebuild functions, ``OrderedDict``,
``torch.Size``, ``set``/``frozenset``, torch dtypes) to the real objects and every other name to an
:class:`InertGlobal` subclass made on the spot; it never imports a module, so a class the file names need not
exist, and nothing of it runs. Constructing, calling, ``BUILD``-ing or filling an inert object does nothing but
make another inert object. Tensor storages come from torch's own ``persistent_load`` (storage records of the
zip archive). The caller keeps only the tensors (:func:`foreign_tensors`, detached, so no pickled hook
travels with them) and drops the rest, inert objects included.
"""

from __future__ import annotations

import collections
import pickle
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

import torch
from torch import _utils as torch_utils

from lvseg.errors import CheckpointError, first_line

_DTYPES = (
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.complex128,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)

#: The globals :class:`InertUnpickler` resolves to the real objects: what a state dict of plain tensors needs
#: (tensor-rebuild functions called with storages, sizes and strides; containers with no behaviour of their
#: own). Nothing here imports, opens, evaluates or sets attributes chosen by the file.
TENSOR_GLOBALS: Mapping[tuple[str, str], Any] = types.MappingProxyType(
    {
        ("torch._utils", "_rebuild_tensor"): torch_utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch_utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch_utils._rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "Size"): torch.Size,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        **{("torch", str(dtype).removeprefix("torch.")): dtype for dtype in _DTYPES},
    }
)


class InertGlobal:
    """Stands for a global of a foreign pickle that is not in :data:`TENSOR_GLOBALS` (a class or function
    of the code that wrote the file). Building, calling, giving state to or filling one does nothing but
    make another inert object; ``foreign_name`` says what the file named (``module.name``)."""

    __slots__ = ()
    foreign_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertGlobal:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> InertGlobal:
        return InertGlobal()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert {self.foreign_name}>"


class InertUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves :data:`TENSOR_GLOBALS` and turns every other global into an
    :class:`InertGlobal` subclass (one per name), never importing anything (see the module docstring)."""

    def __init__(self, file: IO[bytes], **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._stubs: dict[tuple[str, str], type[InertGlobal]] = {}
        self.replaced: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else str(module)  # protocol 2 writes Python 2's name
        key = (module, str(name))
        if key in TENSOR_GLOBALS:
            return TENSOR_GLOBALS[key]
        if key not in self._stubs:
            self.replaced.add(".".join(key))
            namespace = {"__slots__": (), "__module__": __name__, "foreign_name": ".".join(key)}
            self._stubs[key] = type("Inert_" + key[1].replace(".", "_")[:60], (InertGlobal,), namespace)
        return self._stubs[key]


def _inert_load(file: IO[bytes], **kwargs: Any) -> Any:
    return InertUnpickler(file, **kwargs).load()


#: What ``torch.load(..., pickle_module=INERT_PICKLE)`` reads with (``Unpickler`` and ``load`` of this module).
INERT_PICKLE = types.ModuleType("lvseg_inert_pickle", "pickle with every non-tensor global made inert")
INERT_PICKLE.Unpickler = InertUnpickler  # type: ignore[attr-defined]
INERT_PICKLE.load = _inert_load  # type: ignore[attr-defined]
INERT_PICKLE.__version__ = pickle.format_version  # type: ignore[attr-defined]


def load_inert(source: str | Path | IO[bytes]) -> Any:
    """``torch.load`` with :class:`InertUnpickler`: the file's tensors, every other object inert. For files
    ``weights_only=True`` refuses; only its tensors should be kept (:func:`foreign_tensors`)."""
    return torch.load(source, map_location="cpu", weights_only=False, pickle_module=INERT_PICKLE)


def is_torchscript(path: str | Path) -> bool:
    """A zip archive holding TorchScript code (``<name>/code/`` or ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any("/code/" in name or name.endswith("/constants.pkl") for name in names)


def load_foreign(path: str | Path, what: str, torchscript_advice: str = "") -> Any:
    """The object a foreign checkpoint file holds (see the module docstring for how each kind is read).

    ``what`` names the expected file in errors (e.g. "official LViT .pth checkpoint"); ``torchscript_advice``
    ends the sentence refusing a TorchScript archive (what to pass instead). Raises :class:`CheckpointError`
    naming the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(
                f"{path}: not a readable safetensors file (expected an {what}): {first_line(error)}"
            ) from None
    if is_torchscript(path):
        advice = torchscript_advice or "save its state_dict with torch.save where it was made and pass that file"
        raise CheckpointError(
            f"{path} is a TorchScript archive, whose code cannot be read with weights_only=True: {advice}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # Python objects besides tensors (a Lightning .ckpt): read them inert
        pass
    except Exception as error:  # torch.load raises many types (IndexError, RuntimeError, EOFError, ...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (expected an {what}): {first_line(error, 200)}"
        ) from None
    try:
        return load_inert(path)
    except Exception as error:  # a damaged pickle: any error of pickle or of a rebuild function
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (expected an {what}): {first_line(error, 200)}"
        ) from None


def foreign_tensors(loaded: Any, path: str | Path, what: str, example_key: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint, under ``state_dict`` or bare (every other entry dropped; keys as
    saved, tensors detached). Raises :class:`CheckpointError` naming ``path`` when there are none."""
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: expected a dict (an {what}), got {type(loaded).__name__}")
    nested = loaded.get("state_dict")
    state = nested if isinstance(nested, Mapping) else loaded
    if not state:
        raise CheckpointError(f"{path}: expected a non-empty 'state_dict' of tensors")
    tensors = {str(key): value.detach() for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: expected a state_dict of tensors under keys like {example_key}, found keys "
            f"{', '.join(map(str, list(state)[:6]))}"
        )
    return tensors


def read_foreign_state_dict(
    path: str | Path, what: str, example_key: str, torchscript_advice: str = ""
) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint saved by another code base (:func:`load_foreign`, :func:`foreign_tensors`):
    under ``state_dict`` or bare, ``module.`` (DataParallel) prefixes removed.

    ``what`` names the expected file in errors (e.g. "official LViT .pth checkpoint"), ``example_key`` a key
    it should hold. Raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected an {what})")
    tensors = foreign_tensors(load_foreign(path, what, torchscript_advice), path, what, example_key)
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors
