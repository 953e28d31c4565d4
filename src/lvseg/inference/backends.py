"""Inference backends: how a model's network runs at prediction time.

The text front end (``model.encode_text``) always runs in eager fp32; a backend runs the network
``model(images, text_input) -> logits``. Every backend is held to the same accuracy guard
(:func:`agreement`: masks against fp32 eager); speeds per model and backend are in benchmarks/RESULTS.md
(``benchmarks/speed.py``).

* ``eager``: the model as it is, fp32 (CUDA: bf16/fp16 autocast, as before). The reference.
* ``bf16``: channels-last memory layout and bf16 autocast where the device supports bf16 (CPUs with
  AVX-512 bf16 or AMX, CUDA); plain fp32 elsewhere.
* ``compile``: ``torch.compile`` of the ``bf16`` path (slow first call: compilation).
* ``onnx``: the network exported to ONNX and run by ONNX Runtime (CPU, fp32).
* ``openvino``: the same ONNX graph run by OpenVINO in fp32; ``openvino-bf16``: in bf16 on CPUs that have it.

``auto`` picks the fastest backend that passed the accuracy guard (per-image mask Dice >= 0.99 against fp32
eager) on the trained demo checkpoints: on a CPU ``openvino`` (fp32) when OpenVINO is installed, else ``onnx``
when ONNX Runtime is, else ``eager``; on CUDA ``eager`` (autocast); ``eager`` too for a single image, where
exporting the network costs more than it saves. The bf16 paths (``bf16``, ``compile``, ``openvino-bf16``) are
faster still but did not pass it there (lowest per-image Dice 0.977-0.985, boundary pixels of small lesions), so
they are opt-in. ONNX Runtime and OpenVINO come with the ``deploy`` extra (``pip install 'lvseg[deploy]'``).

The backends are a registry: their names and capabilities are declared in
:mod:`lvseg.inference.backend_choice` (torch-free: the CLI reads the help text there), and each one's runner
builder is registered here against its name with :func:`register_runner`; :func:`make_runner` dispatches
through it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lvseg.errors import LvsegError, first_line
from lvseg.inference.backend_choice import DEPLOY_EXTRA, backend_spec, choose_backend, exporting_backends

if TYPE_CHECKING:
    from lvseg.backend_record import BackendRecord, BackendTrial
    from lvseg.models.base import SegmentationModel

logger = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX-512 bf16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_backend(
    name: str,
    device: torch.device,
    expected_images: int | None = None,
    record: BackendRecord | None = None,
    exporting_only: bool = False,
) -> str:
    """The backend ``name`` stands for on ``device``: ``auto`` resolved from the registry
    (:func:`lvseg.inference.backend_choice.auto_backend`: the fastest installed backend that passed the accuracy
    guard and runs there; ``eager`` when ``expected_images`` is 1, as exporting costs more than it saves for one
    image; the fastest that passed the checkpoint's own guard when its backend ``record`` was measured on this
    kind of hardware), any other name checked. :class:`LvsegError` for an unknown name or a CPU-only backend
    elsewhere."""
    return choose_backend(name, str(device), expected_images, record, exporting_only)


def flatten_text_input(text_input: Any) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """A model's text input as a flat list of tensors, and the function that rebuilds it from such a list."""
    if text_input is None:
        return [], lambda tensors: None
    if isinstance(text_input, torch.Tensor):
        return [text_input], lambda tensors: tensors[0]
    if isinstance(text_input, (tuple, list)):
        present = [item is not None for item in text_input]
        tensors = [item for item in text_input if item is not None]

        def rebuild(values: list[torch.Tensor]) -> tuple[Any, ...]:
            it = iter(values)
            return tuple(next(it) if here else None for here in present)

        return tensors, rebuild
    raise LvsegError(f"a text input of type {type(text_input).__name__} cannot be exported")


class NetworkRunner:
    """Runs ``model(images, text_input)`` -> logits (B, 1, S, S) float32 with one backend."""

    name = "eager"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return contextlib.nullcontext()

    def __call__(self, images: torch.Tensor, text_input: Any) -> torch.Tensor:
        with self._autocast():
            return _logits(self.model(images, text_input)).float()


