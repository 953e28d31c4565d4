"""Which mask regions a chest report contradicts: lungs mirrored (radiological view), zones, the count."""

from __future__ import annotations

import numpy as np
import pytest

from lvseg.data.report_regions import ChestGeometry, judge_regions, report_consistent_mask
from lvseg.data.reports import Findings, parse_report
from lvseg.data.synth import synthesize_case

SIZE = 64


def _blob(mask: np.ndarray, row: int, column: int, radius: int = 3) -> np.ndarray:
    mask[row - radius : row + radius, column - radius : column + radius] = True
    return mask


def test_the_patients_left_lung_is_on_the_image_right() -> None:
    geometry = ChestGeometry()
    assert geometry.lung_at(0.8) == "left" and geometry.lung_at(0.2) == "right"
    mirrored = ChestGeometry(patient_left_on_image_right=False)
    assert mirrored.lung_at(0.8) == "right"


def test_regions_in_an_unnamed_lung_or_zone_are_dropped() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    _blob(mask, 16, 45)  # image right, top third of the lung field: the patient's upper left lung
    _blob(mask, 48, 45)  # the patient's lower left lung
    _blob(mask, 16, 18)  # image left: the patient's right lung
    findings = parse_report("Unilateral pulmonary infection, one infected area, upper left lung.")
    _, verdicts = judge_regions(mask, findings)
    assert [(v.lung, sorted(v.zones), v.kept) for v in verdicts] == [
        ("right", ["upper"], False),
        ("left", ["upper"], True),
        ("left", ["lower"], False),
    ]
    kept = report_consistent_mask(mask, findings)
    expected = _blob(np.zeros_like(mask), 16, 45)
    assert np.array_equal(kept, expected)


def test_more_regions_than_the_count_keeps_the_most_confident() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    _blob(mask, 16, 45)
    _blob(mask, 32, 45)
    _blob(mask, 48, 45)
    probabilities = np.where(mask, 0.6, 0.0)
    probabilities[29:35, 42:48] = 0.95
    probabilities[45:51, 42:48] = 0.9
    findings = parse_report("Unilateral pulmonary infection, two infected areas, all left lung.")
    kept = report_consistent_mask(mask, findings, probabilities)
    assert not kept[16, 45] and kept[32, 45] and kept[48, 45]
    _, verdicts = judge_regions(mask, findings, probabilities)
    assert "beyond the report's 2" in verdicts[0].reason


def test_a_region_straddling_a_zone_border_agrees_with_either_zone() -> None:
    geometry = ChestGeometry()
    border = geometry.lung_top + (geometry.lung_bottom - geometry.lung_top) / 3  # upper | middle
    mask = np.zeros((SIZE, SIZE), bool)
    _blob(mask, int(border * SIZE), 45)
    for zone in ("upper", "middle"):
        assert report_consistent_mask(mask, Findings(left=frozenset({zone}), count=1)).any()
    assert not report_consistent_mask(mask, Findings(left=frozenset({"lower"}), count=1)).any()


def test_unreadable_reports_and_empty_masks_change_nothing() -> None:
    mask = _blob(np.zeros((SIZE, SIZE), bool), 20, 20)
    assert np.array_equal(report_consistent_mask(mask, parse_report("Dense nuclei in a tissue tile.")), mask)
    assert not report_consistent_mask(np.zeros((SIZE, SIZE), bool), Findings(left=frozenset({"upper"}))).any()
    with pytest.raises(ValueError, match="shape"):
        judge_regions(mask, Findings(), np.zeros((2, 2)))


@pytest.mark.parametrize("index", range(12))
def test_the_synthetic_sets_own_masks_never_contradict_their_reports(index: int) -> None:
    case = synthesize_case(seed=7, index=index, size=SIZE)
    mask = case.mask > 0
    kept = report_consistent_mask(mask, parse_report(case.report))
    assert np.array_equal(kept, mask), case.report
    distractors = (case.labels > 0) & ~mask  # opacities the report does not name
    if distractors.any():
        judged = report_consistent_mask(case.labels > 0, parse_report(case.report))
        assert np.array_equal(judged, mask), "every distractor lies in a lung zone the report does not name"
