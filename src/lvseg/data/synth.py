"""The embedded default dataset: synthetic chest radiographs where only the report tells targets apart.

Every image shows a body silhouette with two darker lung fields. Each lung is split into three zones
(upper/middle/lower thirds of its height). An image holds 2-5 bright hazy opacities, at most one per
zone, all drawn from the *same* appearance distribution. 1-3 of them are **targets**: the report (QaTa
grammar, :mod:`lvseg.data.reports`) names exactly their zones and count and the mask covers exactly
them; the others are **distractors**. An image-only model therefore cannot tell which opacities to
segment (predicting all of them scores about 0.6 Dice), whereas a model that reads the report can.

Conventions:

* radiological laterality: the patient's **left** lung is on the **image's right** side
  (``left`` lung centre at x = 0.70 * size, ``right`` lung centre at x = 0.30 * size);
* zones are thirds of the lung's bounding box height; lungs are centred at y = 0.50 * size with
  half-height 0.32 * size and half-width 0.15 * size, jittered by at most ``LUNG_JITTER`` (1.5 % of
  the size) and scaled by at most +-3 %, so a zone always covers nearly the same image region;
* every opacity (including its mask, the set where its smooth profile is above half its peak) lies
  inside its zone's box, so masks of different opacities never touch;
* masks are 8-bit PNG with values 0/255, named ``mask_<image name>`` (the QaTa-COV19 convention);
  ``<Split>_text.xlsx`` has columns ``Image`` (the mask file name) and ``Description`` (the report).

Everything is a pure function of ``(seed, index, size)``: the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import shutil
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lvseg.data.images import png_bytes, write_png
from lvseg.data.reports import LUNGS, ZONES, Findings, render_report
from lvseg.errors import LvsegError
from lvseg.files import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

GENERATOR = "lvseg.data.synth"
GENERATOR_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLIT_FOLDERS: tuple[str, str, str] = ("Train_Folder", "Val_Folder", "Test_Folder")
SPLIT_TEXT_FILES: tuple[str, str, str] = ("Train_text.xlsx", "Val_text.xlsx", "Test_text.xlsx")

# Geometry, as fractions of the image size. Patient's left lung = image right (radiological view).
LUNG_CENTER_X: dict[str, float] = {"right": 0.30, "left": 0.70}
LUNG_CENTER_Y = 0.50
LUNG_HALF_WIDTH = 0.15
LUNG_HALF_HEIGHT = 0.32
LUNG_JITTER = 0.015
LUNG_SCALE_JITTER = 0.03
LUNG_SHAPE_POWER = 3.0  # superellipse exponent of the lung fields

# Opacity appearance: identical distribution for targets and distractors.
OPACITY_AXES = (0.045, 0.075)  # semi-axis range
OPACITY_HARMONIC = 0.08  # max amplitude of the 2nd and 3rd angular harmonics of the outline
OPACITY_ALPHA = (0.55, 0.80)  # blend weight towards OPACITY_LEVEL at the centre
OPACITY_LEVEL = 205.0
OPACITY_EDGE = 0.12  # softness of the outline in normalised radius units
ZONE_MARGIN = 0.008

# Number of opacities (uniform) and, for each, the distribution of the number of targets.
OPACITY_COUNTS = (2, 3, 4, 5)
TARGET_COUNT_PROBS: dict[int, dict[int, float]] = {
    2: {1: 1.0},
    3: {1: 0.7, 2: 0.3},
    4: {1: 0.4, 2: 0.45, 3: 0.15},
    5: {1: 0.2, 2: 0.5, 3: 0.3},
}

_FIXED_TIME = datetime(2000, 1, 1)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class LungGeometry:
    """One lung field's bounding box in normalised image coordinates (x to the right, y down)."""

    center_x: float
    center_y: float
    half_width: float
    half_height: float

    def zone_box(self, zone: str) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of ``zone`` (a third of the lung's height), normalised coordinates."""
        k = ZONES.index(zone)
        height = 2.0 * self.half_height / len(ZONES)
        y0 = self.center_y - self.half_height + k * height
        return (self.center_x - self.half_width, y0, self.center_x + self.half_width, y0 + height)


@dataclass(frozen=True)
class Opacity:
    """One hazy opacity: where it is, whether the report names it, and its shape parameters."""

    lung: str
    zone: str
    is_target: bool
    center: tuple[float, float]  # (x, y), normalised
    axes: tuple[float, float]  # semi-axes, normalised
    angle: float  # radians
    alpha: float


@dataclass
class SynthCase:
    """One generated image with everything needed to check it.

    ``labels`` is 0 outside opacities and ``k + 1`` on the mask of ``opacities[k]``
    (the set where its profile is above half of its peak).
    """

    index: int
    image: np.ndarray  # (S, S) uint8
    mask: np.ndarray  # (S, S) uint8 {0, 255}
    labels: np.ndarray  # (S, S) uint8
    findings: Findings
    report: str
    opacities: list[Opacity]
    lungs: dict[str, LungGeometry] = field(default_factory=dict)

    def zone_box_pixels(self, lung: str, zone: str) -> tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)`` (end-exclusive, rounded outwards) of a zone in this image."""
        size = self.image.shape[0]
        x0, y0, x1, y1 = self.lungs[lung].zone_box(zone)
        return (
            max(0, math.floor(x0 * size)),
            max(0, math.floor(y0 * size)),
            min(size, math.ceil(x1 * size)),
            min(size, math.ceil(y1 * size)),
        )


def nominal_lungs() -> dict[str, LungGeometry]:
    """The lung geometry without jitter: the average position of each zone across images."""
    return {lung: LungGeometry(LUNG_CENTER_X[lung], LUNG_CENTER_Y, LUNG_HALF_WIDTH, LUNG_HALF_HEIGHT) for lung in LUNGS}


def case_name(index: int) -> str:
    """Image file name of case ``index``."""
    return f"synth_{index:05d}.png"


def mask_name(image_name: str) -> str:
    """Mask file name of an image (QaTa-COV19 convention)."""
    return f"mask_{image_name}"


@lru_cache(maxsize=16)
def _upsampler(size: int, cells: int) -> np.ndarray:
    """(size, cells) row-normalised Gaussian interpolation weights from a coarse grid to pixels."""
    pixels = (np.arange(size) + 0.5) / size
    nodes = (np.arange(cells) + 0.5) / cells
    weights = np.exp(-0.5 * ((pixels[:, None] - nodes[None, :]) * cells / 0.7) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field of shape (size, size), roughly zero-mean with unit-order amplitude."""
    coarse = rng.standard_normal((cells, cells))
    weights = _upsampler(size, cells)
    # einsum without BLAS: fast for these small factors and independent of BLAS threading.
    field_ = np.einsum("jd,id->ij", weights, np.einsum("ic,cd->id", weights, coarse))
    return field_ / max(float(field_.std()), 1e-6)


