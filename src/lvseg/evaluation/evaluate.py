"""Evaluate a checkpoint on a dataset split, with the reports given, shuffled across images, or empty.

Metrics follow the LViT paper: per image, averaged over the split, masks where the probability exceeds the
model's decision threshold (``SegmentationModel.decision_threshold``: 0.5, the paper's, for most models; an
export folder's is in its manifest) unless ``threshold`` is given.

* ``dice`` / ``iou``: at model resolution (the truth mask resized nearest to ``img_size``).
* ``dice_original`` / ``iou_original``: the probability map upsampled bilinear to the image's original size
  (exactly as :meth:`lvseg.inference.Segmenter.predict_batch` does) against the original mask.
* ``hd95``: MONAI's 95th-percentile Hausdorff distance in pixels at original resolution; its mean skips
  images where it is undefined (an empty truth or prediction) and ``hd95_undefined`` counts them.

Multi-class data (one sample per image and structure, :mod:`lvseg.data.formats`) also gets every metric per
class and the mean over classes (``per_class``, ``class_mean``; :mod:`lvseg.evaluation.classes`). An empty
prediction on an empty mask (a structure correctly said to be absent) scores Dice and IoU 1, as the VLSM
study's metric does.

A model with one output channel per class (``output_classes`` K > 1, an image-only U-Net trained on the
set's class table) runs once per image and is scored on exactly the samples a text model is: sample (image,
class c) against channel c of its image (:func:`_evaluate_class_channels`), so the per-class tables compare.

``text_reliance = dice(given) - dice(shuffled)`` measures how much a language-guided model uses the report; for
a model that reads no text (``requires_text`` false, e.g. U-Net) it is not applicable: None, null in JSON.
The model is loaded once and each image is read once, whatever the number of text modes.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvseg.data.images import to_display_rgb8, write_png
from lvseg.errors import LvsegError
from lvseg.evaluation.classes import class_reliance_json, class_summary_json, per_class_means
from lvseg.evaluation.metrics import METRIC_NAMES, binarize, dice_iou_per_image, mask_metrics, summarize
from lvseg.files import atomic_write_text
from lvseg.inference import Segmenter, load_model, upsample_probability
from lvseg.inference.threshold import threshold_or_default
from lvseg.rendering import overlay_grid, overlay_mask

log = logging.getLogger(__name__)

TEXT_MODES: tuple[str, ...] = ("given", "shuffled", "empty")
PER_IMAGE_COLUMNS: tuple[str, ...] = ("name", "text") + METRIC_NAMES
TRUTH_COLOR = (0, 200, 0)
PREDICTION_COLOR = (255, 0, 0)
#: The longest pause between two progress lines of an evaluation, in seconds.
PROGRESS_SECONDS = 30.0


@dataclass
class ImageResult:
    """Metrics of one image; ``text`` is the report the model was given in this mode."""

    name: str
    text: str
    dice: float
    iou: float
    dice_original: float
    iou_original: float
    hd95: float
    class_name: str = ""  # the structure asked for (multi-class data), else ""

    def row(self) -> dict[str, Any]:
        return {column: getattr(self, column) for column in PER_IMAGE_COLUMNS}


@dataclass
class EvaluationReport:
    """One evaluation run: means and standard deviations over the split, and every image's metrics."""

    model_name: str
    checkpoint: str
    split: str
    text_mode: str
    n_images: int
    means: dict[str, float]
    std: dict[str, float]
    hd95_undefined: int
    backend: str = "eager"  # how the network ran (outputs differ slightly between backends)
    threshold: float = 0.5  # the probability above which a pixel was lesion
    requires_text: bool = True  # whether the model reads the report (else every text mode gives the same masks)
    per_image: list[ImageResult] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # {class: {metric: mean}}

    @property
    def dice(self) -> float:
        return self.means["dice"]

    def to_json(self) -> dict[str, Any]:
        """The content of ``metrics.json`` (NaN written as null)."""
        return {
            "model": self.model_name,
            "checkpoint": self.checkpoint,
            "backend": self.backend,
            "split": self.split,
            "text_mode": self.text_mode,
            "threshold": self.threshold,
            "reads_text": self.requires_text,
            "n_images": self.n_images,
            **{name: _json_float(value) for name, value in self.means.items()},
            "std": {name: _json_float(value) for name, value in self.std.items()},
            "hd95_undefined": self.hd95_undefined,
            **class_summary_json(self.per_class),
        }


