"""Running a folder written by ``lvseg export``: ``load_model(folder)``, ``lvseg serve/predict/evaluate -c folder``.

The exported network (``network.xml`` for OpenVINO when the folder has it, else ``network.onnx``) segments;
lvseg reads the reports exactly as the checkpoint did: the model is rebuilt from the manifest's
``model_config`` (frozen pretrained towers from where they were found, as for a checkpoint) and its text encoder
gets the trained weights of ``text_front_end.safetensors``. The rest of that rebuilt model, the network, is
never run: its floating-point weights are set to NaN so that any use of them shows at once. The decision
threshold is the manifest's ``decision_threshold`` (the exported model's; 0.5 for folders written before
manifests recorded it).

Before anything runs, the folder is checked (:func:`export_problems`), every problem listed at once in one
:class:`CheckpointError`: each file against the SHA-256 the manifest records (folders written before manifests
recorded them load with a warning that they cannot be verified), and what the manifest declares -- image size,
channels, input names, text tensor shapes and dtypes, the learned vocabulary -- against (a) the inputs the graph
``network.onnx`` actually takes (read with the ``onnx`` package, else ONNX Runtime) and (b) the model rebuilt from
``model_config``, which lvseg reads the reports with and resizes the images for. Keys the checks do not know are
left alone (a newer lvseg may add some).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lvseg.backend_record import BackendRecord
from lvseg.data.provenance import RECORDED_DATA_KEYS
from lvseg.errors import CheckpointError, LvsegError, first_line
from lvseg.inference.backend_choice import AUTO, DEPLOY_EXTRA, backend_names, backend_spec, exporting_backends
from lvseg.inference.manifest import (
    BACKEND_RECORD_KEY,
    EXPORT_VERSION,
    FRONT_END,
    FRONT_END_PREFIX,
    HASHES_KEY,
    MANIFEST,
    THRESHOLD_KEY,
    file_sha256,
)
from lvseg.inference.segmenter import Segmenter
from lvseg.inference.threshold import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from lvseg.models.base import SegmentationModel

logger = logging.getLogger(__name__)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an export folder; :class:`CheckpointError` naming the folder and every problem at once."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"'{folder}' is a folder without {MANIFEST}: give an lvseg checkpoint (.ckpt) or a "
            "folder written by `lvseg export`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read the export manifest '{path}': {error}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"export manifest '{path}' is not a JSON object")
    version = manifest.get("lvseg_export")
    if version != EXPORT_VERSION:
        raise CheckpointError(
            f"'{folder}' was exported in layout {version!r}; this lvseg runs layout "
            f"{EXPORT_VERSION} folders: export the checkpoint again with `lvseg export`"
        )
    problems = []
    if not isinstance(manifest.get("model"), str):
        problems.append("'model' (the registered model name) is missing")
    if not isinstance(manifest.get("model_config"), dict):
        problems.append("'model_config' is missing")
    text = manifest.get("text")
    tensors = text.get("tensors") if isinstance(text, dict) else None
    if not isinstance(tensors, list) or not all(isinstance(item, dict) and "name" in item for item in tensors):
        problems.append("'text.tensors' (the network's text inputs) is missing")
    image = manifest.get("image")
    if not (isinstance(image, dict) and isinstance(image.get("input"), dict) and "name" in image["input"]):
        problems.append("'image.input.name' (the network's image input) is missing")
    for name in ("network.onnx", FRONT_END):
        if not (folder / name).is_file():
            problems.append(f"the file '{name}' is missing")
    threshold = manifest.get(THRESHOLD_KEY, DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        problems.append(f"'{THRESHOLD_KEY}' is {threshold!r}; expected a number between 0 and 1")
    if problems:
        raise CheckpointError(f"export folder '{folder}' is incomplete: " + "; ".join(problems))
    return manifest


def manifest_threshold(manifest: dict[str, Any]) -> float:
    """The decision threshold an export folder's manifest records (0.5 for folders written before it did)."""
    return float(manifest.get(THRESHOLD_KEY, DEFAULT_THRESHOLD))


# ----------------------------------------------------------------------------------- checking a folder

#: ONNX Runtime's input types, as the NumPy dtype names the manifest uses.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
}


