"""Warnings when a result contradicts its report or the image is unlike the model's training images.

A segmentation can be wrong in ways its own numbers do not show: an empty mask for a report that describes
a lesion, dozens of regions for a report that counts one, a lesion in the lung the report does not name, a
histology tile sent to a chest model. :func:`check_consistency` compares the mask with what the report
states and the image with the training images, and returns :class:`ConsistencyWarning` s (a stable
``code`` and a sentence) that the app, ``lvseg predict`` and folder prediction show beside the result.

The report side uses lvseg's chest-report grammar (:mod:`lvseg.data.reports`); reports it does not read
(e.g. histology descriptions) give no report warning. Sides follow the radiological convention of frontal
chest radiographs (:mod:`lvseg.data.report_regions`: the patient's left lung on the image's right), which
QaTa-COV19 and lvseg's synthetic set use; a DICOM's ``PatientOrientation`` overrides it (row direction
``L``: the radiological convention; ``R``: the patient's left on the image's left; anything else, e.g. a
lateral view: sides are not checked).

Codes: ``report-finding-not-found``, ``report-states-no-finding``, ``more-regions-than-report``,
``region-outside-report``, ``image-unlike-training``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lvseg.data.input_statistics import InputStatistics
from lvseg.data.report_regions import ChestGeometry, judge_regions
from lvseg.data.reports import Findings, parse_report, states_no_finding

#: A mask with more regions than this many times the report's count (and at least this many more) is flagged.
REGION_COUNT_FACTOR = 2
REGION_COUNT_MARGIN = 2
#: Regions contradicting the report are flagged when they hold at least this share of the marked area.
MIN_CONTRADICTING_AREA = 0.1


@dataclass(frozen=True)
class ConsistencyWarning:
    """``code``: machine-readable (module docstring); ``message``: one plain sentence for the reader."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def geometry_for(row_direction: str | None) -> ChestGeometry | None:
    """The chest geometry for an image whose rows run toward ``row_direction`` (DICOM PatientOrientation's
    first value): None when the sides cannot be told (not L or R)."""
    if row_direction is None:
        return ChestGeometry()
    direction = row_direction.strip().upper()[:1]
    if direction not in ("L", "R"):
        return None
    return ChestGeometry(patient_left_on_image_right=direction == "L")


def _described(findings: Findings) -> str:
    parts = [f"the {'/'.join(sorted(findings.zones(lung)))} {lung} lung" for lung in findings.lungs]
    where = " and ".join(parts)
    count = f"{findings.count} infected area{'s' if findings.count != 1 else ''}" if findings.count else ""
    return ", ".join(part for part in (count, where) if part) or "a finding"


def report_warnings(
    mask: np.ndarray,
    probability: np.ndarray | None,
    text: str,
    row_direction: str | None = None,
) -> list[ConsistencyWarning]:
    """The warnings about ``mask`` (H, W) against the report ``text`` (module docstring)."""
    from lvseg.rendering import label_lesions

    binary = np.asarray(mask) > 0
    if states_no_finding(text):
        if binary.any():
            _, count = label_lesions(binary)
            return [
                ConsistencyWarning(
                    "report-states-no-finding",
                    f"The report states no finding, but the model marked {count} region{'s' if count != 1 else ''}.",
                )
            ]
        return []
    findings = parse_report(text)
    if findings.is_empty:
        return []
    if not binary.any():
        return [
            ConsistencyWarning(
                "report-finding-not-found",
                f"The report describes {_described(findings)}, but the model found no lesion.",
            )
        ]
    warnings = []
    _, count = label_lesions(binary)
    if findings.count and count > max(REGION_COUNT_FACTOR * findings.count, findings.count + REGION_COUNT_MARGIN):
        warnings.append(
            ConsistencyWarning(
                "more-regions-than-report",
                f"The model marked {count} separate regions; the report counts {findings.count}.",
            )
        )
    geometry = geometry_for(row_direction)
    if geometry is None:
        findings = Findings(count=findings.count)  # sides unknown (e.g. a lateral view): zones cannot be placed
    if findings.lungs:
        assert geometry is not None
        _, verdicts = judge_regions(binary, findings, probability, geometry)
        outside = [verdict for verdict in verdicts if verdict.reason and not verdict.reason.startswith("beyond")]
        area = sum(verdict.area for verdict in outside)
        total = sum(verdict.area for verdict in verdicts)
        if outside and area >= MIN_CONTRADICTING_AREA * total:
            places = sorted({f"the {'/'.join(sorted(v.zones))} {v.lung} lung" for v in outside})
            convention = (
                "sides from the DICOM's PatientOrientation"
                if row_direction is not None
                else "radiological convention: the patient's left lung on the image's right"
            )
            warnings.append(
                ConsistencyWarning(
                    "region-outside-report",
                    f"{round(100 * area / total)} % of the marked area lies in {' and '.join(places)}, which the "
                    f"report ({_described(findings)}) does not name ({convention}).",
                )
            )
    return warnings


def image_warnings(model_input: Any, statistics: InputStatistics | None) -> list[ConsistencyWarning]:
    """The out-of-distribution warning for ``model_input`` (C, S, S) in [0, 1] (none without statistics)."""
    if statistics is None or model_input is None:
        return []
    try:
        score = statistics.score(model_input)
    except ValueError:  # a channel count the statistics do not describe
        return []
    if score <= statistics.threshold:
        return []
    return [
        ConsistencyWarning(
            "image-unlike-training",
            "The image is unlike the images this model was trained on (its intensity or colour statistics are "
            f"{score:.1f}x the training images' 99th percentile); the result may be meaningless.",
        )
    ]


def check_consistency(
    mask: np.ndarray,
    probability: np.ndarray | None,
    text: str,
    model_input: Any = None,
    statistics: InputStatistics | None = None,
    row_direction: str | None = None,
) -> list[ConsistencyWarning]:
    """Every warning about one result: the image first (if it is unlike the training images, nothing else
    about the result can be trusted), then the report's."""
    return image_warnings(model_input, statistics) + report_warnings(mask, probability, text, row_direction)


__all__ = ["ConsistencyWarning", "check_consistency", "geometry_for", "image_warnings", "report_warnings"]
