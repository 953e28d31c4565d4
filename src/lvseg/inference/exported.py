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
    FORMAT_FILES,
    FRONT_END,
    FRONT_END_PREFIX,
    HASHES_KEY,
    MANIFEST,
    NETWORK_FILE,
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
class TensorSpec:
    """One input or output of a graph: its ``name``, ``shape`` (an int per fixed axis, the axis's name for a
    dynamic one, e.g. ``("batch", 3, 224, 224)``; ``"?"`` for OpenVINO's unnamed dynamic axes) and ``dtype`` (a
    NumPy name: ``float32``, ``int64``, ``bool``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    #: Other names of the same tensor (an OpenVINO port keeps the ONNX input's name beside names its conversion gave).
    aliases: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphSignature:
    """What a graph file takes and gives (weights excluded)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def graph_signature(path: str | Path) -> GraphSignature | None:
    """The inputs and outputs of the graph at ``path``: an ONNX file (read with the ``onnx`` package, else an ONNX
    Runtime session's metadata) or an OpenVINO IR ``.xml`` (read, not compiled); None when no installed package
    reads it. :class:`CheckpointError` in one line when the file is not a readable graph."""
    path = Path(path)
    if path.suffix == ".xml":
        return _openvino_signature(path)
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

        def spec(item: Any) -> TensorSpec:
            tensor = item.type.tensor_type
            shape = tuple(
                int(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim
            )
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else "?"
            return TensorSpec(item.name, shape, dtype)

        return GraphSignature(
            [spec(item) for item in graph.input if item.name not in weights], [spec(item) for item in graph.output]
        )
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types
        raise CheckpointError(f"{path.name}: not a readable ONNX graph ({first_line(error)})") from None

    def ort_spec(item: Any) -> TensorSpec:
        shape = tuple(dim if isinstance(dim, int) else str(dim) for dim in item.shape)
        return TensorSpec(item.name, shape, _ORT_TYPES.get(item.type, item.type))

    return GraphSignature(
        [ort_spec(item) for item in session.get_inputs()], [ort_spec(item) for item in session.get_outputs()]
    )


def _openvino_signature(path: Path) -> GraphSignature | None:
    try:
        import openvino
    except ImportError:
        return None
    try:
        with _native_stderr_held():
            network = openvino.Core().read_model(str(path))
    except Exception as error:  # OpenVINO raises RuntimeError and its own types
        raise CheckpointError(f"{path.name}: not a readable OpenVINO model ({first_line(error)})") from None

    def spec(port: Any) -> TensorSpec:
        shape = tuple(dim.get_length() if dim.is_static else "?" for dim in port.get_partial_shape())
        try:
            dtype = str(port.get_element_type().to_dtype())
        except (RuntimeError, TypeError):
            dtype = "?"
        names = sorted(port.get_names())
        return TensorSpec(
            port.get_any_name(), shape, dtype, tuple(name for name in names if name != port.get_any_name())
        )

    return GraphSignature([spec(port) for port in network.inputs], [spec(port) for port in network.outputs])


def graph_inputs(path: str | Path) -> list[TensorSpec] | None:
    """The inputs of the graph at ``path`` (:func:`graph_signature`); None when no installed package reads it."""
    signature = graph_signature(path)
    return None if signature is None else signature.inputs


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
    manifest: dict[str, Any], inputs: dict[str, TensorSpec], model: SegmentationModel | None
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
    folder: Path, manifest: dict[str, Any], inputs: dict[str, TensorSpec] | None, model: SegmentationModel | None
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
        said = text.get("input")
        declared = _declared_axes(said)
        if ids and declared is not None and not _fits(declared, ids[0].shape[1:]):
            problems.append(f"text.input: manifest says {_dims(declared)}, {exported} takes {_dims(ids[0].shape[1:])}")
        if ids and isinstance(said, dict) and said.get("name") != ids[0].name:
            problems.append(f"text.input.name: manifest says {said.get('name')!r}, {exported} takes {ids[0].name!r}")
    return problems


def _listed_files(manifest: dict[str, Any]) -> list[str]:
    listed = manifest.get("files")
    return [name for name in listed if isinstance(name, str)] if isinstance(listed, list) else []


def _format_problems(manifest: dict[str, Any]) -> list[str]:
    """The manifest's ``format`` against the formats lvseg exports and the graph files its ``files`` list."""
    fmt = manifest.get("format")
    if fmt not in FORMAT_FILES:
        return [f"format: manifest says {fmt!r}; expected one of {', '.join(FORMAT_FILES)}"]
    listed = _listed_files(manifest)
    missing = [name for name in FORMAT_FILES[fmt] if name not in listed]
    return [
        f"format: manifest says {fmt!r}, whose folder holds {', '.join(missing)}, which 'files' does not list"
    ] * bool(missing)


def _statistics_problems(manifest: dict[str, Any], model: SegmentationModel | None) -> list[str]:
    """The training images' statistics (the image check of :mod:`lvseg.inference.consistency`) against the model
    they were measured for: a malformed record, or one made at another size or channel count."""
    from lvseg.data.input_statistics import InputStatistics

    record = manifest.get("input_statistics")
    if record is None:
        return []
    statistics = InputStatistics.from_dict(record)
    if statistics is None:
        return ["input_statistics (the training images' figures the image check compares with) is malformed"]
    config = model.config if model is not None else manifest["model_config"]
    problems = []
    for key, config_key, default in (("img_size", "img_size", 224), ("channels", "in_channels", 3)):
        if getattr(statistics, key) != config.get(config_key, default):
            problems.append(
                f"input_statistics.{key}: manifest says {getattr(statistics, key)!r}, the model's {config_key} is "
                f"{config.get(config_key, default)!r}"
            )
    return problems


def _network_entry_problems(manifest: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]] | None]:
    """The manifest's ``network`` entry (the inputs ``network.onnx`` takes, read back from it at export time)
    against its own image and text declarations; returns the problems and the declared inputs (None: the entry
    is absent, from an older lvseg, or malformed)."""
    network = manifest.get("network")
    if network is None:
        return [], None
    inputs = network.get("inputs") if isinstance(network, dict) else None
    if not isinstance(inputs, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str) for item in inputs
    ):
        return ["network.inputs is malformed; expected a list of {name, shape, dtype}"], None
    problems = []
    if network.get("file") != NETWORK_FILE:
        problems.append(
            f"network.file: manifest says {network.get('file')!r}; an export folder's network is {NETWORK_FILE!r}"
        )
    image_input = manifest["image"]["input"]
    declared = {image_input["name"]: ("image.input", image_input)}
    for index, spec in enumerate(manifest["text"]["tensors"]):
        declared.setdefault(spec["name"], (f"text.tensors[{index}]", spec))
    names = [item["name"] for item in inputs]
    if image_input["name"] not in names:
        problems.append(f"network.inputs does not list the image input {image_input['name']!r} (image.input.name)")
    for index, item in enumerate(inputs):
        if item["name"] not in declared:
            problems.append(
                f"network.inputs[{index}] is {item['name']!r}, which is neither image.input nor one of text.tensors"
            )
            continue
        where, spec = declared[item["name"]]
        if item.get("dtype") != spec.get("dtype"):
            problems.append(
                f"network.inputs[{index}] ({item['name']!r}): dtype {item.get('dtype')!r}, {where} says "
                f"{spec.get('dtype')!r}"
            )
        said, listed = _declared_axes(spec), _declared_axes(item)
        if said is None or listed is None or not _fits(said, listed):  # the graph's dynamic axes take any length
            problems.append(
                f"network.inputs[{index}] ({item['name']!r}): shape {item.get('shape')!r}, {where} says "
                f"{spec.get('shape')!r}"
            )
    return problems, inputs


