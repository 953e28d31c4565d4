"""``lvseg export``: a trained checkpoint as a deployable ONNX or OpenVINO model, with its preprocessing.

The folder holds:

* ``network.onnx`` (and, for ``openvino``, ``network.xml``/``network.bin``): the segmentation network, inputs
  ``images`` (B, C, S, S) float32 in [0, 1] and the text tensors ``text_0``, ``text_1``, ... (a graph keeps only
  the inputs its network reads), output ``logits`` (B, 1, S, S); the batch axis is dynamic;
* ``text_encoder.onnx`` for a ``learned`` vocabulary: token ids (B, L) int64 -> ``text_0`` (B, L, D), with the
  vocabulary and the tokenisation rule in the manifest, so the whole model runs without lvseg;
* ``text_front_end.safetensors``: the trained weights of the model's text encoder (a ``learned`` vocabulary's
  embeddings; empty for front ends without trained weights), so that ``lvseg serve/predict/evaluate`` can run the
  folder itself (:mod:`lvseg.inference.exported`): lvseg reads the reports as the checkpoint did and the exported
  network segments;
* ``lvseg_export.json``: the manifest. Image: size S, channels, how to read it (:func:`lvseg.data.images.read_image`:
  [0, 1], grayscale replicated to 3 channels, alpha dropped), bicubic antialiased resize to S x S; the sigmoid
  and the model's decision threshold (``decision_threshold``, e.g. 0.5); for each text tensor its shape and
  dtype; for front ends that are not exported (frozen Hugging Face or CLIP towers, the report vector) exactly
  what computes the tensors; ``network.inputs``: the inputs ``network.onnx`` itself takes (read back from the
  graph), and ``sha256``: the SHA-256 of every file listed in ``files``, which loading checks.

Every file is written with mode 0600 and appears atomically (written under a temporary name in the folder, then
renamed): a folder never holds half a graph, and the manifest, written last, lists only complete files.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lvseg.data.provenance import RECORDED_DATA_KEYS
from lvseg.errors import LvsegError, first_line
from lvseg.inference.backends import INT8_GRAPH_FILES, example_reports, export_onnx, flatten_text_input, quiet_warnings
from lvseg.inference.loading import load_checkpoint_explained
from lvseg.inference.manifest import (
    BACKEND_RECORD_KEY,
    EXPORT_VERSION,
    FORMATS,
    FRONT_END,
    FRONT_END_PREFIX,
    HASHES_KEY,
    MANIFEST,
    THRESHOLD_KEY,
    file_hashes,
)

logger = logging.getLogger(__name__)

#: The graph files an export may write besides ``network.onnx``; one a new export does not write is removed, so a
#: folder exported again in another format keeps no graph of the old model.
OPTIONAL_GRAPHS = ("network.xml", "network.bin", "text_encoder.onnx", *INT8_GRAPH_FILES)


def _publish(staging: Path, out: Path) -> list[str]:
    """Move every file of the folder ``staging`` into ``out``: mode 0600, flushed to disk, then renamed over its
    name there (atomic on POSIX); returns their names, sorted."""
    names = []
    for path in sorted(staging.iterdir()):
        if not path.is_file():
            continue
        os.chmod(path, 0o600)
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(path, out / path.name)
        names.append(path.name)
    return names


def _convert_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """``network.onnx`` -> OpenVINO IR (``.xml`` + ``.bin``) in fp32; :class:`LvsegError` in one line."""
    try:
        import openvino
    except ImportError:
        raise LvsegError("--format openvino needs OpenVINO: pip install 'lvseg[deploy]'") from None
    try:
        # fp32 weights: save_model would otherwise compress them to fp16 (probabilities off by ~2e-4)
        openvino.save_model(openvino.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
        raise LvsegError(f"OpenVINO cannot convert the exported network to its format: {first_line(error)}") from None


def _tensor_spec(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    return {
        "name": name,
        "shape": ["batch", *list(tensor.shape[1:])],
        "dtype": str(tensor.dtype).removeprefix("torch."),
    }


def _export_learned_text_encoder(encoder: Any, path: Path) -> dict[str, Any]:
    """Export a ``learned`` encoder's ids -> features path; returns its manifest entry."""
    from lvseg.text.tokenize import PAD_ID, TOKEN_REGEX, UNK_ID

    class IdsToFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.encoder.features_from_ids(ids)

    ids = encoder.encode_ids(["an example report"])  # a learned vocabulary reads any text
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with torch.no_grad(), quiet_warnings():
            torch.onnx.export(
                IdsToFeatures().eval(),
                (ids,),
                str(path),
                input_names=["token_ids"],
                output_names=["text_0"],
                dynamic_axes={"token_ids": {0: "batch"}, "text_0": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return {
        "type": "learned",
        "exported": path.name,
        "input": {"name": "token_ids", "shape": ["batch", encoder.max_length], "dtype": "int64"},
        "tokenize": {
            "lowercase": True,
            "regex": TOKEN_REGEX,
            "unknown_id": UNK_ID,
            "pad_id": PAD_ID,
            "max_length": encoder.max_length,
            "rule": "ids = [vocab.index(token) if token in vocab else unknown_id for token in "
            "re.findall(regex, text.lower())][:max_length] (an empty list becomes [unknown_id]), "
            "then padded with pad_id to max_length",
        },
        "vocab": list(encoder.vocab),
    }


def export_model(checkpoint: str | Path, out: str | Path, fmt: str = "onnx") -> Path:
    """Export ``checkpoint`` into the folder ``out`` (see the module docstring); returns the manifest's path."""
    from lvseg.files import atomic_write_text

    if fmt not in FORMATS:
        raise LvsegError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LvsegError(f"--out '{out}' is a file; expected a folder for the exported model")
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint_explained(checkpoint)
    model = loaded.model.eval()
    size, channels = int(model.config.get("img_size", 224)), int(model.config.get("in_channels", 3))
    images = torch.rand(1, channels, size, size)
    with torch.no_grad():
        text_input = model.encode_text(example_reports(model, 1)) if model.requires_text else None
    with tempfile.TemporaryDirectory(prefix=".lvseg-export-", dir=out) as staging_name:
        staging = Path(staging_name)  # the graphs, written here and moved into `out` once complete
        manifest = _export_into(loaded, model, checkpoint, out, staging, fmt, images, text_input)
    path = out / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    logger.info("exported %s to %s (%s)", manifest["model"], out, ", ".join(manifest["files"]))
    return path


def _export_into(
    loaded: Any,
    model: Any,
    checkpoint: str | Path,
    out: Path,
    staging: Path,
    fmt: str,
    images: torch.Tensor,
    text_input: Any,
) -> dict[str, Any]:
    """Write the folder's files (graphs through ``staging``) and return its manifest (not yet written)."""
    from safetensors.torch import save

    from lvseg.files import atomic_write_bytes
    from lvseg.inference.exported import graph_inputs
    from lvseg.text.learned import LearnedTextEncoder

    size, channels = int(images.shape[-1]), int(images.shape[1])
    names = export_onnx(model, images, text_input, staging / "network.onnx")
    tensors, _ = flatten_text_input(text_input)
    network_inputs = graph_inputs(staging / "network.onnx")
    front_end_weights = {
        key: value.detach().cpu().contiguous()
        for key, value in model.inference_state_dict().items()
        if key.startswith(FRONT_END_PREFIX)
    }
    atomic_write_bytes(out / FRONT_END, save(front_end_weights, metadata={"lvseg_export": str(EXPORT_VERSION)}))
    text_entry: dict[str, Any]
    encoder = getattr(model, "text_encoder", None)
    if not model.requires_text:
        text_entry = {"type": "none", "note": "image-only model: no text input"}
    elif isinstance(encoder, LearnedTextEncoder):
        text_entry = _export_learned_text_encoder(encoder, staging / "text_encoder.onnx")
    else:
        front_end = (
            encoder.config()
            if encoder is not None and hasattr(encoder, "config")
            else {"model": loaded.hparams.get("model_name"), "model_config": dict(model.config)}
        )
        text_entry = {
            "type": front_end.get("type", "model"),
            "exported": None,
            "config": front_end,
            "how": "these tensors are what lvseg computes with lvseg.load_model(checkpoint).model"
            ".encode_text(reports) (a frozen pretrained tower or a report parser: not exported); "
            "feed them with the shapes and dtypes listed",
        }
    if fmt == "openvino":
        _convert_to_openvino(staging / "network.onnx", staging / "network.xml")
    record = loaded.backend_record
    for name, content in (record.graphs.get("openvino-int8", {}) if record is not None else {}).items():
        atomic_write_bytes(staging / name, content)  # the checkpoint's quantised graph, tuned for it
    published = _publish(staging, out)
    for stale in OPTIONAL_GRAPHS:
        if stale not in published and (out / stale).is_file():
            (out / stale).unlink()
            logger.info("removed %s, left in %s by an earlier export", stale, out)
    files = ["network.onnx", FRONT_END, *(name for name in published if name != "network.onnx")]
    threshold = float(model.decision_threshold)
    return {
        "lvseg_export": EXPORT_VERSION,
        "format": fmt,
        "files": files,
        "model": loaded.hparams.get("model_name"),
        "model_config": dict(model.config),
        THRESHOLD_KEY: threshold,
        **{key: loaded.hparams.get(key) for key in RECORDED_DATA_KEYS},
        "checkpoint": str(Path(checkpoint).name),
        "metrics": loaded.metrics,
        "image": {
            "input": _tensor_spec("images", images),
            "size": size,
            "channels": channels,
            "dtype": "float32",
            "values": "[0, 1]: 8-bit / 255, 16-bit / 65535; grayscale replicated to 3 channels, alpha dropped "
            "(lvseg.data.images.read_image)",
            "resize": f"bicubic, antialiased, to {size} x {size} (torch.nn.functional.interpolate, clamped to [0, 1])",
        },
        "text": {**text_entry, "tensors": [_tensor_spec(name, tensor) for name, tensor in zip(names[1:], tensors)]},
        "output": {
            "name": "logits",
            "shape": ["batch", int(getattr(model, "output_classes", 1)), size, size],  # channel k: class_table[k]
            "postprocess": f"probability = sigmoid(logits); lesion where probability > {threshold:g} "
            f"({THRESHOLD_KEY}); resize the probability (bilinear) to the image's own size "
            "before thresholding",
        },
        "network": {"file": "network.onnx", "inputs": [spec.to_json() for spec in network_inputs or []]},
        # The checkpoint's own accuracy guard of its backends (lvseg.backend_record): auto follows it here too.
        BACKEND_RECORD_KEY: record.to_dict() if record is not None else None,
        HASHES_KEY: file_hashes(out, files),
    }