def _sample_opacity(
    rng: np.random.Generator, lung: str, zone: str, is_target: bool, geometry: LungGeometry
) -> tuple[Opacity, tuple[float, float, float, float]]:
    """Draw one opacity inside its zone; returns it and its outline harmonics (h2, p2, h3, p3)."""
    axes = (float(rng.uniform(*OPACITY_AXES)), float(rng.uniform(*OPACITY_AXES)))
    angle = float(rng.uniform(0.0, math.pi))
    harmonics = (
        float(rng.uniform(0.0, OPACITY_HARMONIC)),
        float(rng.uniform(0.0, 2 * math.pi)),
        float(rng.uniform(0.0, OPACITY_HARMONIC)),
        float(rng.uniform(0.0, 2 * math.pi)),
    )
    alpha = float(rng.uniform(*OPACITY_ALPHA))
    reach = max(axes) * (1.0 + harmonics[0] + harmonics[2]) + ZONE_MARGIN
    x0, y0, x1, y1 = geometry.zone_box(zone)
    x_room = min(0.05, (x1 - x0) / 2 - reach)
    y_room = max(0.0, (y1 - y0) / 2 - reach)
    cx = geometry.center_x + float(rng.uniform(-x_room, x_room))
    cy = (y0 + y1) / 2 + float(rng.uniform(-y_room, y_room))
    opacity = Opacity(lung, zone, is_target, (cx, cy), axes, angle, alpha)
    return opacity, harmonics