def _logits(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


class Bf16Runner(NetworkRunner):
    """Channels-last layout and bf16 autocast where the device has bf16 (else fp32 channels-last)."""

    name = "bf16"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__(model.to(memory_format=torch.channels_last), device)  # type: ignore[call-overload]  # torch's stubs omit memory_format
        self.use_bf16 = device.type == "cuda" or cpu_has_bf16()
        if not self.use_bf16:
            logger.info("this CPU has no native bf16: the bf16 backend runs in fp32 (channels-last)")

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.use_bf16:
            return contextlib.nullcontext()
        if self.device.type == "cuda":
            return super()._autocast()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def __call__(self, images: torch.Tensor, text_input: Any) -> torch.Tensor:
        return super().__call__(images.contiguous(memory_format=torch.channels_last), text_input)


class Bf16MixedRunner(Bf16Runner):
    """The ``bf16`` path with the modules named in ``fp32_modules`` (``model.named_modules()`` names, found
    sensitive by :mod:`lvseg.inference.tuning` for this checkpoint) computing in fp32: autocast is off inside
    them and their floating-point inputs are cast to fp32."""

    name = "bf16-mixed"

    def __init__(self, model: torch.nn.Module, device: torch.device, fp32_modules: tuple[str, ...]) -> None:
        super().__init__(model, device)
        modules = dict(self.model.named_modules())
        unknown = [name for name in fp32_modules if name not in modules]
        if unknown:
            raise LvsegError(
                f"backend bf16-mixed: the checkpoint's record keeps {', '.join(unknown)} in fp32, which model "
                f"'{getattr(model, 'model_name', type(model).__name__)}' does not have; run `lvseg tune-backend` again"
            )
        self.fp32_modules = tuple(fp32_modules)
        self._hooks = [handle for name in fp32_modules for handle in keep_in_fp32(modules[name], device.type)]

    def release(self) -> None:
        """Undo the fp32 hooks on the model (the model then runs as before this runner)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def keep_in_fp32(module: torch.nn.Module, device_type: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks making ``module`` compute in fp32 under autocast (inputs cast to fp32, autocast off inside); returns
    their handles (``handle.remove()`` undoes them)."""
    open_contexts: list[torch.autocast] = []

    def enter(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        context = torch.autocast(device_type, enabled=False)
        context.__enter__()
        open_contexts.append(context)
        return tuple(arg.float() if isinstance(arg, torch.Tensor) and arg.is_floating_point() else arg for arg in args)

    def leave(_module: torch.nn.Module, _args: tuple[Any, ...], _output: Any) -> None:
        if open_contexts:
            open_contexts.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]


class CompiledRunner(Bf16Runner):
    """``torch.compile`` of the bf16 path (the first call compiles: tens of seconds)."""

    name = "compile"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__(model, device)
        self.compiled = torch.compile(self.model)

    def __call__(self, images: torch.Tensor, text_input: Any) -> torch.Tensor:
        with self._autocast():
            return _logits(self.compiled(images.contiguous(memory_format=torch.channels_last), text_input)).float()


def export_onnx(model: SegmentationModel, images: torch.Tensor, text_input: Any, path: Path) -> list[str]:
    """Export the network (eval mode) to ONNX at ``path`` with a dynamic batch axis; returns the input names
    (``images``, then ``text_0``, ``text_1``, ... for the tensors of the text input). Raises
    :class:`LvsegError` naming the model when it cannot be exported."""
    tensors, rebuild = flatten_text_input(text_input)
    names = ["images", *(f"text_{index}" for index in range(len(tensors)))]

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, image_batch: torch.Tensor, *text_tensors: torch.Tensor) -> torch.Tensor:
            return _logits(self.inner(image_batch, rebuild(list(text_tensors))))

    # The batch axis is dynamic; so is the token axis of the text tensors of a model whose tokenizer pads each
    # batch to its longest report (CLIPSeg, BiomedCLIPSeg), as their length then changes from call to call.
    try:
        token_axis = _text_length_varies(model)
        axes = {name: {0: "batch"} for name in ["images", "logits"]}
        axes.update(
            {
                name: {0: "batch", 1: f"{name}_length"} if token_axis and tensor.ndim >= 2 else {0: "batch"}
                for name, tensor in zip(names[1:], tensors)
            }
        )
        with torch.no_grad(), quiet_warnings():
            torch.onnx.export(
                Network().eval(),
                (images, *tensors),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
    except Exception as error:  # the exporter raises many types for unsupported operations
        raise LvsegError(
            f"model '{getattr(model, 'model_name', type(model).__name__)}' cannot be exported to ONNX: "
            f"{first_line(error)}"
        ) from None
    return names


def _text_length_varies(model: SegmentationModel) -> bool:
    """Whether the text tensors of ``model`` are longer for a longer report (a tokenizer padding to the longest
    report of the batch), found by encoding a short and a long report."""
    if not getattr(model, "requires_text", False):
        return False
    with torch.no_grad():
        examples = (model.example_reports[0], model.example_reports[-1])
        short, long = (flatten_text_input(model.encode_text([report]))[0] for report in examples)
    return any(a.shape != b.shape for a, b in zip(short, long))


@contextlib.contextmanager
def quiet_warnings() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant per export
        yield


class _ExportedRunner(NetworkRunner):
    """The network as an ONNX (or OpenVINO IR) graph whose batch axis is dynamic: exported once from ``model`` for
    the ``example`` batch, or read from ``graph`` (a file ``lvseg export`` wrote) with its ``input_names``."""

    def __init__(
        self,
        model: SegmentationModel,
        device: torch.device,
        example: tuple[torch.Tensor, Any] | None = None,
        graph: Path | None = None,
        input_names: list[str] | None = None,
    ) -> None:
        super().__init__(model, device)
        if graph is not None:
            self.path, self.input_names = Path(graph), list(input_names or ["images"])
            return
        if example is None:
            raise LvsegError(f"backend {self.name!r} needs an example batch (or an exported graph) to run the network")
        self.folder = tempfile.TemporaryDirectory(prefix="lvseg-onnx-")
        self.path = Path(self.folder.name) / "network.onnx"
        images, text_input = example
        self.input_names = export_onnx(model, images, text_input, self.path)

    #: The inputs the exported graph kept (an input the network never reads, e.g. a mask, is pruned).
    graph_inputs: set[str] = set()

    def _feed(self, images: torch.Tensor, text_input: Any) -> dict[str, np.ndarray]:
        tensors, _ = flatten_text_input(text_input)
        values = [images, *tensors]
        return {
            name: value.detach().cpu().numpy()
            for name, value in zip(self.input_names, values)
            if name in self.graph_inputs
        }


class OnnxRuntimeRunner(_ExportedRunner):
    name = "onnx"

    def __init__(
        self,
        model: SegmentationModel,
        device: torch.device,
        example: tuple[torch.Tensor, Any] | None = None,
        graph: Path | None = None,
        input_names: list[str] | None = None,
    ) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise LvsegError(f"the onnx backend needs ONNX Runtime: {DEPLOY_EXTRA}") from None
        super().__init__(model, device, example, graph, input_names)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types
            raise LvsegError(f"ONNX Runtime cannot load the network '{self.path}': {first_line(error)}") from None
        self.graph_inputs = {item.name for item in self.session.get_inputs()}

    def __call__(self, images: torch.Tensor, text_input: Any) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, self._feed(images, text_input))[0]).float()


