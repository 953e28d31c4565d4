"""Where a chest report's findings lie in the image, and which mask regions a report contradicts.

A report in the QaTa-COV19 grammar (:mod:`lvseg.data.reports`) names lungs (the *patient's* left/right),
zones (upper/middle/lower thirds of a lung) and a number of infected areas. In a frontal (PA or AP)
chest radiograph shown in the radiological convention, which QaTa-COV19 (Degerli et al., 2022) and
lvseg's synthetic set (:mod:`lvseg.data.synth`) both use, the patient faces the viewer, so the
**patient's left lung is on the image's right half** and the right lung on the image's left half.

:class:`ChestGeometry` places the lung fields; its defaults are the synthetic set's geometry (lungs centred
at mid-height with a half-height of 0.32 of the image), which also fits a typical cropped PA radiograph
where the lungs span about the middle two thirds of the height. :func:`report_consistent_mask` keeps the
connected regions of a binary mask that agree with a report:

* a region's **lung** is the image half holding its centroid (mirrored as above);
* its **zones** are the lung-zone bands its rows overlap (rows above or below the lung field count for
  the nearest zone), so a region straddling a zone border agrees with either zone;
* a region is dropped when the report names lungs and its lung is not one of them, or names zones of its
  lung and the region overlaps none of them;
* when the report states a count and more regions remain, the ``count`` most confident ones (highest mean
  probability, then largest) are kept.

A report the grammar does not read (empty findings) contradicts nothing: the mask comes back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvseg.data.reports import ZONES, Findings


@dataclass(frozen=True)
class ChestGeometry:
    """The lung fields of a frontal chest radiograph, as fractions of the image size.

    ``lung_top``/``lung_bottom``: the rows (0 top, 1 bottom) the lung fields span, split into
    :data:`~lvseg.data.reports.ZONES` thirds; ``midline``: the column between the two lungs;
    ``patient_left_on_image_right``: the radiological convention (True for QaTa-COV19 and the synthetic set).
    """

    lung_top: float = 0.18
    lung_bottom: float = 0.82
    midline: float = 0.5
    patient_left_on_image_right: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.lung_top < self.lung_bottom <= 1.0:
            raise ValueError(
                f"lung_top {self.lung_top} and lung_bottom {self.lung_bottom} must satisfy "
                "0 <= lung_top < lung_bottom <= 1"
            )
        if not 0.0 < self.midline < 1.0:
            raise ValueError(f"midline {self.midline} must lie strictly between 0 and 1")

    def lung_at(self, column_fraction: float) -> str:
        """The patient's lung (``"left"``/``"right"``) at a horizontal position (0 image left, 1 image right)."""
        return str(self.lungs_at(np.asarray([column_fraction]))[0])

    def lungs_at(self, column_fractions: np.ndarray) -> np.ndarray:
        """:meth:`lung_at` of each of ``column_fractions`` (N,): (N,) array of ``"left"``/``"right"``."""
        on_image_right = np.asarray(column_fractions) >= self.midline
        return np.where(on_image_right == self.patient_left_on_image_right, "left", "right")

    def zones_between(self, top_fraction: float, bottom_fraction: float) -> frozenset[str]:
        """The zones whose bands the rows ``[top, bottom]`` (fractions of the height) overlap."""
        first, last = self.zone_bands(np.asarray([top_fraction]), np.asarray([bottom_fraction]))
        return frozenset(ZONES[first[0] : last[0] + 1])

    def zone_bands(self, top_fractions: np.ndarray, bottom_fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For rows ``[top, bottom]`` (N,) each, the indices into ZONES of the first and last zone band they
        overlap (rows above or below the lung field count for the nearest zone): two (N,) int arrays."""
        band = (self.lung_bottom - self.lung_top) / len(ZONES)

        def band_of(fractions: np.ndarray) -> np.ndarray:
            return np.clip(np.floor_divide(np.asarray(fractions) - self.lung_top, band), 0, len(ZONES) - 1).astype(int)

        return band_of(top_fractions), band_of(bottom_fractions)


@dataclass(frozen=True)
class RegionVerdict:
    """One connected region of a mask judged against a report.

    ``lung``/``zones``: where it lies; ``confidence``: mean probability over it; ``area``: pixels;
    ``reason``: why it was dropped (``""`` when kept).
    """

    lung: str
    zones: frozenset[str]
    confidence: float
    area: int
    reason: str = ""

    @property
    def kept(self) -> bool:
        return not self.reason


def _contradiction(lung: str, zones: frozenset[str], findings: Findings) -> str:
    """Why a region in ``zones`` of ``lung`` contradicts ``findings`` ("" when it does not)."""
    if findings.lungs and lung not in findings.lungs:
        return f"in the {lung} lung, which the report does not name"
    if findings.zones(lung) and not zones & findings.zones(lung):
        return f"in the {'/'.join(sorted(zones))} {lung} lung, a zone the report does not name"
    return ""


def judge_regions(
    mask: np.ndarray,
    findings: Findings,
    probabilities: np.ndarray | None = None,
    geometry: ChestGeometry = ChestGeometry(),
) -> tuple[np.ndarray, list[RegionVerdict]]:
    """Label the regions of ``mask`` (H, W) (8-connectivity) and judge each against ``findings``.

    ``probabilities`` (H, W) in [0, 1] rank regions when there are more than the report's count (default:
    the mask itself, so the larger region wins). Returns ``(labels (H, W) int, verdicts)`` with
    ``verdicts[k]`` about the region ``labels == k + 1``.
    """
    from scipy import ndimage

    binary = np.asarray(mask) > 0
    if binary.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {binary.shape}")
    score = binary.astype(np.float32) if probabilities is None else np.asarray(probabilities, dtype=np.float32)
    if score.shape != binary.shape:
        raise ValueError(f"probabilities {score.shape} and mask {binary.shape} differ in shape")
    labels, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return labels, []
    height, width = binary.shape
    # Per-region sums in one pass each (regions can number in the thousands, e.g. nuclei in a histology tile).
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=count + 1)[1:]
    confidences = np.bincount(flat, weights=score.ravel(), minlength=count + 1)[1:] / areas
    column_sums = np.bincount(flat, weights=np.tile(np.arange(width, dtype=np.float64), height), minlength=count + 1)
    lungs = geometry.lungs_at((column_sums[1:] / areas + 0.5) / width)
    row_extents = [extent[0] for extent in ndimage.find_objects(labels)]
    tops = np.array([rows.start for rows in row_extents], dtype=np.float64) / height
    bottoms = (np.array([rows.stop for rows in row_extents], dtype=np.float64) - 0.5) / height
    first_bands, last_bands = geometry.zone_bands(tops, bottoms)
    zone_sets = {(a, b): frozenset(ZONES[a : b + 1]) for a in range(len(ZONES)) for b in range(a, len(ZONES))}
    reasons = {
        (lung, zones): _contradiction(lung, zones, findings)
        for lung in ("left", "right")
        for zones in zone_sets.values()
    }
    verdicts: list[RegionVerdict] = []
    for lung, first, last, confidence, area in zip(
        lungs.tolist(), first_bands.tolist(), last_bands.tolist(), confidences.tolist(), areas.tolist()
    ):
        zones = zone_sets[first, last]
        verdicts.append(RegionVerdict(lung, zones, confidence, area, reasons[lung, zones]))
    kept = [k for k, verdict in enumerate(verdicts) if verdict.kept]
    if findings.count and len(kept) > findings.count:
        ranked = sorted(kept, key=lambda k: (verdicts[k].confidence, verdicts[k].area), reverse=True)
        for k in ranked[findings.count :]:
            verdict = verdicts[k]
            verdicts[k] = RegionVerdict(
                verdict.lung,
                verdict.zones,
                verdict.confidence,
                verdict.area,
                f"beyond the report's {findings.count} area(s), less confident",
            )
    return labels, verdicts


def report_consistent_mask(
    mask: np.ndarray,
    findings: Findings,
    probabilities: np.ndarray | None = None,
    geometry: ChestGeometry = ChestGeometry(),
) -> np.ndarray:
    """``mask`` (H, W) without the regions that contradict ``findings`` (module docstring), as bool (H, W)."""
    labels, verdicts = judge_regions(mask, findings, probabilities, geometry)
    keep = np.zeros(len(verdicts) + 1, dtype=bool)
    keep[1:] = [verdict.kept for verdict in verdicts]
    return keep[labels]


__all__ = ["ChestGeometry", "RegionVerdict", "judge_regions", "report_consistent_mask"]