def _opacity_profile(
    u: np.ndarray, v: np.ndarray, opacity: Opacity, harmonics: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth profile in [0, 1] (0.5 on the outline) and the inside mask of one opacity.

    ``u`` (1, W) and ``v`` (H, 1) are the normalised pixel-centre coordinates of the window evaluated.
    """
    dx = u - opacity.center[0]
    dy = v - opacity.center[1]
    cos, sin = math.cos(opacity.angle), math.sin(opacity.angle)
    p = (dx * cos + dy * sin) / opacity.axes[0]
    q = (-dx * sin + dy * cos) / opacity.axes[1]
    radius = np.sqrt(p * p + q * q)
    theta = np.arctan2(q, p)
    h2, p2, h3, p3 = harmonics
    radius = radius / (1.0 + h2 * np.cos(2 * theta + p2) + h3 * np.cos(3 * theta + p3))
    profile = 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) / OPACITY_EDGE, -30.0, 30.0)))
    return profile, radius < 1.0


def _window(opacity: Opacity, harmonics: tuple[float, float, float, float], size: int) -> tuple[slice, slice]:
    """Pixel window outside of which an opacity's profile is below 1e-3 of its peak."""
    reach = max(opacity.axes) * (1.0 + harmonics[0] + harmonics[2]) * (1.0 + 7.0 * OPACITY_EDGE)
    cx, cy = opacity.center
    x0, x1 = max(0, math.floor((cx - reach) * size)), min(size, math.ceil((cx + reach) * size) + 1)
    y0, y1 = max(0, math.floor((cy - reach) * size)), min(size, math.ceil((cy + reach) * size) + 1)
    return slice(y0, y1), slice(x0, x1)


@lru_cache(maxsize=8)
def _body(size: int) -> np.ndarray:
    """Background, body silhouette and mediastinum (identical in every image), read-only."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    u, v = coords[None, :], coords[:, None]
    radius = np.sqrt(((u - 0.5) / 0.46) ** 2 + ((v - 0.66) / 0.64) ** 2)
    body = 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) / 0.02, -30.0, 30.0)))
    image = 14.0 + 136.0 * body + 28.0 * np.exp(-(((u - 0.5) / 0.045) ** 2)) * body  # mediastinum
    image.setflags(write=False)
    return image


def _lung_window(geometry: LungGeometry, size: int) -> tuple[slice, slice]:
    """Pixel window outside of which a lung field (and its ribs) is negligible."""
    reach_x, reach_y = 1.35 * geometry.half_width, 1.35 * geometry.half_height
    x0 = max(0, math.floor((geometry.center_x - reach_x) * size))
    x1 = min(size, math.ceil((geometry.center_x + reach_x) * size))
    y0 = max(0, math.floor((geometry.center_y - reach_y) * size))
    y1 = min(size, math.ceil((geometry.center_y + reach_y) * size))
    return slice(y0, y1), slice(x0, x1)


def synthesize_case(seed: int, index: int, size: int = 224) -> SynthCase:
    """Generate case ``index`` of the dataset with ``seed`` at ``size`` x ``size`` pixels (pure function)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    u = coords[None, :]
    v = coords[:, None]

    # Layout: lung geometry with small jitter, zones holding opacities, which of them are targets.
    lungs: dict[str, LungGeometry] = {}
    for lung in LUNGS:
        scale = 1.0 + float(rng.uniform(-LUNG_SCALE_JITTER, LUNG_SCALE_JITTER))
        lungs[lung] = LungGeometry(
            LUNG_CENTER_X[lung] + float(rng.uniform(-LUNG_JITTER, LUNG_JITTER)),
            LUNG_CENTER_Y + float(rng.uniform(-LUNG_JITTER, LUNG_JITTER)),
            LUNG_HALF_WIDTH * scale,
            LUNG_HALF_HEIGHT * scale,
        )
    all_zones = [(lung, zone) for lung in LUNGS for zone in ZONES]
    n_opacities = int(rng.choice(OPACITY_COUNTS))
    probs = TARGET_COUNT_PROBS[n_opacities]
    n_targets = int(rng.choice(list(probs), p=list(probs.values())))
    chosen = rng.choice(len(all_zones), size=n_opacities, replace=False)
    target_slots = set(rng.choice(n_opacities, size=n_targets, replace=False).tolist())

    # Anatomy: background, body silhouette, mediastinum, lung fields with mild ribs, soft texture.
    rib_phase = float(rng.uniform(0.0, 2 * math.pi))
    rib_period = float(rng.uniform(0.07, 0.085))
    image = _body(size).astype(np.float64)
    lung_field = np.zeros((size, size))
    ribs = np.zeros((size, size))
    for geometry in lungs.values():
        rows, cols = _lung_window(geometry, size)
        du = (u[:, cols] - geometry.center_x) / geometry.half_width
        dv = (v[rows] - geometry.center_y) / geometry.half_height
        abs_du, abs_dv = np.abs(du), np.abs(dv)
        level = abs_du**LUNG_SHAPE_POWER + abs_dv**LUNG_SHAPE_POWER  # separable: 1-D powers
        inside = 1.0 / (1.0 + np.exp(np.minimum((level - 1.0) / 0.08, 30.0)))
        lung_field[rows, cols] = np.maximum(lung_field[rows, cols], inside)
        curve = v[rows] - 0.10 * du * du  # ribs bend downwards laterally
        ribs[rows, cols] += inside * (0.5 + 0.5 * np.cos(2 * math.pi * curve / rib_period + rib_phase))
    image = image * (1.0 - 0.58 * lung_field) + 7.0 * ribs
    image += 5.0 * _smooth_noise(rng, size, 8)

    # Opacities: alpha-blended towards a bright level, the same distribution for every role.
    haze = 1.0 + 0.12 * _smooth_noise(rng, size, 16)
    labels = np.zeros((size, size), dtype=np.uint8)
    opacities: list[Opacity] = []
    for slot, zone_index in enumerate(chosen.tolist()):
        lung, zone = all_zones[zone_index]
        opacity, harmonics = _sample_opacity(rng, lung, zone, slot in target_slots, lungs[lung])
        rows, cols = _window(opacity, harmonics, size)
        profile, inside = _opacity_profile(u[:, cols], v[rows], opacity, harmonics)
        weight = np.clip(opacity.alpha * profile * haze[rows, cols], 0.0, 1.0)
        image[rows, cols] += weight * (OPACITY_LEVEL - image[rows, cols])
        labels[rows, cols][inside] = slot + 1
        opacities.append(opacity)

    gain = float(rng.uniform(0.92, 1.08))
    offset = float(rng.uniform(-6.0, 6.0))
    image = image * gain + offset + rng.normal(0.0, 2.5, size=(size, size))
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    target_labels = np.array([k + 1 for k, o in enumerate(opacities) if o.is_target], dtype=np.uint8)
    mask = np.where(np.isin(labels, target_labels), 255, 0).astype(np.uint8)
    findings = Findings(
        left=frozenset(o.zone for o in opacities if o.is_target and o.lung == "left"),
        right=frozenset(o.zone for o in opacities if o.is_target and o.lung == "right"),
        count=n_targets,
    )
    return SynthCase(index, image_u8, mask, labels, findings, render_report(findings), opacities, lungs)


def _xlsx_bytes(rows: Sequence[tuple[str, str]]) -> bytes:
    """An ``Image``/``Description`` workbook whose bytes depend only on ``rows``."""
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None  # a new workbook has one worksheet
    sheet.title = "Sheet1"
    sheet.append(["Image", "Description"])
    for row in rows:
        sheet.append(list(row))
    workbook.properties.creator = GENERATOR
    workbook.properties.created = _FIXED_TIME
    workbook.properties.modified = _FIXED_TIME
    raw = io.BytesIO()
    workbook.save(raw)
    # openpyxl stamps the zip entries and docProps "modified" with the current time: repack with fixed ones.
    fixed = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(raw.getvalue())) as source,
        zipfile.ZipFile(fixed, "w", compression=zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o600 << 16
            data = source.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)", rb"\g<1>2000-01-01T00:00:00Z\g<2>", data
                )
            target.writestr(entry, data)
    return fixed.getvalue()


