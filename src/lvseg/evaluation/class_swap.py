"""The class-swap test: does the model segment the structure the prompt names, or the one the image suggests?

On multi-class data (one sample per image and structure), every sample whose image holds another class
present is run again with that other class's prompt (a seeded choice among the image's other present
classes). For each such pair (asked class ``c``, swapped-in class ``c'``), at model resolution:

* ``follows`` = Dice(output, mask of ``c'``): the output follows the prompt;
* ``stays`` = Dice(output, mask of ``c``): the output stays on the structure of the original sample;
* ``class_swap_reliance = mean(follows) - mean(stays)``, in [-1, 1]: near 1 for a model that segments what
  it is asked for, near 0 for one that outputs the same (e.g. every structure) whatever the prompt,
  negative for one that keeps to the original structure.

This answers the question of the VLSM study (Poudel et al., "Exploring Transfer Learning in Medical Image
Segmentation using Vision-Language Models", MIDL 2024), "does the model use the text?", per structure:
``per_class`` groups the pairs by the prompted class ``c'``. A model that reads no text gets None.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvseg.data.classes import pick, read_sample_mask
from lvseg.errors import LvsegError
from lvseg.evaluation.evaluate import _check_args, _load
from lvseg.evaluation.metrics import binarize, dice_iou_per_image
from lvseg.files import atomic_write_text
from lvseg.inference import Segmenter
from lvseg.inference.threshold import threshold_or_default

log = logging.getLogger(__name__)


@dataclass
class SwapResult:
    """One pair: the sample ``name`` (class ``asked``) run with the prompt ``text`` of class ``prompted``."""

    name: str
    asked: str
    prompted: str
    text: str
    follows: float
    stays: float


@dataclass
class ClassSwapReport:
    """The class-swap test on one split (see the module docstring); means are None when no image holds two
    present classes or the model reads no text."""

    model_name: str
    split: str
    n_pairs: int
    follows: float | None
    stays: float | None
    class_swap_reliance: float | None
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    pairs: list[SwapResult] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "split": self.split,
            "n_pairs": self.n_pairs,
            "follows": self.follows,
            "stays": self.stays,
            "class_swap_reliance": self.class_swap_reliance,
            "per_class": self.per_class,
        }


def swap_pairs(samples: list[Any], seed: int = 0) -> list[tuple[int, int]]:
    """(sample index, index of the sample whose prompt it gets): for every sample of a present class whose
    image holds another present class, one of those (seeded), in sample order."""
    by_image: dict[Path, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        by_image[sample.image_path].append(index)
    present: dict[int, bool] = {}
    pairs = []
    for indices in by_image.values():
        if len({samples[i].class_name for i in indices}) < 2:
            continue
        for i in indices:
            present[i] = bool(read_sample_mask(samples[i]).any())
        for i in indices:
            others = [j for j in indices if present[j] and samples[j].class_name != samples[i].class_name]
            if present[i] and others:
                chosen = pick(seed, f"swap:{samples[i].name}", [str(j) for j in others])
                pairs.append((i, int(chosen)))
    return sorted(pairs)


def evaluate_class_swap(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    seed: int = 0,
    model: Segmenter | None = None,
    threshold: float | None = None,
    data_options: Any = None,
) -> ClassSwapReport:
    """Run the class-swap test (module docstring) on ``split``; with ``out``, write ``class_swap.json`` and
    ``class_swap.csv`` (one row per pair). Arguments as for :func:`lvseg.evaluation.evaluate.evaluate_modes`.
    """
    from lvseg.data.images import read_image, resize_image, resize_mask

    _check_args(batch_size, 0)
    segmenter, samples = _load(checkpoint, data_root, split, device, model, data_options)
    if not any(sample.class_name for sample in samples):
        raise LvsegError(
            f"'{data_root}' is a binary dataset (one structure): the class-swap test needs several classes"
        )
    cut = threshold_or_default(threshold, segmenter.decision_threshold)
    pairs = swap_pairs(samples, seed) if segmenter.requires_text else []
    size = segmenter.img_size
    results: list[SwapResult] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = torch.stack(
            [resize_image(read_image(samples[i].image_path, channels=segmenter.in_channels), size) for i, _ in chunk]
        )
        own = torch.stack([resize_mask(read_sample_mask(samples[i]), size) for i, _ in chunk]).float()
        other = torch.stack([resize_mask(read_sample_mask(samples[j]), size) for _, j in chunk]).float()
        texts = [samples[j].text for _, j in chunk]
        prediction = binarize(segmenter.probabilities(images, texts, allow_empty_text=True), cut)
        follows, _ = dice_iou_per_image(prediction, other)
        stays, _ = dice_iou_per_image(prediction, own)
        for k, (i, j) in enumerate(chunk):
            results.append(
                SwapResult(
                    samples[i].name,
                    samples[i].class_name,
                    samples[j].class_name,
                    texts[k],
                    float(follows[k]),
                    float(stays[k]),
                )
            )
    report = _summary(segmenter.model_name, split, results)
    if not segmenter.requires_text:
        log.info("class swap: not applicable, model '%s' reads no text", segmenter.model_name)
    elif not results:
        log.warning("class swap: no image of '%s' holds two present classes", split)
    if out is not None:
        out = Path(out)
        report.files["metrics"] = atomic_write_text(
            out / "class_swap.json", json.dumps(report.to_json(), indent=2) + "\n"
        )
        report.files["pairs"] = atomic_write_text(out / "class_swap.csv", _pairs_csv(results))
    return report


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _summary(model_name: str, split: str, results: list[SwapResult]) -> ClassSwapReport:
    follows, stays = _mean([r.follows for r in results]), _mean([r.stays for r in results])
    per_class: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.prompted for r in results):
        group = [r for r in results if r.prompted == name]
        f, s = float(np.mean([r.follows for r in group])), float(np.mean([r.stays for r in group]))
        per_class[name] = {"n_pairs": len(group), "follows": f, "stays": s, "class_swap_reliance": f - s}
    reliance = None if follows is None or stays is None else follows - stays
    return ClassSwapReport(model_name, split, len(results), follows, stays, reliance, per_class, results)


def _pairs_csv(results: list[SwapResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "asked", "prompted", "text", "follows", "stays"])
    for r in results:
        writer.writerow([r.name, r.asked, r.prompted, r.text, f"{r.follows:.6f}", f"{r.stays:.6f}"])
    return buffer.getvalue()