class OpenVinoRunner(_ExportedRunner):
    """OpenVINO on the CPU: ``bf16=False`` computes in fp32 (the graph as exported), ``bf16=True`` in bf16 where
    the CPU has it (fp32 otherwise). ``in_memory``: an OpenVINO IR given as its (xml, bin) bytes (a quantised
    graph a checkpoint carries) instead of ``graph``/``example``; ``name``: the backend it stands for."""

    name = "openvino"

    def __init__(
        self,
        model: SegmentationModel,
        device: torch.device,
        example: tuple[torch.Tensor, Any] | None = None,
        graph: Path | None = None,
        input_names: list[str] | None = None,
        bf16: bool = False,
        in_memory: tuple[bytes, bytes] | None = None,
        name: str | None = None,
    ) -> None:
        try:
            import openvino
        except ImportError:
            raise LvsegError(f"the openvino backend needs OpenVINO: {DEPLOY_EXTRA}") from None
        self.name = name or ("openvino-bf16" if bf16 else "openvino")
        core = openvino.Core()
        if in_memory is not None:
            NetworkRunner.__init__(self, model, device)
            self.path, self.input_names = Path("<the checkpoint's quantised graph>"), list(input_names or [])
            xml, weights = in_memory
            read = lambda: core.read_model(xml, openvino.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))  # noqa: E731
        else:
            super().__init__(model, device, example, graph, input_names)
            read = lambda: core.read_model(str(self.path))  # noqa: E731
        precision = "bf16" if bf16 and cpu_has_bf16() else "f32"
        try:
            self.compiled = core.compile_model(
                read(),
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": precision,
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                },
            )
        except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
            raise LvsegError(f"OpenVINO cannot load the network '{self.path}': {first_line(error)}") from None
        self.request = self.compiled.create_infer_request()
        self.graph_inputs = {name for port in self.compiled.inputs for name in port.get_names()}

    def __call__(self, images: torch.Tensor, text_input: Any) -> torch.Tensor:
        result = self.request.infer(self._feed(images, text_input))
        return torch.from_numpy(np.asarray(result[self.compiled.output(0)])).float()