@dataclass(frozen=True)
class InputSpec:
    """One input of a graph: its ``name``, ``shape`` (an int per fixed axis, the axis's name for a dynamic one,
    e.g. ``("batch", 3, 224, 224)``) and ``dtype`` (a NumPy name: ``float32``, ``int64``, ``bool``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def graph_inputs(path: str | Path) -> list[InputSpec] | None:
    """The inputs of the ONNX graph at ``path`` (weights excluded), read with the ``onnx`` package, else with an
    ONNX Runtime session's input metadata; None when neither is installed. :class:`CheckpointError` in one line
    when the file is not a readable ONNX graph."""
    path = Path(path)
    onnx: Any
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as error:  # protobuf's DecodeError and friends
            raise CheckpointError(f"{path.name}: not a readable ONNX graph ({first_line(error)})") from None
        weights = {item.name for item in graph.initializer}
        specs = []
        for item in graph.input:
            if item.name in weights:
                continue
            tensor = item.type.tensor_type
            shape = tuple(
                int(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim
            )
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else "?"
            specs.append(InputSpec(item.name, shape, dtype))
        return specs
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types
        raise CheckpointError(f"{path.name}: not a readable ONNX graph ({first_line(error)})") from None
    return [
        InputSpec(
            item.name,
            tuple(dim if isinstance(dim, int) else str(dim) for dim in item.shape),
            _ORT_TYPES.get(item.type, item.type),
        )
        for item in session.get_inputs()
    ]


def _dims(shape: Sequence[Any]) -> str:
    """``[3, 224, 224]`` -> ``3x224x224``."""
    return "x".join(str(dim) for dim in shape)


def _fits(declared: Sequence[Any], actual: Sequence[Any]) -> bool:
    """Whether declared axes (batch axis excluded) match a graph's: same count, equal where the graph's is fixed."""
    return len(declared) == len(actual) and all(
        not isinstance(real, int) or (isinstance(said, int) and not isinstance(said, bool) and said == real)
        for said, real in zip(declared, actual)
    )


def _declared_axes(spec: Any) -> list[Any] | None:
    """The axes after the batch axis of a manifest tensor entry ``{"shape": ["batch", ...]}``; None if malformed."""
    shape = spec.get("shape") if isinstance(spec, dict) else None
    return list(shape[1:]) if isinstance(shape, list) and shape else None


def hash_problems(folder: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Each file the manifest lists against the SHA-256 it records (``sha256``), one line per problem. A manifest
    without hashes (written before lvseg recorded them) gives none, and a logged warning that the files cannot
    be verified."""
    folder = Path(folder)
    recorded = manifest.get(HASHES_KEY)
    if recorded is None:
        logger.warning(
            "export folder '%s' records no SHA-256 of its files (exported by an older lvseg): they cannot be "
            "verified; export the checkpoint again to record them",
            folder,
        )
        return []
    if not isinstance(recorded, dict) or not all(
        isinstance(name, str) and isinstance(digest, str) for name, digest in recorded.items()
    ):
        return [f"'{HASHES_KEY}' is not a {{file name: SHA-256}} table: export again"]
    listed = manifest.get("files")
    problems = [
        f"{name}: listed in 'files' without a SHA-256 in '{HASHES_KEY}': export again"
        for name in (listed if isinstance(listed, list) else [])
        if isinstance(name, str) and name not in recorded
    ]
    for name, digest in recorded.items():
        path = folder / name
        if Path(name).name != name or name in ("", ".", ".."):
            problems.append(f"'{HASHES_KEY}' names {name!r}, which is not a file name of the folder")
        elif not path.is_file():
            problems.append(f"{name}: missing (the manifest records its SHA-256): export again")
        elif file_sha256(path) != digest.lower():
            problems.append(f"{name}: SHA-256 differs from the manifest (file replaced or damaged): export again")
    return problems