def _signature_problems(name: str, signature: GraphSignature, inputs: list[dict[str, Any]], output: Any) -> list[str]:
    """A graph file's inputs against ``inputs`` (the manifest's ``network.inputs``: names, shapes, dtypes) and
    its outputs against the manifest's ``output`` (name and shape)."""
    problems = []
    expected = {item["name"]: item for item in inputs}
    actual = {_known_name(spec, expected): spec for spec in signature.inputs}
    for input_name, item in expected.items():
        spec = actual.get(input_name)
        if spec is None:
            problems.append(
                f"{name} has no input {input_name!r}, which network.inputs lists (its inputs: "
                f"{', '.join(actual) or 'none'})"
            )
            continue
        declared = _declared_axes(item)
        if declared is None or not _fits(declared, spec.shape[1:]):
            problems.append(
                f"{name}: input {input_name!r} is {_dims(spec.shape[1:])}, network.inputs says "
                f"{_dims(declared) if declared is not None else repr(item.get('shape'))}"
            )
        if spec.dtype not in ("?", item.get("dtype")):
            problems.append(f"{name}: input {input_name!r} is {spec.dtype}, network.inputs says {item.get('dtype')!r}")
    problems += [
        f"{name} takes the input {input_name!r} ({_dims(spec.shape[1:])}, {spec.dtype}), which network.inputs "
        "does not list"
        for input_name, spec in actual.items()
        if input_name not in expected
    ]
    output_name = output.get("name") if isinstance(output, dict) else None
    given = {_known_name(spec, [output_name]): spec for spec in signature.outputs}
    if output_name not in given:
        problems.append(
            f"{name} has no output {output_name!r}, which output.name says (its outputs: {', '.join(given) or 'none'})"
        )
    else:
        declared = _declared_axes(output)
        if declared is None or not _fits(declared, given[output_name].shape[1:]):
            problems.append(
                f"{name}: output {output_name!r} is {_dims(given[output_name].shape[1:])}, output.shape says "
                f"{_dims(declared) if declared is not None else repr(output.get('shape'))}"
            )
    return problems


