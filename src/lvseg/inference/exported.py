"""Running a folder written by ``lvseg export``: ``load_model(folder)``, ``lvseg serve/predict/evaluate -c folder``.

The exported network (``network.xml`` for OpenVINO when the folder has it, else ``network.onnx``) segments;
lvseg reads the reports exactly as the checkpoint did: the model is rebuilt from the manifest's
``model_config`` (frozen pretrained towers from where they were found, as for a checkpoint) and its text encoder
gets the trained weights of ``text_front_end.safetensors``. The rest of that rebuilt model, the network, is
never run: its floating-point weights are set to NaN so that any use of them shows at once. The decision
threshold is the manifest's ``decision_threshold`` (the exported model's; 0.5 for folders written before
manifests recorded it).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lvseg.data.provenance import RECORDED_DATA_KEYS
from lvseg.errors import CheckpointError, LvsegError
from lvseg.inference.backend_choice import AUTO, DEPLOY_EXTRA, backend_names, backend_spec, exporting_backends
from lvseg.inference.manifest import EXPORT_VERSION, FRONT_END, FRONT_END_PREFIX, MANIFEST, THRESHOLD_KEY
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


def _export_backend(backend: str) -> str:
    """The backend an export folder runs with: ``auto`` as for a checkpoint on the CPU, which must not be eager."""
    from lvseg.inference.backends import resolve_backend

    runs_with = f"{', '.join(exporting_backends())} or {AUTO}"
    if backend not in backend_names():
        raise LvsegError(f"unknown backend {backend!r}; an export folder runs with {runs_with}")
    resolved = resolve_backend(backend, torch.device("cpu"))
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


def _graph(folder: Path, backend: str) -> Path:
    """The network file of ``folder`` that ``backend`` runs: the first of its ``graph_files`` the folder has."""
    for name in backend_spec(backend).graph_files:
        if (folder / name).is_file():
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
    backend = _export_backend(backend)
    graph = _graph(folder, backend)
    input_names = [manifest["image"]["input"]["name"], *(item["name"] for item in manifest["text"]["tensors"])]
    model = _text_front_end(folder, manifest)
    hparams = {
        "model_name": manifest["model"],
        "model_config": manifest["model_config"],
        **{key: manifest.get(key) for key in RECORDED_DATA_KEYS},
        "export": str(folder),
    }
    segmenter = Segmenter(
        model,
        hparams,
        manifest.get("metrics") or {},
        device="cpu",
        backend=backend,
        graph=graph,
        input_names=input_names,
        decision_threshold=manifest_threshold(manifest),
    )
    logger.info("loaded the exported %s from %s (%s, %s)", manifest["model"], folder, graph.name, segmenter.backend)
    return segmenter