def _split_counts(n: int, splits: Sequence[float]) -> list[int]:
    if len(splits) != len(SPLIT_FOLDERS):
        raise LvsegError(f"splits must give {len(SPLIT_FOLDERS)} fractions (train, val, test), got {list(splits)}")
    fractions = [float(f) for f in splits]
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise LvsegError(f"splits must be non-negative and sum to 1, got {fractions}")
    counts = [0, 0, 0]
    for k in (1, 2):
        if fractions[k] > 0:
            counts[k] = max(1, round(n * fractions[k]))
    counts[0] = n - counts[1] - counts[2]
    if counts[0] < (1 if fractions[0] > 0 else 0) or (fractions[0] == 0 and counts[0] != 0):
        needed = sum(1 for f in fractions if f > 0)
        raise LvsegError(f"n={n} is too small for splits {fractions}: need at least {needed} images")
    return counts


def is_synth_output(out: Path) -> bool:
    """True when ``out`` holds a manifest written by this generator (complete or interrupted)."""
    manifest = Path(out) / MANIFEST_NAME
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _prepare_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LvsegError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (is_synth_output(out) or force):
            raise LvsegError(
                f"output folder {out} is not empty and is not a previous synthetic dataset "
                "(no lvseg manifest.json); choose an empty folder or pass --force"
            )
        # Remove the previous splits so no stale image survives; other files are left alone.
        for folder in SPLIT_FOLDERS:
            if (out / folder).is_dir():
                shutil.rmtree(out / folder)
    out.mkdir(parents=True, exist_ok=True)