def _known_name(spec: TensorSpec, known: Any) -> str:
    """The name of ``spec`` that ``known`` holds (one of its aliases), else its own."""
    return next((name for name in (spec.name, *spec.aliases) if name in known), spec.name)


def _graph_files() -> list[str]:
    """Every graph file an exporting backend may run, in the order the backends name them."""
    names: list[str] = []
    for backend in exporting_backends():
        names += [name for name in backend_spec(backend).graph_files if name not in names]
    return names


def export_problems(folder: str | Path, manifest: dict[str, Any], model: SegmentationModel | None) -> list[str]:
    """Everything wrong with an export folder whose manifest :func:`read_manifest` accepted, one line each: its
    files against their recorded SHA-256 (:func:`hash_problems`); its format, ``network`` entry and training-image
    statistics against the rest of the manifest; its declared image and text inputs and vocabulary against
    ``network.onnx``'s actual inputs and against ``model``, the model rebuilt from ``model_config`` (None when it
    could not be built: those checks are skipped); and every graph a backend may run (``network.onnx``, the
    OpenVINO IRs) against the inputs ``network`` lists and the ``output`` declared."""
    folder = Path(folder)
    problems = hash_problems(folder, manifest) + _format_problems(manifest) + _statistics_problems(manifest, model)
    entry_problems, network_inputs = _network_entry_problems(manifest)
    problems += entry_problems
    try:
        found = graph_signature(folder / NETWORK_FILE)
    except CheckpointError as error:
        return [*problems, str(error)]
    inputs = None
    if found is None:
        logger.warning(
            "neither onnx nor onnxruntime is installed: the inputs of '%s' are not checked against its manifest",
            folder / NETWORK_FILE,
        )
    else:
        inputs = {spec.name: spec for spec in found.inputs}
        image_problems, image_input = _image_problems(manifest, inputs, model)
        problems += image_problems
        if network_inputs is None:  # an older manifest: the graph's inputs against the image and text declarations
            declared = {spec["name"] for spec in manifest["text"]["tensors"]}
            problems += [
                f"{NETWORK_FILE} takes the input {name!r} ({_dims(spec.shape[1:])}, {spec.dtype}), which the "
                "manifest does not list (image.input, text.tensors)"
                for name, spec in inputs.items()
                if name != image_input and name not in declared and name != manifest["image"]["input"]["name"]
            ]
            network_inputs = [spec.to_json() for spec in found.inputs]
    if network_inputs is not None:
        listed = _listed_files(manifest)
        for name in _graph_files():
            if not (folder / name).is_file() or (listed and name not in listed):
                continue
            try:
                signature = found if name == NETWORK_FILE else graph_signature(folder / name)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            if signature is not None:
                problems += _signature_problems(name, signature, network_inputs, manifest.get("output"))
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