@dataclass
class TextRelianceReport:
    """Several text modes of one checkpoint on one split; ``text_reliance = dice(given) - dice(shuffled)``,
    None when the model reads no text (not applicable: its masks do not depend on the report)."""

    reports: dict[str, EvaluationReport]
    text_reliance: float | None
    files: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        first = next(iter(self.reports.values()))
        return {
            "model": first.model_name,
            "checkpoint": first.checkpoint,
            "backend": first.backend,
            "split": first.split,
            "threshold": first.threshold,
            "reads_text": first.requires_text,
            "n_images": first.n_images,
            "text_reliance": None if self.text_reliance is None else _json_float(self.text_reliance),
            **class_reliance_json(self.reports, first.requires_text),
            "modes": {mode: report.to_json() for mode, report in self.reports.items()},
        }


def _json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ----------------------------------------------------------------------------------------------- texts


def derangement(texts: Sequence[str], seed: int = 0) -> list[int]:
    """A seeded permutation ``p`` of ``range(len(texts))`` that moves every text away from its image.

    ``p[i] != i`` for every ``i`` (when there are at least 2 texts) and, wherever possible,
    ``texts[p[i]] != texts[i]``: an image never gets a copy of its own report unless one report is shared
    by more than half of the images (then the fewest possible keep an equal one, with a warning).
    """
    n = len(texts)
    if n < 2:
        return list(range(n))
    rng = np.random.default_rng(seed)
    # Sattolo's algorithm: a uniformly random single n-cycle, hence a derangement of the indices.
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        order[i], order[j] = order[j], order[i]
    perm = order

    def clashes(i: int) -> bool:
        return texts[perm[i]] == texts[i]

    def swappable(i: int, j: int) -> bool:
        return perm[j] != i and perm[i] != j and texts[perm[j]] != texts[i] and texts[perm[i]] != texts[j]

    for _ in range(3):
        bad = [i for i in range(n) if clashes(i)]
        if not bad:
            break
        for i in bad:
            if not clashes(i):
                continue
            for j in rng.permutation(n).tolist():
                if j != i and swappable(i, j):
                    perm[i], perm[j] = perm[j], perm[i]
                    break
    left = sum(clashes(i) for i in range(n))
    if left and len(set(texts)) > 1:
        log.warning(
            "shuffled texts: %d of %d images still get a report equal to their own "
            "(one report is shared by most images)",
            left,
            n,
        )
    return perm


def texts_for_mode(texts: Sequence[str], mode: str, seed: int = 0) -> list[str]:
    """The reports the model reads in ``mode``: ``given`` (own), ``shuffled`` (a derangement) or ``empty``."""
    if mode == "given":
        return list(texts)
    if mode == "shuffled":
        return [texts[j] for j in derangement(texts, seed)]
    if mode == "empty":
        return [""] * len(texts)
    raise LvsegError(f"unknown text mode '{mode}'; expected one of {', '.join(TEXT_MODES)}")


# ------------------------------------------------------------------------------------------ forward pass


# --------------------------------------------------------------------------------------------- overlays


@dataclass(order=True)
class _Case:
    key: float
    order: int
    name: str = field(compare=False)
    dice: float = field(compare=False)
    image: np.ndarray = field(compare=False, repr=False)
    truth: np.ndarray = field(compare=False, repr=False)
    prediction: np.ndarray = field(compare=False, repr=False)


