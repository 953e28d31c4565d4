"""The QaTa-COV19 report grammar: rendering, parsing, the zone vector, the report embedding for matching."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lvseg.data.reports import (
    STRUCTURED_SIZE,
    ZONE_VECTOR_LABELS,
    ZONES,
    Findings,
    ReportEmbedder,
    parse_report,
    render_report,
    structured_vector,
    zone_vector,
)

ALL = frozenset(ZONES)
UM = frozenset({"upper", "middle"})
ML = frozenset({"middle", "lower"})
NONE: frozenset[str] = frozenset()

# The 14 LV-loss template sentences and the findings they state (left zones, right zones, count).
TEMPLATES: list[tuple[str, Findings]] = [
    ("Unilateral pulmonary infection, one infected area, all left lung.", Findings(ALL, NONE, 1)),
    ("Unilateral pulmonary infection, two infected areas, upper middle lower left lung.", Findings(ALL, NONE, 2)),
    ("Unilateral pulmonary infection, three infected areas, upper middle lower left lung.", Findings(ALL, NONE, 3)),
    ("Unilateral pulmonary infection, one infected area, all right lung.", Findings(NONE, ALL, 1)),
    ("Unilateral pulmonary infection, two infected areas, upper middle lower right lung.", Findings(NONE, ALL, 2)),
    ("Unilateral pulmonary infection, three infected areas, upper middle lower right lung.", Findings(NONE, ALL, 3)),
    ("Bilateral pulmonary infection, two infected areas, all left lung and all right lung.", Findings(ALL, ALL, 2)),
    (
        "Bilateral pulmonary infection, two infected areas, all left lung and upper middle right lung.",
        Findings(ALL, UM, 2),
    ),
    (
        "Bilateral pulmonary infection, two infected areas, all left lung and middle lower right lung.",
        Findings(ALL, ML, 2),
    ),
    (
        "Bilateral pulmonary infection, two infected areas, upper middle left lung and all right lung.",
        Findings(UM, ALL, 2),
    ),
    (
        "Bilateral pulmonary infection, two infected areas, middle lower left lung and all right lung.",
        Findings(ML, ALL, 2),
    ),
    (
        "Bilateral pulmonary infection, three infected areas, all left lung and upper middle lower right lung.",
        Findings(ALL, ALL, 3),
    ),
    (
        "Bilateral pulmonary infection, three infected areas, upper middle lower left lung and all right lung.",
        Findings(ALL, ALL, 3),
    ),
    (
        "Bilateral pulmonary infection, four infected areas, upper middle lower left lung and upper middle lower "
        "right lung.",
        Findings(ALL, ALL, 4),
    ),
]
# Templates 12 and 13 are ambiguous (which lung holds two areas); the renderer has one canonical form.
AMBIGUOUS = {11, 12}


def _subsets() -> list[frozenset[str]]:
    return [frozenset(c) for r in range(len(ZONES) + 1) for c in itertools.combinations(ZONES, r)]


@pytest.mark.parametrize("index", range(len(TEMPLATES)))
def test_templates_parse_to_expected_findings(index: int) -> None:
    sentence, expected = TEMPLATES[index]
    assert parse_report(sentence) == expected


@pytest.mark.parametrize("index", sorted(set(range(len(TEMPLATES))) - AMBIGUOUS))
def test_render_reproduces_unambiguous_templates_verbatim(index: int) -> None:
    sentence, findings = TEMPLATES[index]
    assert render_report(findings) == sentence


def test_ambiguous_templates_render_canonically() -> None:
    assert render_report(TEMPLATES[11][1]) == (
        "Bilateral pulmonary infection, three infected areas, upper middle lower left lung and upper middle "
        "lower right lung."
    )


def test_template_workbook_parses(lv_templates_root: Path) -> None:
    table = pd.read_excel(lv_templates_root / "LV_loss.xlsx")
    expected = dict(TEMPLATES)
    assert len(table) == 14
    for description in table["Description"]:
        assert parse_report(description) == expected[description.strip()]


def test_round_trip_over_all_combinations() -> None:
    checked = 0
    for left, right in itertools.product(_subsets(), repeat=2):
        for count in range(8):
            findings = Findings(left, right, count)
            text = render_report(findings)
            assert parse_report(text) == findings, text
            assert parse_report(text.upper()) == findings
            checked += 1
    assert checked == 8 * 8 * 8


def test_render_rules() -> None:
    assert render_report(Findings({"lower", "upper"}, NONE, 2)) == (
        "Unilateral pulmonary infection, two infected areas, upper lower left lung."
    )
    assert render_report(Findings(NONE, {"middle"}, 1)) == (
        "Unilateral pulmonary infection, one infected area, middle right lung."
    )
    assert render_report(Findings({"upper"}, {"lower"}, 2)) == (
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    )
    assert render_report(Findings()) == "No pulmonary infection."
    assert render_report(Findings(count=13)).endswith("13 infected areas.")


def test_parse_is_robust() -> None:
    messy = "  bilateral   PULMONARY infection ,  2 infected   areas, Upper-Middle left lungs and lower  right lung "
    assert parse_report(messy) == Findings(UM, frozenset({"lower"}), 2)
    assert parse_report("Unilateral pulmonary infection, one infected area,\nlower\tleft lung.") == Findings(
        frozenset({"lower"}), NONE, 1
    )
    for junk in ("", "   ", "hello world", "left lung", "no findings", None, 42, b"upper left lung", ["x"]):
        assert parse_report(junk) == Findings()  # type: ignore[arg-type]
    assert parse_report("No pulmonary infection.").is_empty


def test_zone_vector_order() -> None:
    assert ZONE_VECTOR_LABELS == (
        "left_upper",
        "left_middle",
        "left_lower",
        "right_upper",
        "right_middle",
        "right_lower",
        "count",
    )
    vector = zone_vector(Findings({"upper"}, {"middle", "lower"}, 3))
    assert vector == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 3.0]
    assert zone_vector(Findings()) == [0.0] * 7


def test_findings_validation() -> None:
    with pytest.raises(ValueError):
        Findings({"top"}, NONE, 1)
    with pytest.raises(TypeError):
        Findings("upper", NONE, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Findings(NONE, NONE, -1)
    assert Findings(["Upper", "upper"], [], 1).left == frozenset({"upper"})
    assert Findings({"upper"}, NONE, 1).lungs == ("left",)


# --- report embedding (LV-loss matching) ----------------------------------------------------------


def test_matching_is_order_sensitive() -> None:
    a = "Bilateral pulmonary infection, three infected areas, all left lung and upper middle lower right lung."
    b = "Bilateral pulmonary infection, three infected areas, upper middle lower left lung and all right lung."
    embedder = ReportEmbedder([a, b])
    e = embedder.embed([a, b])
    assert e[0] @ e[0] == pytest.approx(1.0, abs=1e-5)
    assert e[0] @ e[1] < 0.99


def test_structured_vector_layout() -> None:
    vector = structured_vector("Unilateral pulmonary infection, two infected areas, upper middle right lung.")
    assert vector.shape == (STRUCTURED_SIZE,) and vector.dtype == np.float32
    assert vector[:6].tolist() == [0, 0, 0, 1, 1, 0]  # left upper/middle/lower, right upper/middle/lower
    assert vector[6:8].tolist() == [0, 2]  # sides, weighted 2
    assert vector[8:].tolist() == [0, 0.5, 0, 0, 0, 0]  # one-hot count, weighted 0.5
    assert not structured_vector("The nuclei density is high.").any()
    assert ReportEmbedder(["a b"]).embed([]).shape == (0, STRUCTURED_SIZE + 3)  # a, b, a_b