def _image_problems(
    manifest: dict[str, Any], inputs: dict[str, InputSpec], model: SegmentationModel | None
) -> tuple[list[str], str | None]:
    """The manifest's image declarations against ``network.onnx``'s inputs and the rebuilt model's config;
    returns the problems and the name of the graph's image input (None when it has none)."""
    problems = []
    image = manifest["image"]
    name = image["input"]["name"]
    actual = inputs.get(name)
    if actual is None:
        problems.append(
            f"image.input.name: manifest says {name!r}, network.onnx has no such input "
            f"(its inputs: {', '.join(inputs) or 'none'})"
        )
        actual = next((spec for spec in inputs.values() if len(spec.shape) == 4), None)
    if actual is None or len(actual.shape) != 4:
        return problems, None
    channels, height, width = actual.shape[1:]
    takes = f"network.onnx takes {_dims(actual.shape[1:])}"
    declared = _declared_axes(image["input"])
    if declared is None:
        problems.append(f"image.input.shape is {image['input'].get('shape')!r}; expected ['batch', C, S, S]")
    elif not _fits(declared, actual.shape[1:]):
        problems.append(f"image.input: manifest says {_dims(declared)}, {takes}")
    if isinstance(height, int) and isinstance(width, int):
        if image.get("size") != height or height != width:
            problems.append(f"image.size: manifest says {image.get('size')!r}, {takes}")
        config = model.config if model is not None else manifest["model_config"]
        size = config.get("img_size", 224)
        if size != height:
            problems.append(f"model_config.img_size: manifest says {size!r} (lvseg would resize images to it), {takes}")
    if isinstance(channels, int):
        if image.get("channels") != channels:
            problems.append(f"image.channels: manifest says {image.get('channels')!r}, {takes}")
        config = model.config if model is not None else manifest["model_config"]
        in_channels = config.get("in_channels", 3)
        if in_channels != channels:
            problems.append(
                f"model_config.in_channels: manifest says {in_channels!r} (lvseg would read images with that many "
                f"channels), {takes}"
            )
    if actual.dtype not in ("float32", "?"):
        problems.append(f"image.input: network.onnx takes {actual.dtype} images; lvseg feeds float32")
    return problems, actual.name


def _text_problems(
    folder: Path, manifest: dict[str, Any], inputs: dict[str, InputSpec] | None, model: SegmentationModel | None
) -> list[str]:
    """The manifest's text tensors against the graph's inputs and against what the rebuilt model computes; its
    learned vocabulary and token length against the rebuilt model's (and ``text_encoder.onnx``'s input)."""
    problems = []
    text = manifest["text"]
    tensors: list[dict[str, Any]] = text["tensors"]
    if inputs is not None:
        for index, spec in enumerate(tensors):
            actual = inputs.get(spec["name"])
            if actual is None:
                continue  # an input the network never reads is pruned from the graph
            declared = _declared_axes(spec)
            if declared is None or not _fits(declared, actual.shape[1:]):
                problems.append(
                    f"text.tensors[{index}] ({spec['name']!r}): manifest says "
                    f"{_dims(declared) if declared is not None else repr(spec.get('shape'))}, network.onnx takes "
                    f"{_dims(actual.shape[1:])}"
                )
            if spec.get("dtype") != actual.dtype and actual.dtype != "?":
                problems.append(
                    f"text.tensors[{index}] ({spec['name']!r}): manifest says dtype {spec.get('dtype')!r}, "
                    f"network.onnx takes {actual.dtype}"
                )
    if model is None:
        return problems
    if not model.requires_text:
        if tensors:
            problems.append(
                f"text.tensors: manifest lists {len(tensors)}, and model '{manifest['model']}' rebuilt from "
                "model_config reads no text"
            )
        return problems
    from lvseg.inference.backends import example_reports, flatten_text_input

    try:
        with torch.no_grad():
            computed, _ = flatten_text_input(model.encode_text(example_reports(model, 1)))
    except (LvsegError, RuntimeError, ValueError) as error:
        return [*problems, f"the text front end rebuilt from model_config cannot read a report: {first_line(error)}"]
    if len(computed) != len(tensors):
        problems.append(
            f"text.tensors: manifest lists {len(tensors)}, the model rebuilt from model_config gives "
            f"{len(computed)} ({', '.join(_dims(tensor.shape[1:]) for tensor in computed)})"
        )
    for index, (spec, tensor) in enumerate(zip(tensors, computed)):
        declared, gives = _declared_axes(spec), list(tensor.shape[1:])
        if declared != gives:
            problems.append(
                f"text.tensors[{index}] ({spec['name']!r}): manifest says "
                f"{_dims(declared) if declared is not None else repr(spec.get('shape'))}, the model rebuilt from "
                f"model_config gives {_dims(gives)}"
            )
        dtype = str(tensor.dtype).removeprefix("torch.")
        if spec.get("dtype") != dtype:
            problems.append(
                f"text.tensors[{index}] ({spec['name']!r}): manifest says dtype {spec.get('dtype')!r}, the model "
                f"rebuilt from model_config gives {dtype}"
            )
    if text.get("type") == "learned":
        problems += _vocabulary_problems(folder, text, model)
    return problems