class _Extremes:
    """Keeps the ``k`` best and ``k`` worst cases by Dice without holding every image in memory."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.best: list[_Case] = []  # min-heap on dice: the smallest of the best is popped
        self.worst: list[_Case] = []  # min-heap on -dice
        self.count = 0

    def wants(self, dice: float) -> bool:
        if self.k <= 0:
            return False
        return (
            len(self.best) < self.k or dice > self.best[0].key or len(self.worst) < self.k or -dice > self.worst[0].key
        )

    def add(self, name: str, dice: float, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
        if self.k <= 0:
            return
        self.count += 1
        for heap, key in ((self.best, dice), (self.worst, -dice)):
            case = _Case(key, -self.count, name, dice, image, truth, prediction)
            if len(heap) < self.k:
                heapq.heappush(heap, case)
            elif case > heap[0]:
                heapq.heapreplace(heap, case)

    def ranked(self) -> tuple[list[_Case], list[_Case]]:
        """Best first, worst first."""
        return sorted(self.best, reverse=True), sorted(self.worst, reverse=True)


def _write_overlays(extremes: _Extremes, folder: Path) -> list[Path]:
    written = []
    best, worst = extremes.ranked()
    for label, cases in (("best", best), ("worst", worst)):
        for rank, case in enumerate(cases, start=1):
            row = [
                case.image,
                overlay_mask(case.image, case.truth, TRUTH_COLOR),
                overlay_mask(case.image, case.prediction, PREDICTION_COLOR),
            ]
            grid = overlay_grid(
                [row], ["image", "truth", "prediction"], row_labels=[f"{case.name}  Dice {case.dice:.3f}"]
            )
            written.append(write_png(folder / f"{label}_{rank:02d}_{_safe(case.name)}.png", np.asarray(grid)))
    return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:100]


# ------------------------------------------------------------------------------------------- evaluation


def _evaluate_modes(
    segmenter: Segmenter,
    samples: Sequence[Any],
    texts_by_mode: dict[str, list[str]],
    batch_size: int,
    n_overlays: int,
    threshold: float,
) -> tuple[dict[str, list[ImageResult]], dict[str, _Extremes]]:
    """Run every mode over the samples, reading each image and mask once; per-image results per mode, masks
    where the probability exceeds ``threshold``."""
    from lvseg.data.classes import read_sample_mask
    from lvseg.data.images import read_image, resize_image, resize_mask

    if segmenter.output_classes > 1:
        channel_results, channel_extremes = _evaluate_class_channels(
            segmenter, samples, batch_size, n_overlays, threshold
        )
        return dict.fromkeys(texts_by_mode, channel_results), dict.fromkeys(texts_by_mode, channel_extremes)
    results: dict[str, list[ImageResult]] = {mode: [] for mode in texts_by_mode}
    extremes = {mode: _Extremes(n_overlays) for mode in texts_by_mode}
    size = segmenter.img_size
    progress = _Progress(len(samples))
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [read_image(sample.image_path, channels=segmenter.in_channels) for sample in chunk]
        truths = [read_sample_mask(sample) for sample in chunk]
        for sample, image, truth in zip(chunk, images, truths):
            if image.shape[-2:] != truth.shape:
                raise LvsegError(
                    f"mask '{sample.mask_path}' is {truth.shape[1]}x{truth.shape[0]} but its image "
                    f"'{sample.image_path}' is {image.shape[-1]}x{image.shape[-2]}; expected equal sizes"
                )
        batch = torch.stack([resize_image(image, size) for image in images])  # (B, C, S, S)
        small_truth = torch.stack([resize_mask(truth, size) for truth in truths]).float()  # (B, 1, S, S)
        for mode, all_texts in texts_by_mode.items():
            texts = all_texts[start : start + len(chunk)]
            probability = segmenter.probabilities(batch, texts, allow_empty_text=True)  # (B, 1, S, S)
            dice, iou = dice_iou_per_image(binarize(probability, threshold), small_truth)
            for i, (sample, image, truth) in enumerate(zip(chunk, images, truths)):
                full = upsample_probability(probability[i], truth.shape)
                prediction = (full > threshold).numpy().astype(np.uint8)
                original = mask_metrics(prediction, truth)
                result = ImageResult(
                    sample.name,
                    texts[i],
                    float(dice[i]),
                    float(iou[i]),
                    original["dice"],
                    original["iou"],
                    original["hd95"],
                    sample.class_name,
                )
                results[mode].append(result)
                if extremes[mode].wants(result.dice_original):
                    extremes[mode].add(sample.name, result.dice_original, to_display_rgb8(image), truth, prediction)
        progress.update(min(start + batch_size, len(samples)))
    return results, extremes


def channel_of_samples(samples: Sequence[Any], table: Sequence[Any]) -> list[int]:
    """The output channel answering each sample: the position of its class in the checkpoint's class ``table``
    (:class:`~lvseg.data.classes.ClassInfo` rows). Raises :class:`LvsegError` naming every class the table lacks
    (or saying the data is binary)."""
    position = {info.name.lower(): index for index, info in enumerate(table)}
    names = ", ".join(info.name for info in table)
    if not any(sample.class_name for sample in samples):
        raise LvsegError(
            f"the data is binary (one structure per image) but the model has one output channel per class ({names}); "
            "evaluate it on multi-class data (a class table: classes.csv or --classes)"
        )
    unknown = sorted({sample.class_name for sample in samples if sample.class_name.lower() not in position})
    if unknown:
        raise LvsegError(
            f"the data has class(es) {', '.join(repr(name) for name in unknown)} that the model has no output channel "
            f"for; its classes: {names}"
        )
    return [position[sample.class_name.lower()] for sample in samples]


def _evaluate_class_channels(
    segmenter: Segmenter, samples: Sequence[Any], batch_size: int, n_overlays: int, threshold: float
) -> tuple[list[ImageResult], _Extremes]:
    """A model with K output channels: each image runs once (``batch_size`` images per forward), and each sample
    (image, class c) is scored as a text model's would be, with channel c (probabilities (B, K, S, S)) against
    the sample's mask. Results keep the samples' order; the model reads no text (``text`` is empty)."""
    from lvseg.data.classes import read_sample_mask
    from lvseg.data.images import read_image, resize_image, resize_mask
    from lvseg.inference.segmenter import upsample_probabilities

    channel = channel_of_samples(samples, segmenter.class_table)
    by_image: dict[Path, list[int]] = {}
    for index, sample in enumerate(samples):
        by_image.setdefault(Path(sample.image_path), []).append(index)
    paths = list(by_image)
    results: list[ImageResult | None] = [None] * len(samples)
    extremes = _Extremes(n_overlays)
    size, done = segmenter.img_size, 0
    progress = _Progress(len(samples))
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [read_image(path, channels=segmenter.in_channels) for path in chunk]
        batch = torch.stack([resize_image(image, size) for image in images])  # (B, C, S, S)
        probability = segmenter.probabilities(batch, [""] * len(chunk), allow_empty_text=True)  # (B, K, S, S)
        if probability.shape[1] != segmenter.output_classes:
            raise LvsegError(
                f"model '{segmenter.model_name}' gave {probability.shape[1]} output channels; expected "
                f"{segmenter.output_classes}, one per class"
            )
        for b, (path, image) in enumerate(zip(chunk, images)):
            full = upsample_probabilities(probability[b], tuple(image.shape[-2:]))  # (K, H, W)
            for i in by_image[path]:
                sample, k = samples[i], channel[i]
                truth = read_sample_mask(sample)
                if image.shape[-2:] != truth.shape:
                    raise LvsegError(
                        f"mask '{sample.mask_path}' is {truth.shape[1]}x{truth.shape[0]} but its image "
                        f"'{sample.image_path}' is {image.shape[-1]}x{image.shape[-2]}; expected equal sizes"
                    )
                small_truth = resize_mask(truth, size).float()[None]  # (1, 1, S, S)
                dice, iou = dice_iou_per_image(binarize(probability[b, k][None, None], threshold), small_truth)
                prediction = (full[k] > threshold).numpy().astype(np.uint8)
                original = mask_metrics(prediction, truth)
                result = ImageResult(
                    sample.name,
                    "",
                    float(dice[0]),
                    float(iou[0]),
                    original["dice"],
                    original["iou"],
                    original["hd95"],
                    sample.class_name,
                )
                results[i] = result
                if extremes.wants(result.dice_original):
                    extremes.add(sample.name, result.dice_original, to_display_rgb8(image), truth, prediction)
            done += len(by_image[path])
        progress.update(done)
    return [result for result in results if result is not None], extremes


class _Progress:
    """Logs "evaluated N / total images" sparingly: at each quarter of the split, and at least every
    :data:`PROGRESS_SECONDS` on a slow one (200 images in batches of 8 give 4 lines, not 25)."""

    def __init__(self, total: int) -> None:
        self.total, self.quarter, self.last = total, 0, time.monotonic()

    def update(self, done: int) -> None:
        quarter = 4 * done // max(self.total, 1)
        now = time.monotonic()
        if quarter > self.quarter or now - self.last >= PROGRESS_SECONDS:
            self.quarter, self.last = quarter, now
            log.info("evaluated %d / %d images", done, self.total)


def _report(
    segmenter: Segmenter, checkpoint: Path, split: str, mode: str, results: list[ImageResult], threshold: float
) -> EvaluationReport:
    means, std, undefined = {}, {}, 0
    for name in METRIC_NAMES:
        means[name], std[name], missing = summarize(getattr(result, name) for result in results)
        if name == "hd95":
            undefined = missing
    return EvaluationReport(
        segmenter.model_name,
        str(checkpoint),
        split,
        mode,
        len(results),
        means,
        std,
        undefined,
        backend=segmenter.backend,
        threshold=threshold,
        requires_text=bool(segmenter.requires_text),
        per_image=results,
        per_class=per_class_means(results),
    )


def _per_image_csv(results: Sequence[ImageResult]) -> str:
    buffer = io.StringIO()
    classes = any(result.class_name for result in results)  # multi-class data: a "class" column after "name"
    columns = ["name", "class", *PER_IMAGE_COLUMNS[1:]] if classes else list(PER_IMAGE_COLUMNS)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = result.row()
        if classes:
            row["class"] = result.class_name
        for name in METRIC_NAMES:
            row[name] = "" if not math.isfinite(row[name]) else f"{row[name]:.6f}"
        writer.writerow(row)
    return buffer.getvalue()


def _write_report(report: EvaluationReport, extremes: _Extremes, out: Path) -> None:
    report.files["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(report.to_json(), indent=2) + "\n")
    report.files["per_image"] = atomic_write_text(out / "per_image.csv", _per_image_csv(report.per_image))
    if extremes.k > 0:
        _write_overlays(extremes, out / "overlays")
        report.files["overlays"] = out / "overlays"


def _check_args(batch_size: int, n_overlays: int) -> None:
    if batch_size < 1:
        raise LvsegError(f"batch size must be at least 1, got {batch_size}")
    if n_overlays < 0:
        raise LvsegError(f"n_overlays must be 0 or more, got {n_overlays}")


def _load(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str,
    device: str | torch.device | None,
    model: Segmenter | None = None,
    data_options: Any = None,
) -> tuple[Segmenter, list[Any]]:
    from lvseg.data.class_channels import with_recorded_classes
    from lvseg.data.formats import DataOptions, load_dataset_split
    from lvseg.data.layout import check_reports

    segmenter = model if model is not None else load_model(checkpoint, device=device)
    # A label-map set without its own class table is read with the classes the checkpoint learnt.
    recorded = segmenter.class_table if segmenter.hparams.get("class_table") else []
    options = with_recorded_classes(data_options or DataOptions(), recorded, data_root)
    samples = load_dataset_split(data_root, split, options, require_masks=True)
    if not samples:
        raise LvsegError(f"split '{split}' of '{data_root}' holds no images")
    check_reports(segmenter.model, {split: samples})
    log.info("evaluating '%s' (%s) on %d %s images", checkpoint, segmenter.model_name, len(samples), split)
    return segmenter, samples


def evaluate_modes(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str = "test",
    modes: Sequence[str] = ("given",),
    out: str | Path | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    seed: int = 0,
    n_overlays: int = 4,
    model: Segmenter | None = None,
    threshold: float | None = None,
    data_options: Any = None,
) -> dict[str, EvaluationReport]:
    """Evaluate several text modes in one pass (model loaded once, images read once).

    With ``out``, each mode's files go to ``out/<mode>/`` when there are several modes, else to ``out``.
    ``model``: an already loaded :class:`Segmenter` of ``checkpoint`` (then ``device`` is ignored).
    ``threshold``: the probability above which a pixel is lesion, in (0, 1) (default: the model's declared
    decision threshold, :attr:`Segmenter.decision_threshold`). ``data_options``: how to read a multi-class
    dataset (:class:`lvseg.data.formats.DataOptions`; default: its defaults).
    """
    _check_args(batch_size, n_overlays)
    unknown = [mode for mode in modes if mode not in TEXT_MODES]
    if unknown or not modes:
        raise LvsegError(
            f"unknown text mode {unknown[0] if unknown else '(none)'!r}; expected one of {', '.join(TEXT_MODES)}"
        )
    segmenter, samples = _load(checkpoint, data_root, split, device, model, data_options)
    cut = threshold_or_default(threshold, segmenter.decision_threshold)
    own = [sample.text for sample in samples]
    texts_by_mode = {mode: texts_for_mode(own, mode, seed) for mode in dict.fromkeys(modes)}
    results, extremes = _evaluate_modes(segmenter, samples, texts_by_mode, batch_size, n_overlays if out else 0, cut)
    reports = {}
    for mode in texts_by_mode:
        report = _report(segmenter, Path(checkpoint), split, mode, results[mode], cut)
        if out is not None:
            _write_report(report, extremes[mode], Path(out) / mode if len(texts_by_mode) > 1 else Path(out))
        reports[mode] = report
    return reports


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    text_mode: str = "given",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    seed: int = 0,
    n_overlays: int = 4,
    model: Segmenter | None = None,
    threshold: float | None = None,
    data_options: Any = None,
) -> EvaluationReport:
    """Evaluate ``checkpoint`` on ``split`` of the LViT-layout dataset at ``data_root``.

    ``text_mode``: ``given`` (each image's own report), ``shuffled`` (reports permuted across images with a
    seeded derangement) or ``empty``. With ``out``, writes ``metrics.json``, ``per_image.csv`` (columns
    ``name, text, dice, iou, dice_original, iou_original, hd95``) and ``overlays/best_NN_*.png`` /
    ``overlays/worst_NN_*.png`` (image | truth | prediction, ranked by ``dice_original``). ``threshold``: as
    for :func:`evaluate_modes` (default: the model's declared decision threshold).
    """
    return evaluate_modes(
        checkpoint,
        data_root,
        split,
        (text_mode,),
        out,
        batch_size,
        device,
        seed,
        n_overlays,
        model,
        threshold,
        data_options,
    )[text_mode]


def evaluate_text_reliance(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    modes: Sequence[str] = TEXT_MODES,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    seed: int = 0,
    n_overlays: int = 4,
    model: Segmenter | None = None,
    threshold: float | None = None,
    data_options: Any = None,
) -> TextRelianceReport:
    """Evaluate with the reports given and shuffled (and empty) and measure the model's reliance on text.

    ``text_reliance = dice(given) - dice(shuffled)`` (model-resolution Dice); None for a model that reads no
    text (``requires_text`` false: not applicable, null in ``metrics.json``). With ``out``, each mode's files
    go to ``out/<mode>/`` and a combined ``out/metrics.json`` holds every mode and ``text_reliance``.
    ``threshold``: as for :func:`evaluate_modes` (default: the model's declared decision threshold).
    """
    modes = list(dict.fromkeys(["given", "shuffled", *modes]))
    reports = evaluate_modes(
        checkpoint, data_root, split, modes, out, batch_size, device, seed, n_overlays, model, threshold, data_options
    )
    given = reports["given"]
    reliance = given.dice - reports["shuffled"].dice if given.requires_text else None
    combined = TextRelianceReport(reports, reliance)
    if out is not None:
        combined.files["metrics"] = atomic_write_text(
            Path(out) / "metrics.json", json.dumps(combined.to_json(), indent=2) + "\n"
        )
    if reliance is None:
        log.info("text reliance: not applicable, model '%s' reads no text", given.model_name)
    else:
        log.info(
            "text reliance: dice given %.4f - shuffled %.4f = %.4f", given.dice, reports["shuffled"].dice, reliance
        )
    return combined