def _manifest(params: dict[str, Any], counts: dict[str, int], stats: dict[str, Any], complete: bool) -> dict[str, Any]:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "complete": complete,
        "params": params,
        "counts": counts,
        "conventions": {
            "laterality": "radiological: patient's left lung is on the image's right side",
            "zones": "upper/middle/lower thirds of each lung's height",
            "mask_naming": "mask_<image name>",
            "mask_values": [0, 255],
            "text_columns": ["Image (mask file name)", "Description"],
            "lung_center_x": LUNG_CENTER_X,
            "lung_center_y": LUNG_CENTER_Y,
            "lung_half_width": LUNG_HALF_WIDTH,
            "lung_half_height": LUNG_HALF_HEIGHT,
            "lung_jitter": LUNG_JITTER,
        },
        "stats": stats,
    }


def generate_synthetic_dataset(
    out: Path | str,
    n: int = 1000,
    size: int = 224,
    seed: int = 0,
    splits: Sequence[float] = (0.7, 0.1, 0.2),
    force: bool = False,
) -> dict[str, Any]:
    """Write the synthetic dataset in the LViT folder layout under ``out`` and return its manifest.

    Layout: ``out/{Train,Val,Test}_Folder/img/synth_XXXXX.png``, ``labelcol/mask_synth_XXXXX.png`` and
    ``{Train,Val,Test}_text.xlsx`` (``Image`` = mask file name, ``Description`` = report), plus
    ``out/manifest.json`` (counts, parameters, statistics). Cases ``0 .. n-1`` go to train, val and test
    in order. A non-empty ``out`` that is not a previous synthetic dataset is refused unless ``force``;
    when overwriting, the old split folders are removed first.

    The statistics include ``target_pixel_fraction`` (share of opacity pixels that are targets) and
    ``all_opacities_dice`` (mean Dice of predicting every opacity: the ceiling of a model that cannot
    read the report).
    """
    out = Path(out)
    if n < 1:
        raise LvsegError(f"n must be >= 1, got {n}")
    if size < 32:
        raise LvsegError(f"size must be >= 32 pixels, got {size}")
    counts = _split_counts(n, splits)
    _prepare_output(out, force)
    params = {"n": n, "size": size, "seed": seed, "splits": [float(f) for f in splits]}
    split_counts = dict(zip(SPLIT_FOLDERS, counts))
    atomic_write_text(out / MANIFEST_NAME, json.dumps(_manifest(params, split_counts, {}, False), indent=2))

    started = time.perf_counter()
    zone_usage: Counter[str] = Counter()
    target_counts: Counter[int] = Counter()
    opacity_counts: Counter[int] = Counter()
    laterality: Counter[str] = Counter()
    target_pixels = opacity_pixels = 0
    dice_all: list[float] = []
    index = 0
    for folder, text_name, count in zip(SPLIT_FOLDERS, SPLIT_TEXT_FILES, counts):
        (out / folder / "img").mkdir(parents=True, exist_ok=True)
        (out / folder / "labelcol").mkdir(parents=True, exist_ok=True)
        rows: list[tuple[str, str]] = []
        for _ in range(count):
            case = synthesize_case(seed, index, size)
            name = case_name(index)
            # Plain writes (no fsync per file): the manifest's "complete" flag, written last, marks a
            # finished dataset; an interrupted run leaves "complete": false and is simply regenerated.
            (out / folder / "img" / name).write_bytes(png_bytes(case.image))
            (out / folder / "labelcol" / mask_name(name)).write_bytes(png_bytes(case.mask))
            rows.append((mask_name(name), case.report))
            for opacity in case.opacities:
                if opacity.is_target:
                    zone_usage[f"{opacity.lung}_{opacity.zone}"] += 1
            target_counts[case.findings.count] += 1
            opacity_counts[len(case.opacities)] += 1
            laterality["bilateral" if len(case.findings.lungs) == 2 else "unilateral"] += 1
            targets = int(np.count_nonzero(case.mask))
            everything = int(np.count_nonzero(case.labels))
            target_pixels += targets
            opacity_pixels += everything
            dice_all.append(2.0 * targets / (targets + everything) if everything else 1.0)
            index += 1
        atomic_write_bytes(out / folder / text_name, _xlsx_bytes(rows))
    elapsed = time.perf_counter() - started

    stats = {
        "target_zone_usage": dict(sorted(zone_usage.items())),
        "targets_per_image": {str(k): v for k, v in sorted(target_counts.items())},
        "opacities_per_image": {str(k): v for k, v in sorted(opacity_counts.items())},
        "laterality": dict(sorted(laterality.items())),
        "target_pixel_fraction": round(target_pixels / max(1, opacity_pixels), 4),
        "all_opacities_dice": round(float(np.mean(dice_all)), 4),
    }
    manifest = _manifest(params, split_counts, stats, True)
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2))
    logger.info("wrote %d synthetic images (%dx%d, seed %d) to %s in %.1f s", n, size, size, seed, out, elapsed)
    return manifest


def contact_sheet(cases: Sequence[SynthCase], path: Path | str) -> Path:
    """Save a PNG with each case's image above its mask, for a quick visual check."""
    if not cases:
        raise ValueError("no cases to draw")
    size = cases[0].image.shape[0]
    sheet = np.zeros((2 * size + 2, len(cases) * (size + 2)), dtype=np.uint8)
    for k, case in enumerate(cases):
        x = k * (size + 2)
        sheet[:size, x : x + size] = case.image
        sheet[size + 2 :, x : x + size] = case.mask
    return write_png(path, sheet)
