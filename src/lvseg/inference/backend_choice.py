"""The inference backends as a registry of declared facts, and the choice of ``auto`` (no torch import: the CLI
reads the ``--backend`` help text from here).

Each backend is a :class:`BackendSpec`: its name, a short summary for the help text, and its capabilities
(whether it runs the network exported to ONNX, whether it runs on the CPU only, its precision, the package its
runtime comes from, and whether ``auto`` may choose it). The names, the ``--backend`` help text, the check of a
name, the refusal of a CPU-only backend on another device and the choice of ``auto`` are all read off the
registry; :mod:`lvseg.inference.backends` registers the runner that builds each backend against these names.

A new backend is one :func:`register_backend` call here (or in a plug-in) plus one
:func:`lvseg.inference.backends.register_runner` builder.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lvseg.errors import LvsegError

if TYPE_CHECKING:
    from lvseg.backend_record import BackendRecord

#: The name that asks for the fastest backend passing the accuracy guard (not a backend of its own).
AUTO = "auto"
#: How to install the optional runtimes (ONNX Runtime, OpenVINO).
DEPLOY_EXTRA = "pip install 'lvseg[deploy]'"


@dataclass(frozen=True)
class BackendSpec:
    """What one inference backend is and can do.

    ``name``: the ``--backend`` value. ``summary``: what the help text says of it, e.g. ``"torch.compile"``.
    ``exports``: it runs the network exported to ONNX (it needs an example batch to export, or the graph of an
    export folder). ``cpu_only``: it runs on the CPU only. ``precision``: what it computes in (``"fp32"``,
    ``"bf16"``; a bf16 backend computes in fp32 where the hardware has no bf16). ``runtime``: the Python package it
    needs beyond torch (None: PyTorch itself). ``graph_files``: for an exporting backend, the files of an export
    folder it can run, preferred first. ``auto_rank``: where ``auto`` considers it (lower first; None: ``auto``
    never chooses it, e.g. because it did not pass the accuracy guard). ``tuned``: it runs only as
    ``lvseg tune-backend`` set it up for a checkpoint (the modules kept in fp32, a quantised graph), so it needs
    the checkpoint's backend record; ``auto`` chooses it from that record alone.
    """

    name: str
    summary: str
    exports: bool = False
    cpu_only: bool = False
    precision: str = "fp32"
    runtime: str | None = None
    graph_files: tuple[str, ...] = ()
    auto_rank: int | None = None
    tuned: bool = False

    def available(self) -> bool:
        """Whether its runtime is installed (always for PyTorch backends)."""
        return self.runtime is None or importlib.util.find_spec(self.runtime) is not None

    def runs_on(self, device_type: str) -> bool:
        """Whether it can run on a device of type ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
        return device_type == "cpu" or not self.cpu_only


_REGISTRY: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add ``spec`` to the registry (its runner is registered in :mod:`lvseg.inference.backends`); returns it.

    Raises ``ValueError`` for a name already registered, the reserved name ``auto`` or an exporting backend
    without ``graph_files``.
    """
    if spec.name == AUTO or spec.name in _REGISTRY:
        raise ValueError(f"backend name {spec.name!r} is taken; expected a new name other than {AUTO!r}")
    if spec.exports and not spec.graph_files:
        raise ValueError(f"backend {spec.name!r} exports the network but names no graph_files it runs")
    _REGISTRY[spec.name] = spec
    return spec


def backend_specs() -> tuple[BackendSpec, ...]:
    """Every registered backend, in registration order."""
    return tuple(_REGISTRY.values())


def backend_names() -> tuple[str, ...]:
    """The values ``--backend`` accepts: ``auto``, then every registered backend."""
    return (AUTO, *_REGISTRY)


def backend_spec(name: str) -> BackendSpec:
    """The spec of backend ``name``; :class:`LvsegError` naming it and the accepted names when unknown."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise LvsegError(f"unknown backend {name!r}; expected one of {', '.join(backend_names())}")
    return spec


def _ranked() -> list[BackendSpec]:
    """The backends ``auto`` may choose, in the order it considers them (lowest ``auto_rank`` first)."""
    ranked = [
        (spec.auto_rank, index, spec) for index, spec in enumerate(_REGISTRY.values()) if spec.auto_rank is not None
    ]
    return [spec for _, _, spec in sorted(ranked, key=lambda item: (item[0], item[1]))]


def exporting_backends() -> tuple[str, ...]:
    """The backends that run an exported network, those whose runtime ``auto`` prefers first (registration
    order within one runtime), e.g. ``("openvino", "openvino-bf16", "onnx")``."""
    runtimes = list(dict.fromkeys(spec.runtime for spec in _ranked() if spec.exports))
    specs = [spec for spec in _REGISTRY.values() if spec.exports]
    order = {runtime: index for index, runtime in enumerate(runtimes)}
    return tuple(spec.name for spec in sorted(specs, key=lambda spec: order.get(spec.runtime, len(order))))


def _device_type(device: str) -> str:
    """``"cuda"`` for ``"cuda:1"``: the type of a device written as torch writes it."""
    return device.partition(":")[0]


