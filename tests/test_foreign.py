"""Reading other code bases' checkpoints (lvseg.foreign): a Lightning .ckpt that pickles Python objects besides
its tensors is read with every foreign global made inert; a malicious pickle runs nothing."""

from __future__ import annotations

import functools
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from lvseg.errors import CheckpointError
from lvseg.foreign import InertGlobal, load_foreign, read_foreign_state_dict

#: A module that exists only while the test writes its file.
GONE = "lvseg_test_gone_module"


def _save_with_a_gone_class(path: Path) -> None:
    module = types.ModuleType(GONE)

    class StudyLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))

    StudyLoss.__module__, StudyLoss.__qualname__ = GONE, "StudyLoss"
    module.StudyLoss = StudyLoss  # type: ignore[attr-defined]
    sys.modules[GONE] = module
    try:
        torch.save(
            {
                "state_dict": {"net.conv.weight": torch.arange(6.0).view(2, 3), "net.conv.bias": torch.zeros(2)},
                "hyper_parameters": {
                    "loss": StudyLoss(),
                    "optimizer": functools.partial(torch.optim.AdamW, lr=2e-5),
                    "names": {"a", "b"},
                },
                "epoch": 3,
            },
            path,
        )
    finally:
        del sys.modules[GONE]


def test_a_lightning_ckpt_with_python_objects_keeps_its_tensors(tmp_path: Path) -> None:
    path = tmp_path / "epoch_003.ckpt"
    _save_with_a_gone_class(path)
    with pytest.raises(pickle.UnpicklingError):  # what torch alone says
        torch.load(path, weights_only=True)
    state = read_foreign_state_dict(path, "Lightning checkpoint", "net.conv.weight")
    assert set(state) == {"net.conv.weight", "net.conv.bias"}
    assert torch.equal(state["net.conv.weight"], torch.arange(6.0).view(2, 3))
    loaded = load_foreign(path, "Lightning checkpoint")
    hyper = loaded["hyper_parameters"]
    assert isinstance(hyper["loss"], InertGlobal) and hyper["loss"].foreign_name == f"{GONE}.StudyLoss"
    assert isinstance(hyper["optimizer"], InertGlobal) and hyper["optimizer"].foreign_name == "functools.partial"
    assert hyper["names"] == {"a", "b"} and loaded["epoch"] == 3
    assert GONE not in sys.modules  # the class's module was never imported


class _Runs:
    """Pickles as a call of ``function(*arguments)``: what a malicious checkpoint does."""

    def __init__(self, function: object, *arguments: object) -> None:
        self.reduced = (function, arguments)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.reduced


def test_a_malicious_pickle_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payloads = {
        "os.system": _Runs(os.system, f"touch {marker}"),
        "builtins.exec": _Runs(exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": _Runs(eval, f"open({str(marker)!r}, 'w')"),
    }
    for name, payload in payloads.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"state_dict": {"w": torch.ones(2)}, "payload": payload}, path)
        state = read_foreign_state_dict(path, "checkpoint", "w")
        assert not marker.exists(), name
        assert set(state) == {"w"}
        assert isinstance(load_foreign(path, "checkpoint")["payload"], InertGlobal)
        assert not marker.exists(), name


def test_a_damaged_file_and_a_torchscript_archive_are_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "garbage.ckpt").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt: not a readable PyTorch checkpoint"):
        read_foreign_state_dict(tmp_path / "garbage.ckpt", "checkpoint", "w")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "model.pt"))
    with pytest.raises(CheckpointError, match=r"TorchScript archive.*weights_only=True: pass the state dict"):
        read_foreign_state_dict(tmp_path / "model.pt", "checkpoint", "w", torchscript_advice="pass the state dict")
