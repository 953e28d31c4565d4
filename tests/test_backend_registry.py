"""Inference backends as a registry: the help text, the check of a name, the CPU-only refusal, the choice of
``auto`` (the single-image policy included) and the building of a runner are all read off the registry."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lvseg.checkpoint import save_inference_checkpoint
from lvseg.errors import LvsegError
from lvseg.inference import Segmenter, backend_choice, backends, load_model
from lvseg.inference.backend_choice import BackendSpec, backend_help, backend_spec, register_backend
from lvseg.inference.backends import NetworkRunner, NetworkSource, register_runner, resolve_backend
from lvseg.models import create_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda:1")  # a device object needs no GPU
BUILT_IN = ("eager", "bf16", "compile", "bf16-mixed", "onnx", "openvino", "openvino-bf16", "openvino-int8")


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made in the test are undone after it."""
    monkeypatch.setattr(backend_choice, "_REGISTRY", dict(backend_choice._REGISTRY))
    monkeypatch.setattr(backends, "_RUNNERS", dict(backends._RUNNERS))
    yield


class _HalfRunner(NetworkRunner):
    """A stand-in backend: logits 0 everywhere (probability 0.5), whatever the model says."""

    name = "half"

    def __call__(self, images: torch.Tensor, text_input: Any) -> torch.Tensor:
        return torch.zeros(images.shape[0], 1, *images.shape[-2:])


def _unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet", img_size=32, base_channels=4)


def test_the_built_in_backends_declare_their_capabilities() -> None:
    assert backend_choice.BACKENDS == ("auto", *BUILT_IN)
    assert backend_choice.EXPORTING_BACKENDS == ("onnx", "openvino", "openvino-bf16", "openvino-int8")
    facts = {
        name: (backend_spec(name).exports, backend_spec(name).cpu_only, backend_spec(name).precision)
        for name in BUILT_IN
    }
    assert facts == {
        "eager": (False, False, "fp32"),
        "bf16": (False, False, "bf16"),
        "compile": (False, False, "bf16"),
        "bf16-mixed": (False, False, "bf16"),
        "onnx": (True, True, "fp32"),
        "openvino": (True, True, "fp32"),
        "openvino-bf16": (True, True, "bf16"),
        "openvino-int8": (True, True, "int8"),
    }
    assert [name for name in BUILT_IN if backend_spec(name).tuned] == ["bf16-mixed", "openvino-int8"]
    assert backend_spec("openvino").graph_files == ("network.xml", "network.onnx")
    assert backend_choice.exporting_backends() == (
        "openvino",
        "openvino-bf16",
        "openvino-int8",
        "onnx",
    )  # auto's runtime first
    assert set(backends._RUNNERS) == set(BUILT_IN)  # every declared backend has its builder


def test_the_help_text_is_written_from_the_registry() -> None:
    text = backend_help()
    assert text == backend_choice.BACKEND_HELP
    assert text.startswith("How the network runs: eager (fp32 reference), bf16 (channels-last + bf16 where")
    assert "compile (torch.compile), bf16-mixed (bf16 with the modules" in text
    assert "onnx (ONNX Runtime), openvino (fp32), openvino-bf16, openvino-int8 (int8 quantised by NNCF" in text
    assert "or auto (the fastest that passed the checkpoint's own accuracy guard" in text
    assert "openvino, else onnx, when installed; eager on CUDA and for a single --image" in text


def test_names_are_checked_and_cpu_only_backends_refused_elsewhere() -> None:
    with pytest.raises(
        LvsegError,
        match="unknown backend 'fast'; expected one of auto, eager, bf16, compile, bf16-mixed, onnx, openvino, "
        "openvino-bf16, openvino-int8$",
    ):
        resolve_backend("fast", CPU)
    for name in ("onnx", "openvino", "openvino-bf16"):
        with pytest.raises(
            LvsegError,
            match=f"backend '{name}' runs on the CPU; use --device cpu, or --backend eager/bf16/compile/bf16-mixed on cuda:1",
        ):
            resolve_backend(name, CUDA)
    assert [resolve_backend(name, CUDA) for name in ("eager", "bf16", "compile")] == ["eager", "bf16", "compile"]


