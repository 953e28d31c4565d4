"""Measuring a checkpoint's backends: the accuracy guard and batch-1 latency of each one on that checkpoint's
images, recorded with the checkpoint (:mod:`lvseg.backend_record`) for ``auto`` to read.

``lvseg train`` runs :func:`tune_checkpoint` on the validation split when training ends; ``lvseg tune-backend
--checkpoint C --data D`` on request (D's validation split, its training split for int8 calibration). Every
backend's masks are held to the same rule (:data:`~lvseg.backend_record.GUARD_RULE`) against fp32
eager on every image. Two backends are set up here for the checkpoint before they are measured:

* ``bf16-mixed``: the ``bf16`` path with a few modules in fp32. Which modules matter is measured, not assumed:
  each round, every module of the network (the model's children, one level into module lists) not yet kept
  is tried in fp32 beside those already kept, on the images that agree worst so far, and the most helpful one
  is kept, until the guard passes on every image (at most :data:`MAX_FP32_MODULES`). On LViT trained on MoNuSeg the one module that
  matters is the first patch embedding, not the decoder's last stage.
* ``openvino-int8``: post-training static quantisation with NNCF (``nncf.quantize_with_accuracy_control``;
  calibration on up to ``calibration_images`` training images, the guard's lowest per-image Dice as the
  accuracy metric, at most ``1 - GUARD_MIN_DICE`` below the fp32 graph's), which keeps the operations whose
  quantisation costs most in floating point until the metric holds. The quantised graph is stored with the
  record, as it cannot be rebuilt without the calibration images.

The guard runs on the same images the two searches used (the validation split): the record says how many.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lvseg.backend_record import GUARD_MIN_DICE, BackendRecord, BackendTrial, hardware_description
from lvseg.errors import LvsegError, first_line
from lvseg.inference.backend_choice import backend_spec, backend_specs
from lvseg.inference.backends import (
    INT8_GRAPH_FILES,
    Bf16MixedRunner,
    NetworkRunner,
    agreement,
    export_onnx,
    flatten_text_input,
    make_runner,
    quiet_warnings,
)

if TYPE_CHECKING:
    from lvseg.models.base import SegmentationModel

logger = logging.getLogger(__name__)

#: The most modules ``bf16-mixed`` keeps in fp32 before it is recorded as failing the guard.
MAX_FP32_MODULES = 6
#: Images of the worst plain-bf16 agreement the sensitivity of each module is measured on.
PROBE_IMAGES = 8
#: Rounds of NNCF's accuracy restorer (operations put back to floating point, then re-validated) before int8 is
#: recorded as failing: each round re-runs the guard images, and later rounds rarely help (RESULTS.md).
INT8_MAX_ROUNDS = 10
#: Backends not tried unless asked for: ``compile`` compiles for minutes per model on a CPU.
SLOW_TO_SET_UP = ("compile",)
BATCH = 16


def default_backends(device: torch.device) -> list[str]:
    """The backends a tuning tries on ``device``: every registered one that runs there and is installed, except
    those slow to set up (:data:`SLOW_TO_SET_UP`)."""
    return [
        spec.name
        for spec in backend_specs()
        if spec.runs_on(device.type) and spec.available() and spec.name not in SLOW_TO_SET_UP
    ]


class _Batches:
    """A fixed image set (N, C, S, S) with its text inputs, run through a runner in batches of :data:`BATCH`."""

    def __init__(self, model: SegmentationModel, images: torch.Tensor, texts: Sequence[str]) -> None:
        self.model, self.images, self.texts = model, images, list(texts)
        with torch.inference_mode():
            self.text_inputs = [
                model.encode_text(self.texts[start : start + BATCH]) if model.requires_text else None
                for start in range(0, len(self.texts), BATCH)
            ]

    def __len__(self) -> int:
        return len(self.texts)

    def probabilities(
        self, runner: Callable[[torch.Tensor, Any], torch.Tensor], rows: Sequence[int] | None = None
    ) -> np.ndarray:
        """(N, 1, S, S) probabilities of ``runner`` (only ``rows`` of the set when given)."""
        outputs = []
        with torch.inference_mode():
            if rows is None:
                for index, text_input in enumerate(self.text_inputs):
                    images = self.images[index * BATCH : (index + 1) * BATCH]
                    outputs.append(torch.sigmoid(runner(images, text_input).float()).cpu().numpy())
            else:
                for start in range(0, len(rows), BATCH):
                    chosen = list(rows[start : start + BATCH])
                    text_input = (
                        self.model.encode_text([self.texts[i] for i in chosen]) if self.model.requires_text else None
                    )
                    outputs.append(torch.sigmoid(runner(self.images[chosen], text_input).float()).cpu().numpy())
        return np.concatenate(outputs)

    def first(self) -> tuple[torch.Tensor, Any]:
        """The first image (1, C, S, S) and its text input: the example an export and the latency use."""
        with torch.inference_mode():
            return self.images[:1], self.model.encode_text(self.texts[:1]) if self.model.requires_text else None


def batch1_latency_ms(
    runner: Callable[[torch.Tensor, Any], torch.Tensor], example: tuple[torch.Tensor, Any], repeats: int
) -> float:
    """Median batch-1 time of ``runner`` in milliseconds over ``repeats`` calls after two warm-up calls."""
    images, text_input = example
    times = []
    with torch.inference_mode():
        for call in range(repeats + 2):
            started = time.perf_counter()
            runner(images, text_input)
            if call >= 2:
                times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def per_image_dice(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) mask Dice between ``reference`` and ``candidate`` probabilities (N, ...), 1 for two empty masks."""
    a = reference.reshape(len(reference), -1) > threshold
    b = candidate.reshape(len(candidate), -1) > threshold
    total = a.sum(1) + b.sum(1)
    both = (a & b).sum(1)
    return np.where(total == 0, 1.0, 2.0 * both / np.maximum(total, 1))