def auto_backend(
    device: str,
    expected_images: int | None = None,
    record: BackendRecord | None = None,
    exporting_only: bool = False,
) -> str:
    """What ``auto`` stands for on ``device`` (``"cpu"``, ``"cuda:0"``, ...).

    With a checkpoint's ``record`` (:class:`~lvseg.backend_record.BackendRecord`) measured on this
    kind of hardware: the fastest backend that passed that checkpoint's accuracy guard and is installed here.
    Without one (or one measured elsewhere): the backend of lowest ``auto_rank`` that runs there and is
    installed. ``expected_images``: how many images the caller will segment (None: unknown, many); for a single
    image the exporting backends are passed over, as exporting the network (seconds) costs more than it saves
    (about 0.1 s an image). ``exporting_only``: only backends that run an exported network (an export folder).
    """
    single = expected_images is not None and expected_images <= 1
    kind = _device_type(device)

    def usable(spec: BackendSpec) -> bool:
        return (
            spec.runs_on(kind)
            and spec.available()
            and not (spec.exports and single)
            and (spec.exports or not exporting_only)
        )

    if record is not None and record.applies_here(device):
        for name in record.passed():
            spec = _REGISTRY.get(name)
            if spec is not None and usable(spec):
                return spec.name
    for spec in _ranked():
        if usable(spec) and not spec.tuned:
            return spec.name
    raise LvsegError(
        f"no inference backend that auto may choose runs on {device!r}; expected one of {', '.join(_REGISTRY)} by name"
    )


def check_backend(name: str, device: str) -> BackendSpec:
    """The spec of backend ``name`` (not ``auto``) after checking that it runs on ``device`` (``"cpu"``,
    ``"cuda:0"``, ...); :class:`LvsegError` when the name is unknown or the backend runs on the CPU only."""
    spec = backend_spec(name)
    if not spec.runs_on(_device_type(device)):
        others = "/".join(other.name for other in _REGISTRY.values() if other.runs_on(_device_type(device)))
        raise LvsegError(f"backend {name!r} runs on the CPU; use --device cpu, or --backend {others} on {device}")
    return spec


def choose_backend(
    name: str,
    device: str,
    expected_images: int | None = None,
    record: BackendRecord | None = None,
    exporting_only: bool = False,
) -> str:
    """The backend ``name`` stands for on ``device`` (``"cpu"``, ``"cuda:0"``, ...): ``auto`` resolved for
    ``expected_images`` and the checkpoint's backend ``record`` (:func:`auto_backend`), any other name checked
    (:func:`check_backend`)."""
    if name == AUTO:
        return auto_backend(device, expected_images, record, exporting_only)
    return check_backend(name, device).name


def backend_help() -> str:
    """The help line of every ``--backend`` option (predict, evaluate, serve), written from the registry."""
    described = [f"{spec.name} ({spec.summary})" if spec.summary else spec.name for spec in _REGISTRY.values()]
    ranked = _ranked()
    optional = [spec.name for spec in ranked if spec.runtime is not None]
    fallback = next((spec.name for spec in ranked if spec.runtime is None), "eager")
    return (
        f"How the network runs: {', '.join(described)}, or {AUTO} (the fastest that passed the checkpoint's own "
        "accuracy guard, recorded by training or `lvseg tune-backend`; without a record "
        f"{', else '.join(optional)}, when installed; {fallback} on CUDA and for a single --image, where "
        "exporting costs more than it saves)."
    )


# The built-in backends. auto_rank (the choice for checkpoints without a backend record): the fastest that passed
# the accuracy guard on the trained demo checkpoints (benchmarks/RESULTS.md) first, eager last; the bf16 paths
# were faster but flipped boundary pixels of small lesions (lowest Dice 0.977), so auto chooses them only from a
# checkpoint's own record.
register_backend(BackendSpec("eager", summary="fp32 reference", auto_rank=100))
register_backend(BackendSpec("bf16", summary="channels-last + bf16 where the CPU/GPU has it", precision="bf16"))
register_backend(BackendSpec("compile", summary="torch.compile", precision="bf16"))
register_backend(
    BackendSpec(
        "bf16-mixed",
        summary="bf16 with the modules the checkpoint's tuning found sensitive kept in fp32",
        precision="bf16",
        tuned=True,
    )
)
register_backend(
    BackendSpec(
        "onnx",
        summary="ONNX Runtime",
        exports=True,
        cpu_only=True,
        runtime="onnxruntime",
        graph_files=("network.onnx",),
        auto_rank=1,
    )
)
register_backend(
    BackendSpec(
        "openvino",
        summary="fp32",
        exports=True,
        cpu_only=True,
        runtime="openvino",
        graph_files=("network.xml", "network.onnx"),
        auto_rank=0,
    )
)
register_backend(
    BackendSpec(
        "openvino-bf16",
        summary="",
        exports=True,
        cpu_only=True,
        precision="bf16",
        runtime="openvino",
        graph_files=("network.xml", "network.onnx"),
    )
)

register_backend(
    BackendSpec(
        "openvino-int8",
        summary="int8 quantised by NNCF for the checkpoint, sensitive operations kept in fp32",
        exports=True,
        cpu_only=True,
        precision="int8",
        runtime="openvino",
        graph_files=("network-int8.xml",),
        tuned=True,
    )
)

#: The help line of ``--checkpoint`` where an export folder also works (predict, evaluate, serve).
CHECKPOINT_HELP = "An lvseg checkpoint (.ckpt), or a folder written by `lvseg export` (runs with onnx or openvino)."


def __getattr__(name: str) -> Any:
    """``BACKENDS``, ``EXPORTING_BACKENDS`` and ``BACKEND_HELP``, read off the registry when asked for (so a
    backend registered later is in them too)."""
    if name == "BACKENDS":
        return backend_names()
    if name == "EXPORTING_BACKENDS":
        return tuple(spec.name for spec in _REGISTRY.values() if spec.exports)
    if name == "BACKEND_HELP":
        return backend_help()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