def test_auto_is_the_best_installed_backend_and_eager_for_one_image_or_on_cuda() -> None:
    expected = (
        "openvino"
        if importlib.util.find_spec("openvino")
        else "onnx"
        if importlib.util.find_spec("onnxruntime")
        else "eager"
    )
    assert resolve_backend("auto", CPU) == expected
    assert resolve_backend("auto", CPU, expected_images=8) == expected
    assert resolve_backend("auto", CPU, expected_images=1) == "eager"  # exporting costs more than it saves
    assert resolve_backend("auto", CUDA) == "eager" == resolve_backend("auto", CUDA, expected_images=100)


def test_a_registered_backend_reaches_help_names_auto_and_the_segmenter(scratch_registry: None) -> None:
    register_backend(BackendSpec("half", summary="always 0.5", auto_rank=-1))

    @register_runner("half")
    def build(model: torch.nn.Module, device: torch.device, source: NetworkSource) -> NetworkRunner:
        return _HalfRunner(model, device)

    assert "half (always 0.5)" in backend_help() and "half" in backend_choice.BACKENDS
    assert resolve_backend("auto", CPU) == "half" == resolve_backend("auto", CUDA)  # it ranks first and runs there
    segmenter = Segmenter(_unet(), device="cpu", backend="half")
    assert segmenter.backend == "half"
    probability = segmenter.probabilities(torch.rand(2, 3, 32, 32), ["", ""])
    assert torch.equal(probability, torch.full((2, 1, 32, 32), 0.5))  # the registered runner ran the network


def test_auto_passes_over_a_missing_runtime_and_exporting_backends_for_one_image(scratch_registry: None) -> None:
    register_backend(BackendSpec("absent", summary="", runtime="lvseg_no_such_runtime", auto_rank=-2))
    register_backend(BackendSpec("exporter", summary="", exports=True, graph_files=("network.onnx",), auto_rank=-1))
    assert resolve_backend("auto", CPU) == "exporter"  # "absent" is not installed
    assert resolve_backend("auto", CUDA) == "exporter"  # not CPU-only
    assert resolve_backend("auto", CPU, expected_images=1) == "eager"


def test_registration_errors_name_the_backend(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="'auto' is taken"):
        register_backend(BackendSpec("auto", summary=""))
    with pytest.raises(ValueError, match="'eager' is taken"):
        register_backend(BackendSpec("eager", summary=""))
    with pytest.raises(ValueError, match="'graphless' exports the network but names no graph_files"):
        register_backend(BackendSpec("graphless", summary="", exports=True))
    with pytest.raises(LvsegError, match="unknown backend 'undeclared'"):
        register_runner("undeclared")
    with pytest.raises(ValueError, match="'eager' already has a runner"):
        register_runner("eager")(lambda model, device, source: NetworkRunner(model, device))
    register_backend(BackendSpec("runnerless", summary=""))
    with pytest.raises(LvsegError, match="backend 'runnerless' is declared but has no runner"):
        Segmenter(_unet(), device="cpu", backend="runnerless")


def test_a_pytorch_backend_refuses_an_exported_graph(tmp_path: Path) -> None:
    with pytest.raises(
        LvsegError,
        match="backend 'bf16' runs a PyTorch model; an exported network runs with "
        "openvino, openvino-bf16, openvino-int8, onnx or auto",
    ):
        backends.make_runner("bf16", _unet(), CPU, graph=tmp_path / "network.onnx")


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None and importlib.util.find_spec("openvino") is None,
    reason="no exporting backend installed (the deploy extra)",
)
def test_load_model_takes_the_single_image_policy(tmp_path: Path) -> None:
    checkpoint = save_inference_checkpoint(tmp_path / "unet.ckpt", _unet())
    assert load_model(checkpoint, device="cpu", backend="auto", expected_images=1).backend == "eager"
    assert load_model(checkpoint, device="cpu", backend="auto").backend == resolve_backend("auto", CPU) != "eager"
    assert (
        load_model(
            checkpoint,
            device="cpu",
            backend="onnx" if importlib.util.find_spec("onnxruntime") else "openvino",
            expected_images=1,
        ).backend
        != "eager"
    )  # a backend named is kept


def test_the_declarations_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; "
        "from lvseg.inference.backend_choice import BACKEND_HELP, CHECKPOINT_HELP, choose_backend; "
        "from lvseg.inference.threshold import THRESHOLD_HELP; "
        "print(choose_backend('auto', 'cuda:0', 5), choose_backend('auto', 'cpu', 1))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["eager", "eager"]