def tunable_modules(model: torch.nn.Module) -> list[str]:
    """The modules ``bf16-mixed`` may keep in fp32: the network's children (the text front end excluded, it
    runs in fp32 anyway), with module lists and sequentials opened one level."""
    names = []
    for name, child in model.named_children():
        if name == "text_encoder":
            continue
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) and len(child) > 1:
            names += [f"{name}.{index}" for index in range(len(child))]
        elif any(True for _ in child.parameters()):
            names.append(name)
    return names


class _Fp32Runner(NetworkRunner):
    """The reference: the network in fp32 on every device (``eager`` autocasts on CUDA)."""

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


class _Tuning:
    """One tuning run: the reference, then one trial per backend (see the module docstring)."""

    def __init__(
        self,
        model: SegmentationModel,
        device: torch.device,
        batches: _Batches,
        threshold: float,
        repeats: int,
        calibration: _Batches | None,
    ) -> None:
        self.model, self.device, self.batches, self.threshold, self.repeats = model, device, batches, threshold, repeats
        self.calibration = calibration
        self.example = batches.first()
        self.graphs: dict[str, dict[str, bytes]] = {}
        self._export: tuple[Path, list[str]] | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self.reference = batches.probabilities(_Fp32Runner(model, device))

    def trial(self, backend: str) -> BackendTrial:
        try:
            if backend == "eager":
                runner: NetworkRunner = NetworkRunner(self.model, self.device)
                return BackendTrial("eager", True, 1.0, 0.0, batch1_latency_ms(runner, self.example, self.repeats))
            if backend == "bf16-mixed":
                return self._mixed()
            if backend == "openvino-int8":
                return self._int8()
            if backend_spec(backend).exports:
                graph, input_names = self._exported()
                runner = make_runner(backend, self.model, self.device, graph=graph, input_names=input_names)
            else:
                runner = make_runner(backend, self.model, self.device, example=self.example)
            return self._measure(backend, runner)
        except (LvsegError, RuntimeError, ValueError, ImportError) as error:
            logger.warning("backend %s could not run on this checkpoint: %s", backend, first_line(error))
            return BackendTrial(backend, False, error=first_line(error, 200))

    def close(self) -> None:
        """Remove the exported network's temporary folder."""
        if self._folder is not None:
            self._folder.cleanup()
            self._folder, self._export = None, None

    def _exported(self) -> tuple[Path, list[str]]:
        """The network exported to ONNX once for every exporting backend of the run: (path, input names)."""
        if self._export is None:
            self._folder = tempfile.TemporaryDirectory(prefix="lvseg-tune-")
            path = Path(self._folder.name) / "network.onnx"
            self._export = (path, export_onnx(self.model, *self.example, path))
        return self._export

    def _measure(self, backend: str, runner: Callable[[torch.Tensor, Any], torch.Tensor], **extra: Any) -> BackendTrial:
        probabilities = self.batches.probabilities(runner)
        guard = agreement(self.reference, probabilities, self.threshold)
        latency = batch1_latency_ms(runner, self.example, self.repeats)
        passed = guard["min_dice"] >= GUARD_MIN_DICE
        logger.info(
            "backend %s: lowest Dice %.4f (%s), %.1f ms",
            backend,
            guard["min_dice"],
            "passed" if passed else "failed",
            latency,
        )
        return BackendTrial(backend, passed, guard["min_dice"], guard["max_abs_diff"], latency, **extra)

    def _mixed_dice(self, fp32_modules: Sequence[str], rows: Sequence[int] | None = None) -> np.ndarray:
        """Per-image Dice against the reference of bf16 with ``fp32_modules`` kept in fp32 (``rows`` only)."""
        runner = Bf16MixedRunner(self.model, self.device, tuple(fp32_modules))
        try:
            reference = self.reference if rows is None else self.reference[list(rows)]
            return per_image_dice(reference, self.batches.probabilities(runner, rows), self.threshold)
        finally:
            runner.release()

    def _mixed(self) -> BackendTrial:
        """Greedy forward selection: each round keeps in fp32 the module that most raises the lowest Dice on
        the images that currently agree worst, re-measured with the modules already kept (one module's error
        can hide every other's), until the guard passes, no module helps, or MAX_FP32_MODULES are kept."""
        kept: list[str] = []
        dice = self._mixed_dice(kept)
        candidates = tunable_modules(self.model)
        while dice.min() < GUARD_MIN_DICE and len(kept) < MAX_FP32_MODULES:
            probe = [int(i) for i in np.argsort(dice, kind="stable")[:PROBE_IMAGES]]
            floor = float(dice[probe].min())
            scores = [
                (float(self._mixed_dice([*kept, name], probe).min()), name) for name in candidates if name not in kept
            ]
            if not scores:
                break
            gain, name = max(scores)
            if gain <= floor:
                break  # no module lifts the worst image
            kept.append(name)
            dice = self._mixed_dice(kept)
            logger.info("bf16-mixed: fp32 %s -> lowest Dice %.4f", ", ".join(kept), dice.min())
        runner = Bf16MixedRunner(self.model, self.device, tuple(kept))
        try:
            return self._measure("bf16-mixed", runner, fp32_modules=tuple(kept))
        finally:
            runner.release()

    def _int8(self) -> BackendTrial:
        try:
            import nncf
            import openvino
        except ImportError:
            raise LvsegError("openvino-int8 needs OpenVINO and NNCF: pip install 'lvseg[deploy]'") from None
        if self.calibration is None:
            raise LvsegError("openvino-int8 needs calibration images (the training split); none were given")
        folder = tempfile.TemporaryDirectory(prefix="lvseg-int8-")
        try:
            onnx_path, input_names = self._exported()
            core = openvino.Core()
            network = core.read_model(str(onnx_path))
            graph_inputs = {name for port in network.inputs for name in port.get_names()}

            def feeds(batches: _Batches) -> list[dict[str, np.ndarray]]:
                items = []
                for index in range(len(batches)):
                    images, text_input = (
                        batches.images[index : index + 1],
                        batches.model.encode_text(batches.texts[index : index + 1])
                        if batches.model.requires_text
                        else None,
                    )
                    tensors, _ = flatten_text_input(text_input)
                    values = dict(zip(input_names, [images, *tensors]))
                    items.append(
                        {name: value.detach().numpy() for name, value in values.items() if name in graph_inputs}
                    )
                return items

            with torch.inference_mode():
                calibration, validation = feeds(self.calibration), feeds(self.batches)
            reference = self.reference

            def lowest_dice(compiled: Any, indices: Any) -> tuple[float, list[float]]:
                output = compiled.output(0)
                values = []
                for index in indices:
                    logits = np.asarray(compiled(validation[index])[output])
                    values.append(
                        float(
                            per_image_dice(reference[index : index + 1], 1.0 / (1.0 + np.exp(-logits)), self.threshold)[
                                0
                            ]
                        )
                    )
                return min(values), values

            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            with quiet_warnings():
                quantised = nncf.quantize_with_accuracy_control(
                    network,
                    nncf.Dataset(calibration),
                    nncf.Dataset(list(range(len(validation)))),
                    validation_fn=lowest_dice,
                    max_drop=1.0 - GUARD_MIN_DICE,
                    drop_type=nncf.DropType.ABSOLUTE,
                    subset_size=len(calibration),
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                        max_num_iterations=INT8_MAX_ROUNDS
                    ),
                )
            xml, weights = (Path(folder.name) / name for name in INT8_GRAPH_FILES)
            openvino.save_model(quantised, str(xml), compress_to_fp16=False)
            self.graphs["openvino-int8"] = {xml.name: xml.read_bytes(), weights.name: weights.read_bytes()}
        finally:
            folder.cleanup()
        operations = [op.get_type_name() for op in quantised.get_ordered_ops()]
        record = BackendRecord((), 0, "", {}, graphs=self.graphs)
        details = {
            "input_names": input_names,
            "calibration_images": len(calibration),
            "quantisers": operations.count("FakeQuantize"),
        }
        runner = make_runner("openvino-int8", self.model, self.device, record=_with_trial(record, details))
        return self._measure("openvino-int8", runner, details=details)


