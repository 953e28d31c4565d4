"""A synthetic multi-class set where the prompt must choose the structure: discs, rings and bars.

Every image is a gray textured background with two or three bright structures, one of each class present:
a **disc** (filled circle), a **ring** (annulus) and a **bar** (rotated rectangle). The three share one
intensity and texture distribution and one size range, and each sits in a random cell of a 3 x 3 grid, so
neither brightness nor place tells them apart: an image-only model with one output cannot know which one
is asked for, and a text model must read the class in its prompt and match it to the shape. At least two
classes are present in every image (so the class-swap test, :mod:`lvseg.evaluation.class_swap`, has pairs
everywhere), each of the three with the same probability; an absent class gives negative samples.

Two layouts (``layout``):

* ``lvit``: ``Train_Folder/img/case_0000.png``, ``Train_Folder/labelcol/case_0000.png`` (a label map: 0
  background, 1 disc, 2 ring, 3 bar) ... and ``classes.csv`` at the root (:mod:`lvseg.data.classes`; the
  per-class prompts are written by lvseg's prompt writer at load time);
* ``vlsm``: the VLSM study's (Poudel et al., "Exploring Transfer Learning in Medical Image Segmentation
  using Vision-Language Models"; :mod:`lvseg.data.vlsm`): ``images/case_0000.png``,
  ``masks/<class>/case_0000.png`` (0/255, present classes only), ``anns/{train,val,test}.json`` with one
  record per present structure (``img_name``, ``mask_name``, ``cat``, ``prompts`` p0 ... p6, p1 a list of two).

Everything is a pure function of ``(seed, index, size)``; splits are 70/10/20 % as the chest set's.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvseg.data.images import write_png
from lvseg.data.prompts import article, class_prompt
from lvseg.errors import LvsegError
from lvseg.files import atomic_write_text

logger = logging.getLogger(__name__)

GENERATOR = "lvseg.data.synth_classes"
GENERATOR_VERSION = 1
#: {label value: class name}.
CLASSES: dict[int, str] = {1: "disc", 2: "ring", 3: "bar"}
MODALITY = "synthetic phantom image"
LAYOUTS: tuple[str, ...] = ("lvit", "vlsm")
SPLITS: tuple[tuple[str, str, float], ...] = (
    ("train", "Train_Folder", 0.7),
    ("val", "Val_Folder", 0.1),
    ("test", "Test_Folder", 0.2),
)
RADIUS = (0.09, 0.12)  # of the image side
LEVEL = (170.0, 215.0)  # structure intensity, the same range for every class
BACKGROUND = (45.0, 85.0)


@dataclass(frozen=True)
class MultiClassCase:
    """One generated image (H, W) uint8 and its label map (H, W) uint8 (values of :data:`CLASSES`)."""

    name: str
    image: np.ndarray
    label_map: np.ndarray

    @property
    def present(self) -> list[int]:
        return [value for value in CLASSES if np.any(self.label_map == value)]


def _shape_mask(kind: int, size: int, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = rows - center[0], cols - center[1]
    distance = np.hypot(dy, dx)
    if kind == 1:
        return distance <= radius
    if kind == 2:
        return (distance <= radius) & (distance >= 0.55 * radius)
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    return (np.abs(along) <= 1.1 * radius) & (np.abs(across) <= 0.4 * radius)


def synthesize_multiclass_case(seed: int, index: int, size: int = 224) -> MultiClassCase:
    """The case ``index`` of the set of ``seed`` at ``size`` x ``size`` px (deterministic)."""
    rng = np.random.default_rng([seed, index, 7])
    coarse = rng.random((5, 5))
    background = np.kron(coarse, np.ones((size // 5 + 1, size // 5 + 1)))[:size, :size]
    image = BACKGROUND[0] + (BACKGROUND[1] - BACKGROUND[0]) * background + rng.normal(0, 6, (size, size))
    label_map = np.zeros((size, size), np.uint8)
    count = int(rng.integers(2, 4))
    kinds = sorted(rng.choice(list(CLASSES), size=count, replace=False).tolist())
    cells = rng.choice(9, size=count, replace=False)
    for kind, cell in zip(kinds, cells):
        radius = rng.uniform(*RADIUS) * size
        row, col = divmod(int(cell), 3)
        margin = radius * 1.15
        span = size / 3
        center = (
            float(np.clip((row + rng.uniform(0.35, 0.65)) * span, margin, size - margin)),
            float(np.clip((col + rng.uniform(0.35, 0.65)) * span, margin, size - margin)),
        )
        mask = _shape_mask(kind, size, center, radius, float(rng.uniform(0, np.pi)))
        mask &= label_map == 0
        level = rng.uniform(*LEVEL)
        image[mask] = level + rng.normal(0, 8, int(mask.sum()))
        label_map[mask] = kind
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return MultiClassCase(f"case_{index:04d}", pixels, label_map)


def _split_of(n: int) -> list[str]:
    counts = [round(n * fraction) for _, _, fraction in SPLITS]
    if n >= 3:
        counts = [max(1, number) for number in counts]
    counts[0] = n - sum(counts[1:])
    if counts[0] < 1:
        raise LvsegError(f"--n {n} is too small for train/val/test splits; expected at least 3")
    return [split for (split, _, _), number in zip(SPLITS, counts) for _ in range(number)]


def _csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _vlsm_prompts(case: MultiClassCase, value: int) -> dict[str, Any]:
    name, mask = CLASSES[value], case.label_map == value
    prompts: dict[str, Any] = {"p0": ""}
    for style in ("p1", "p2", "p3", "p4", "p5", "p6"):
        prompts[style] = class_prompt(mask, name, MODALITY, style)
    prompts["p1"] = [name, f"{name} in {article(MODALITY)}"]
    return prompts


def generate_multiclass_dataset(
    out: str | Path, n: int = 300, size: int = 224, seed: int = 0, layout: str = "lvit"
) -> dict[str, Any]:
    """Write ``n`` cases into ``out`` (a new or empty folder) in ``layout``; returns the manifest (also written
    as ``manifest.json``): parameters, per-split image counts and per-class sample counts."""
    if layout not in LAYOUTS:
        raise LvsegError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if size < 32:
        raise LvsegError(f"--size {size} is too small; expected at least 32")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LvsegError(f"'{out}' exists and is not an empty folder; expected a new or empty folder")
    splits = _split_of(n)
    folders = {split: folder for split, folder, _ in SPLITS}
    records: dict[str, list[dict[str, Any]]] = {split: [] for split, _, _ in SPLITS}
    present_counts = dict.fromkeys(CLASSES.values(), 0)
    for index, split in enumerate(splits):
        case = synthesize_multiclass_case(seed, index, size)
        file_name = f"{case.name}.png"
        for value in case.present:
            present_counts[CLASSES[value]] += 1
        if layout == "lvit":
            write_png(out / folders[split] / "img" / file_name, case.image)
            write_png(out / folders[split] / "labelcol" / file_name, case.label_map)
            continue
        write_png(out / "images" / file_name, case.image)
        for value in case.present:
            name = CLASSES[value]
            write_png(out / "masks" / name / file_name, ((case.label_map == value) * 255).astype(np.uint8))
            records[split].append(
                {
                    "img_name": file_name,
                    "mask_name": f"{name}/{file_name}",
                    "cat": name,
                    "prompts": _vlsm_prompts(case, value),
                }
            )
    if layout == "lvit":
        atomic_write_text(out / "classes.csv", _csv([["value", "name"], *[[str(v), k] for v, k in CLASSES.items()]]))
    else:
        for split, split_records in records.items():
            atomic_write_text(out / "anns" / f"{split}.json", json.dumps(split_records, indent=2) + "\n")
    manifest = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "params": {"n": n, "size": size, "seed": seed, "layout": layout},
        "classes": {str(value): name for value, name in CLASSES.items()},
        "modality": MODALITY,
        "counts": {split: splits.count(split) for split, _, _ in SPLITS},
        "images_with_class": present_counts,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %d multi-class synthetic images (%s layout) to %s", n, layout, out)
    return manifest