@dataclass(frozen=True)
class NetworkSource:
    """Where an exporting backend's network comes from: ``graph`` (an exported network, inputs ``input_names``)
    when given, else ``model`` exported for ``example``, an (images (B, C, S, S), text_input) batch. ``record``:
    the checkpoint's backend record, which a tuned backend runs from (its fp32 modules, its quantised graph)."""

    example: tuple[torch.Tensor, Any] | None = None
    graph: Path | None = None
    input_names: list[str] | None = None
    record: BackendRecord | None = None

    def tuned_trial(self, backend: str) -> BackendTrial:
        """The record's passing trial of ``backend``; :class:`LvsegError` saying how to get one when absent."""
        trial = self.record.trial(backend) if self.record is not None else None
        if trial is None or trial.error is not None:
            raise LvsegError(
                f"backend {backend!r} runs as tuned for a checkpoint, and this one has no such tuning: run "
                "`lvseg tune-backend --checkpoint C --data D` (or train with lvseg, which tunes at the end)"
            )
        return trial


#: Builds a backend's runner: (model, device, source) -> runner.
RunnerBuilder = Callable[["SegmentationModel", torch.device, NetworkSource], NetworkRunner]

_RUNNERS: dict[str, RunnerBuilder] = {}


def register_runner(name: str) -> Callable[[RunnerBuilder], RunnerBuilder]:
    """Decorator: register the runner builder of backend ``name``, declared in
    :mod:`lvseg.inference.backend_choice` (:func:`~lvseg.inference.backend_choice.register_backend`)."""
    backend_spec(name)  # a runner for an undeclared name is an error here, not at the first prediction

    def register(builder: RunnerBuilder) -> RunnerBuilder:
        if name in _RUNNERS:
            raise ValueError(f"backend {name!r} already has a runner; expected one builder per backend")
        _RUNNERS[name] = builder
        return builder

    return register


@register_runner("eager")
def _eager(model: torch.nn.Module, device: torch.device, source: NetworkSource) -> NetworkRunner:
    return NetworkRunner(model, device)


@register_runner("bf16")
def _bf16(model: torch.nn.Module, device: torch.device, source: NetworkSource) -> NetworkRunner:
    return Bf16Runner(model, device)


@register_runner("bf16-mixed")
def _bf16_mixed(model: torch.nn.Module, device: torch.device, source: NetworkSource) -> NetworkRunner:
    return Bf16MixedRunner(model, device, source.tuned_trial("bf16-mixed").fp32_modules)