def _with_trial(record: BackendRecord, details: dict[str, Any]) -> BackendRecord:
    """``record`` with a passing placeholder trial of openvino-int8, so its runner can be built to be measured."""
    return BackendRecord((BackendTrial("openvino-int8", True, details=details),), 0, "", {}, graphs=record.graphs)


def tune_backends(
    model: SegmentationModel,
    images: torch.Tensor,
    texts: Sequence[str],
    data: str,
    device: torch.device | str = "cpu",
    backends: Sequence[str] | None = None,
    calibration: tuple[torch.Tensor, Sequence[str]] | None = None,
    repeats: int = 10,
    threshold: float | None = None,
) -> BackendRecord:
    """Measure ``backends`` (default: :func:`default_backends`) on ``model`` (eval mode) for ``images``
    (N, C, S, S) in [0, 1] with their reports ``texts``; ``data`` says what the images are (for the record).
    ``calibration``: (images, texts) for int8 (the training split); without it openvino-int8 is recorded as not
    run. ``threshold``: the mask threshold (default: the model's decision threshold)."""
    device = torch.device(device)
    if len(images) == 0:
        raise LvsegError(f"tuning the backends needs images; {data} has none")
    names = list(backends) if backends is not None else default_backends(device)
    for name in names:
        backend_spec(name)
    names = ["eager", *[name for name in names if name != "eager"]]
    model = model.to(device).eval()
    chosen_threshold = float(model.decision_threshold if threshold is None else threshold)
    tuning = _Tuning(
        model,
        device,
        _Batches(model, images.to(device), texts),
        chosen_threshold,
        repeats,
        _Batches(model, calibration[0].to(device), calibration[1]) if calibration is not None else None,
    )
    trials = tuple(tuning.trial(name) for name in names)
    tuning.close()
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # the bf16 trials left it channels-last
    hardware = hardware_description(str(device))
    if device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(device)
    return BackendRecord(trials, len(images), data, hardware, graphs=tuning.graphs)


