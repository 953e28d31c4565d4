"""A checkpoint's own accuracy guard: which inference backends passed it on that checkpoint's images, and how
fast each ran (no torch import: ``auto`` reads it in :mod:`lvseg.inference.backend_choice`).

The guard is one rule for every backend (:data:`GUARD_RULE`): the backend's masks against fp32 eager's on every
image of a set (the validation split at the end of training, or the ``--data`` split of ``lvseg tune-backend``),
per-image Dice at least :data:`GUARD_MIN_DICE`. Whether bf16 flips the boundary pixels of small lesions depends
on the checkpoint (demo checkpoints of 64 px lesions fail it, MoNuSeg checkpoints may pass), so the result is
measured per checkpoint and stored with it (``checkpoint["lvseg"]["backends"]``, an export folder's manifest
``backend_record``); ``auto`` then picks the fastest backend that passed *for that checkpoint* on the same kind
of hardware (:meth:`BackendRecord.applies_here`). Checkpoints without a record keep the registry's default choice.

A trial may carry what its backend needs to run the same way again: ``fp32_modules`` (the modules the
``bf16-mixed`` path keeps in fp32) and, for ``openvino-int8``, the quantised graph itself (stored beside the
record, see :mod:`lvseg.inference.tuning`).
"""

from __future__ import annotations

import datetime
import functools
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lvseg.errors import CheckpointError

#: The lowest per-image mask Dice against fp32 eager a backend may reach on every image and pass.
GUARD_MIN_DICE = 0.99
GUARD_RULE = f"per-image mask Dice against fp32 eager >= {GUARD_MIN_DICE} on every image"
RECORD_VERSION = 1


@functools.lru_cache(maxsize=1)
def cpu_description() -> dict[str, Any]:
    """This CPU's model name and the instruction sets the fast paths use (AVX-512 bf16/VNNI, AMX), from
    ``/proc/cpuinfo`` where there is one (``platform.processor()`` elsewhere)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    wanted = ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512_fp16")
    return {"cpu": name, "features": [flag for flag in wanted if flag in flags]}


def hardware_description(device: str) -> dict[str, Any]:
    """What a record's speeds and precisions depend on: the device type and, on a CPU, its model and fast
    instruction sets (on CUDA the caller adds the GPU's name)."""
    kind = device.partition(":")[0]
    return {"device": kind, **(cpu_description() if kind == "cpu" else {})}


@dataclass(frozen=True)
class BackendTrial:
    """One backend measured on one checkpoint.

    ``passed``: it met :data:`GUARD_RULE` (eager, the reference, always does). ``min_dice``: the lowest
    per-image Dice against eager; ``max_abs_diff``: the largest probability difference; ``latency_ms``: batch-1
    time of the network (median); ``error``: why it could not run (then it did not pass). ``fp32_modules``:
    modules kept in fp32 (``bf16-mixed``); ``details``: anything else the backend reports (e.g. int8:
    operations kept in floating point, calibration images).
    """

    backend: str
    passed: bool
    min_dice: float | None = None
    max_abs_diff: float | None = None
    latency_ms: float | None = None
    error: str | None = None
    fp32_modules: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fp32_modules"] = list(self.fp32_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendTrial:
        return cls(
            backend=str(data["backend"]),
            passed=bool(data["passed"]),
            min_dice=_optional_float(data.get("min_dice")),
            max_abs_diff=_optional_float(data.get("max_abs_diff")),
            latency_ms=_optional_float(data.get("latency_ms")),
            error=data.get("error"),
            fp32_modules=tuple(str(name) for name in data.get("fp32_modules") or ()),
            details=dict(data.get("details") or {}),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class BackendRecord:
    """The accuracy guard and speed of every backend tried on one checkpoint (see the module docstring).

    ``images``: how many images the guard ran on and ``data``: which (e.g. "validation split of 'data/'");
    ``hardware``: :func:`hardware_description` of the machine; ``measured_at``: ISO date and time (UTC).
    """

    trials: tuple[BackendTrial, ...]
    images: int
    data: str
    hardware: dict[str, Any]
    measured_at: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    rule: str = GUARD_RULE
    #: What a tuned backend runs, by backend name and file name (e.g. ``{"openvino-int8": {"network-int8.xml":
    #: b"...", "network-int8.bin": b"..."}}``): stored beside the record (a checkpoint's
    #: ``checkpoint["lvseg"]["backend_graphs"]``, an export folder's files), not in :meth:`to_dict`.
    graphs: dict[str, dict[str, bytes]] = field(default_factory=dict, compare=False, repr=False)

    def trial(self, backend: str) -> BackendTrial | None:
        return next((trial for trial in self.trials if trial.backend == backend), None)

    def passed(self) -> list[str]:
        """The backends that passed, fastest first (unmeasured speeds last)."""
        passing = [trial for trial in self.trials if trial.passed]
        return [
            trial.backend
            for trial in sorted(passing, key=lambda t: float("inf") if t.latency_ms is None else t.latency_ms)
        ]

    def applies_here(self, device: str) -> bool:
        """Whether the record was measured on this kind of hardware (same device type, CPU model and fast
        instruction sets): precisions and speeds do not carry over to other hardware."""
        here = hardware_description(device)
        return all(self.hardware.get(key) == value for key, value in here.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "rule": self.rule,
            "images": self.images,
            "data": self.data,
            "hardware": dict(self.hardware),
            "measured_at": self.measured_at,
            "trials": [trial.to_dict() for trial in self.trials],
        }

    @classmethod
    def from_dict(
        cls, data: Any, source: str = "checkpoint", graphs: dict[str, dict[str, bytes]] | None = None
    ) -> BackendRecord | None:
        """The record stored as ``data`` (None when there is none), with the tuned backends' ``graphs``;
        :class:`CheckpointError` naming ``source`` when it is damaged."""
        if data is None:
            return None
        try:
            if int(data["version"]) != RECORD_VERSION:
                raise ValueError(f"version {data['version']!r}, expected {RECORD_VERSION}")
            return cls(
                trials=tuple(BackendTrial.from_dict(item) for item in data["trials"]),
                images=int(data["images"]),
                data=str(data["data"]),
                hardware=dict(data["hardware"]),
                measured_at=str(data["measured_at"]),
                rule=str(data.get("rule", GUARD_RULE)),
                graphs={str(name): dict(files) for name, files in (graphs or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{source} has a damaged backend record ({error}); run `lvseg tune-backend` on it again"
            ) from None

    def summary_rows(self) -> list[dict[str, str]]:
        """One row per trial, for tables (``lvseg info``, ``lvseg tune-backend``)."""
        rows = []
        for trial in self.trials:
            rows.append(
                {
                    "backend": trial.backend,
                    "guard": "reference" if trial.backend == "eager" else ("passed" if trial.passed else "failed"),
                    "min Dice": "-" if trial.min_dice is None else f"{trial.min_dice:.4f}",
                    "max prob diff": "-" if trial.max_abs_diff is None else f"{trial.max_abs_diff:.1e}",
                    "batch-1 ms": "-" if trial.latency_ms is None else f"{trial.latency_ms:.1f}",
                    "notes": trial.error
                    or (f"fp32: {', '.join(trial.fp32_modules)}" if trial.fp32_modules else "")
                    or ", ".join(
                        f"{key} {value}" for key, value in trial.details.items() if not isinstance(value, list)
                    ),
                }
            )
        return rows