@register_runner("compile")
def _compile(model: torch.nn.Module, device: torch.device, source: NetworkSource) -> NetworkRunner:
    return CompiledRunner(model, device)


@register_runner("onnx")
def _onnx(model: SegmentationModel, device: torch.device, source: NetworkSource) -> NetworkRunner:
    return OnnxRuntimeRunner(model, device, source.example, source.graph, source.input_names)


@register_runner("openvino")
def _openvino(model: SegmentationModel, device: torch.device, source: NetworkSource) -> NetworkRunner:
    return OpenVinoRunner(model, device, source.example, source.graph, source.input_names)


@register_runner("openvino-bf16")
def _openvino_bf16(model: SegmentationModel, device: torch.device, source: NetworkSource) -> NetworkRunner:
    return OpenVinoRunner(model, device, source.example, source.graph, source.input_names, bf16=True)


@register_runner("openvino-int8")
def _openvino_int8(model: SegmentationModel, device: torch.device, source: NetworkSource) -> NetworkRunner:
    trial = source.tuned_trial("openvino-int8")
    input_names = list(trial.details.get("input_names") or source.input_names or ["images"])
    if source.graph is not None:
        return OpenVinoRunner(model, device, graph=source.graph, input_names=input_names, name="openvino-int8")
    assert source.record is not None
    files = source.record.graphs.get("openvino-int8", {})
    if set(files) != set(INT8_GRAPH_FILES):
        raise LvsegError(
            "backend 'openvino-int8': the checkpoint's record has no quantised graph "
            f"({', '.join(INT8_GRAPH_FILES)}); run `lvseg tune-backend` on it again"
        )
    xml, weights = (files[name] for name in INT8_GRAPH_FILES)
    return OpenVinoRunner(model, device, input_names=input_names, in_memory=(xml, weights), name="openvino-int8")


#: The files of the quantised OpenVINO graph (an export folder's, a checkpoint record's ``graphs`` entry).
INT8_GRAPH_FILES = ("network-int8.xml", "network-int8.bin")


def make_runner(
    name: str,
    model: SegmentationModel,
    device: torch.device,
    example: tuple[torch.Tensor, Any] | None = None,
    graph: Path | None = None,
    input_names: list[str] | None = None,
    record: BackendRecord | None = None,
) -> NetworkRunner:
    """The runner of backend ``name`` (already resolved) for ``model`` on ``device``, built by the builder
    registered for it. The exporting backends run ``graph`` (an exported network, inputs ``input_names``) when
    given, else export ``model`` for ``example``, an (images (B, C, S, S), text_input) batch; the tuned ones
    (bf16-mixed, openvino-int8) run as the checkpoint's backend ``record`` says."""
    spec = backend_spec(name)
    if graph is not None and not spec.exports:
        raise LvsegError(
            f"backend {name!r} runs a PyTorch model; an exported network runs with "
            f"{', '.join(exporting_backends())} or auto"
        )
    builder = _RUNNERS.get(name)
    if builder is None:
        raise LvsegError(
            f"backend {name!r} is declared but has no runner; expected one registered with "
            "lvseg.inference.backends.register_runner"
        )
    return builder(model, device, NetworkSource(example, graph, input_names, record))


def agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The accuracy guard: probabilities (B, ..., H, W) of fp32 eager and of a fast backend ->
    ``min_dice`` (the lowest per-image Dice between the two masks; 1 for two empty masks) and
    ``max_abs_diff`` (the largest probability difference)."""
    reference, candidate = np.asarray(reference, np.float32), np.asarray(candidate, np.float32)
    dices = []
    for ref, cand in zip(reference, candidate):
        a, b = ref > threshold, cand > threshold
        total = int(a.sum() + b.sum())
        dices.append(1.0 if total == 0 else 2.0 * float((a & b).sum()) / total)
    return {"min_dice": min(dices) if dices else 1.0, "max_abs_diff": float(np.abs(reference - candidate).max())}


def example_reports(model: SegmentationModel, batch: int) -> list[str]:
    """``batch`` copies of the model's longest example report (its own front end reads it), for exporting."""
    return [model.example_reports[-1]] * batch