def _evenly_spaced(count: int, most: int) -> list[int]:
    """At most ``most`` indices of ``range(count)``, spread over it (so a sorted split is sampled throughout)."""
    if count <= most:
        return list(range(count))
    return sorted({round(index * (count - 1) / (most - 1)) for index in range(most)}) if most > 1 else [0]


def read_split_images(
    data: str | Path, split: str, img_size: int, channels: int, most: int, options: Any = None
) -> tuple[torch.Tensor, list[str], str]:
    """Up to ``most`` images of ``split`` of the dataset at ``data`` (any layout), read and resized as prediction
    reads them: (N, C, S, S) in [0, 1], their reports, and a description for the record."""
    from lvseg.data.formats import load_dataset_split
    from lvseg.data.images import read_image, resize_image

    samples = load_dataset_split(data, split, options, require_masks=False)
    if not samples:
        raise LvsegError(f"split '{split}' of '{data}' has no images to tune the backends on")
    chosen = [samples[index] for index in _evenly_spaced(len(samples), most)]
    images = torch.stack(
        [resize_image(read_image(sample.image_path, channels=channels), img_size) for sample in chosen]
    )
    return images, [sample.text for sample in chosen], f"{len(chosen)} of the {len(samples)} {split} images of '{data}'"


def tune_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "val",
    calibration_split: str = "train",
    backends: Sequence[str] | None = None,
    int8: bool = False,
    max_images: int = 100,
    calibration_images: int = 100,
    device: str = "cpu",
    repeats: int = 10,
    data_options: Any = None,
) -> BackendRecord:
    """Tune the backends of the lvseg checkpoint at ``checkpoint`` on up to ``max_images`` images of ``data``'s
    ``split`` and store the record in it (atomically); returns the record. ``backends``: which to try (default:
    every installed one except ``compile`` and, unless ``int8``, ``openvino-int8``, whose accuracy-aware
    quantisation takes minutes; it calibrates on up to ``calibration_images`` of ``calibration_split``)."""
    from lvseg.checkpoint import write_backend_record
    from lvseg.inference.loading import load_checkpoint_explained

    loaded = load_checkpoint_explained(checkpoint)
    model = loaded.model
    size, channels = int(model.config.get("img_size", 224)), int(model.config.get("in_channels", 3))
    chosen = list(backends) if backends is not None else default_backends(torch.device(device))
    if backends is None and not int8:
        chosen = [name for name in chosen if name != "openvino-int8"]
    images, texts, description = read_split_images(data, split, size, channels, max_images, data_options)
    calibration = None
    if "openvino-int8" in chosen:
        calibration_set = read_split_images(data, calibration_split, size, channels, calibration_images, data_options)
        calibration = calibration_set[:2]
    started = time.perf_counter()
    record = tune_backends(model, images, texts, description, device, chosen, calibration, repeats)
    write_backend_record(checkpoint, record)
    logger.info(
        "tuned the backends of %s in %.0f s on %s: passed %s",
        checkpoint,
        time.perf_counter() - started,
        description,
        ", ".join(record.passed()),
    )
    return record