def _vocabulary_problems(folder: Path, text: dict[str, Any], model: SegmentationModel) -> list[str]:
    """A ``learned`` front end's manifest vocabulary and token length against the rebuilt encoder's."""
    from lvseg.text.learned import LearnedTextEncoder

    encoder = getattr(model, "text_encoder", None)
    if not isinstance(encoder, LearnedTextEncoder):
        return [
            f"text.type: manifest says 'learned', the model rebuilt from model_config has a "
            f"{type(encoder).__name__} text encoder"
        ]
    problems = []
    said, vocabulary = text.get("vocab"), list(encoder.vocab)
    if not isinstance(said, list):
        problems.append("text.vocab (the learned vocabulary) is missing")
    elif said != vocabulary:
        first = next(
            (index for index, (a, b) in enumerate(zip(said, vocabulary)) if a != b), min(len(said), len(vocabulary))
        )
        words = lambda words: repr(words[first]) if first < len(words) else "nothing"  # noqa: E731
        problems.append(
            f"text.vocab: manifest lists {len(said)} words, the learned vocabulary of model_config (what lvseg "
            f"reads reports with) {len(vocabulary)}; word {first} is {words(said)} in the manifest, "
            f"{words(vocabulary)} in model_config"
        )
    length = int(encoder.max_length)
    tokenize = text.get("tokenize")
    if isinstance(tokenize, dict) and tokenize.get("max_length") != length:
        problems.append(
            f"text.tokenize.max_length: manifest says {tokenize.get('max_length')!r}, the learned encoder of "
            f"model_config reads {length} tokens"
        )
    exported = text.get("exported")
    if isinstance(exported, str) and Path(exported).name == exported and (folder / exported).is_file():
        try:
            ids = graph_inputs(folder / exported)
        except CheckpointError as error:
            return [*problems, str(error)]
        declared = _declared_axes(text.get("input"))
        if ids and declared is not None and not _fits(declared, ids[0].shape[1:]):
            problems.append(f"text.input: manifest says {_dims(declared)}, {exported} takes {_dims(ids[0].shape[1:])}")
    return problems


def export_problems(folder: str | Path, manifest: dict[str, Any], model: SegmentationModel | None) -> list[str]:
    """Everything wrong with an export folder whose manifest :func:`read_manifest` accepted, one line each: its
    files against their recorded SHA-256 (:func:`hash_problems`), and its declared image and text inputs and
    vocabulary against ``network.onnx``'s actual inputs and against ``model``, the model rebuilt from
    ``model_config`` (None when it could not be built: those checks are skipped)."""
    folder = Path(folder)
    problems = hash_problems(folder, manifest)
    try:
        found = graph_inputs(folder / "network.onnx")
    except CheckpointError as error:
        return [*problems, str(error)]
    inputs = None
    if found is None:
        logger.warning(
            "neither onnx nor onnxruntime is installed: the inputs of '%s' are not checked against its manifest",
            folder / "network.onnx",
        )
    else:
        inputs = {spec.name: spec for spec in found}
        image_problems, image_input = _image_problems(manifest, inputs, model)
        problems += image_problems
        declared = {spec["name"] for spec in manifest["text"]["tensors"]}
        problems += [
            f"network.onnx takes the input {name!r} ({_dims(spec.shape[1:])}, {spec.dtype}), which the manifest "
            "does not list (image.input, text.tensors)"
            for name, spec in inputs.items()
            if name != image_input and name not in declared and name != manifest["image"]["input"]["name"]
        ]
    return problems + _text_problems(folder, manifest, inputs, model)


@contextlib.contextmanager
def _native_stderr_held() -> Iterator[None]:
    """Hold what native libraries write to the process's stderr (file descriptor 2) during the block: written out
    after it when it succeeds, logged at debug level when it raises (OpenVINO's frontends print their parse
    errors there; the error itself says what matters, in one line)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded interpreters, some test runners)
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", "replace")
            if text and failed:
                logger.debug("native messages while loading the exported network:\n%s", text.rstrip())
            elif text:
                sys.stderr.write(text)


def _export_backend(backend: str, record: BackendRecord | None = None) -> str:
    """The backend an export folder runs with: ``auto`` as for a checkpoint on the CPU (the fastest exporting
    backend that passed the checkpoint's ``record``, else the default choice), which must not be eager."""
    from lvseg.inference.backends import resolve_backend

    runs_with = f"{', '.join(exporting_backends())} or {AUTO}"
    if backend not in backend_names():
        raise LvsegError(f"unknown backend {backend!r}; an export folder runs with {runs_with}")
    resolved = resolve_backend(backend, torch.device("cpu"), record=record, exporting_only=True)
    exports = backend_spec(resolved).exports
    if backend == AUTO and not exports:
        raise LvsegError(
            f"an exported model runs with OpenVINO or ONNX Runtime, and neither is installed: {DEPLOY_EXTRA}"
        )
    if not exports:
        raise LvsegError(
            f"backend {backend!r} runs a PyTorch checkpoint; an export folder runs with "
            f"{runs_with} (or give the .ckpt it was exported from)"
        )
    return resolved


def _graph(folder: Path, backend: str, manifest: dict[str, Any] | None = None) -> Path:
    """The network file of ``folder`` that ``backend`` runs: the first of its ``graph_files`` the folder has (and
    the manifest lists, when it lists its files: a graph left by an earlier export is not run)."""
    listed = manifest.get("files") if manifest is not None else None
    for name in backend_spec(backend).graph_files:
        if (folder / name).is_file() and (not isinstance(listed, list) or name in listed):
            return folder / name
    raise CheckpointError(
        f"export folder '{folder}' has none of {', '.join(backend_spec(backend).graph_files)}, "
        f"which backend {backend!r} runs"
    )


def _text_front_end(folder: Path, manifest: dict[str, Any]) -> SegmentationModel:
    """The model rebuilt from the manifest, its text encoder holding the exported trained weights, its network NaN."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lvseg.models import create_model
    from lvseg.models.pretrained import weights_from

    try:
        with weights_from("checkpoint"):  # frozen pretrained towers from their source, as for a checkpoint
            model = create_model(manifest["model"], **manifest["model_config"])
    except (LvsegError, TypeError, ValueError) as error:
        raise CheckpointError(f"export folder '{folder}' describes a model lvseg cannot build: {error}") from None
    try:
        front_end = load_file(str(folder / FRONT_END))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"cannot read '{folder / FRONT_END}': {error}") from None
    try:
        result = model.load_state_dict(front_end, strict=False)
    except RuntimeError as error:  # shapes that do not fit
        raise CheckpointError(
            f"'{folder / FRONT_END}' does not fit model '{manifest['model']}': "
            f"{str(error).strip().splitlines()[-1][:300]}"
        ) from None
    missing = [key for key in result.missing_keys if key.startswith(FRONT_END_PREFIX)]
    if result.unexpected_keys or missing:
        raise CheckpointError(
            f"'{folder / FRONT_END}' does not fit the text encoder of model '{manifest['model']}': "
            f"missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    encoder = getattr(model, "text_encoder", None)
    kept = {id(tensor) for tensor in (encoder.parameters() if encoder is not None else [])}
    kept |= {id(tensor) for tensor in (encoder.buffers() if encoder is not None else [])}
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) not in kept and tensor.is_floating_point():
                tensor.fill_(math.nan)
    return model.strip_training_modules().eval()


def _device_type(device: str | torch.device) -> str:
    try:
        return torch.device(device).type
    except RuntimeError:
        raise LvsegError(f"device {device!r} is not a valid torch device (use 'cpu', 'cuda' or 'cuda:1')") from None


def load_export(folder: str | Path, device: str | torch.device | None = None, backend: str = "auto") -> Segmenter:
    """A :class:`Segmenter` over the export folder ``folder`` (see the module docstring), on the CPU."""
    folder = Path(folder)
    if device not in (None, "auto") and _device_type(device) != "cpu":
        raise LvsegError(f"an exported model runs on the CPU (OpenVINO / ONNX Runtime); got device {device!r}")
    manifest = read_manifest(folder)
    record = BackendRecord.from_dict(manifest.get(BACKEND_RECORD_KEY), f"export folder '{folder}'")
    backend = _export_backend(backend, record)
    graph = _graph(folder, backend, manifest)
    input_names = [manifest["image"]["input"]["name"], *(item["name"] for item in manifest["text"]["tensors"])]
    problems = []
    model: SegmentationModel | None = None
    try:
        model = _text_front_end(folder, manifest)
    except CheckpointError as error:
        problems.append(str(error))
    problems = export_problems(folder, manifest, model) + problems
    if problems or model is None:
        raise CheckpointError(
            f"export folder '{folder}' does not match its manifest ({MANIFEST}): {'; '.join(problems)}. "
            "Export the checkpoint again with `lvseg export` rather than editing or mixing export folders"
        )
    hparams = {
        "model_name": manifest["model"],
        "model_config": manifest["model_config"],
        **{key: manifest.get(key) for key in RECORDED_DATA_KEYS},
        "export": str(folder),
    }
    with _native_stderr_held():
        segmenter = Segmenter(
            model,
            hparams,
            manifest.get("metrics") or {},
            device="cpu",
            backend=backend,
            graph=graph,
            input_names=input_names,
            decision_threshold=manifest_threshold(manifest),
            backend_record=record,
        )
    logger.info("loaded the exported %s from %s (%s, %s)", manifest["model"], folder, graph.name, segmenter.backend)
    return segmenter
