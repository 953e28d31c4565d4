"""LV loss: matching against the 14 LViT templates, the 1 - cosine loss (the report embedding: test_reports.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from lvseg.data.reports import ZONES, Findings, parse_report, render_report
from lvseg.training.lv_loss import LVReferenceSet, load_template_references, lv_loss

SIZE = 32


@pytest.fixture
def lv_templates(lv_templates_root: Path) -> LVReferenceSet:
    return load_template_references(lv_templates_root, SIZE)


def _side(text: str) -> str:
    findings = parse_report(text)
    return {("left",): "left", ("right",): "right", ("left", "right"): "both"}[findings.lungs]


def test_templates_load(lv_templates: LVReferenceSet) -> None:
    assert len(lv_templates.texts) == 14
    assert lv_templates.masks.shape == (14, 1, SIZE, SIZE)
    assert lv_templates.masks.dtype == torch.uint8
    assert set(lv_templates.masks.unique().tolist()) == {0, 1}
    assert lv_templates.names[0] == "fig1.png"


def test_each_template_sentence_matches_its_own_template(lv_templates: LVReferenceSet) -> None:
    similarity = lv_templates.similarity(lv_templates.texts)
    assert np.array_equal(lv_templates.match(lv_templates.texts), np.arange(14))
    # strictly: templates 12 and 13 have the same findings and differ only in word order
    own = np.diag(similarity)
    others = np.where(np.eye(14, dtype=bool), -np.inf, similarity).max(axis=1)
    assert (own > others + 1e-3).all()
    np.testing.assert_allclose(own, 1.0, atol=1e-5)


def test_sides_never_cross(lv_templates: LVReferenceSet) -> None:
    """Every consistent one-lung report matches a template of that lung only, also when rephrased."""
    subsets = [frozenset(c) for r in (1, 2, 3) for c in itertools.combinations(ZONES, r)]
    template_sides = [_side(text) for text in lv_templates.texts]
    checked = 0
    for lung, zones in itertools.product(("left", "right"), subsets):
        for count in range(1, len(zones) + 1):
            findings = Findings(**{lung: zones}, count=count)
            sentence = render_report(findings)
            for text in (sentence, sentence.lower().replace(",", ""), f"The {lung} lung: {sentence}"):
                assert template_sides[lv_templates.match([text])[0]] == lung, text
                checked += 1
    assert checked > 50


def test_non_qata_text_uses_words_only() -> None:
    references = ["The nuclei density in the upper right is high.", "The nuclei density in the lower left is low."]
    reference_set = LVReferenceSet(references, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), ["a", "b"])
    assert reference_set.match(["Nuclei density is low in the lower left."]).tolist() == [1]


def test_lv_loss_zero_for_prediction_equal_to_template(lv_templates: LVReferenceSet) -> None:
    masks = lv_templates.masks.float()
    loss = lv_loss(masks.clone(), lv_templates.masks)
    assert loss.shape == (14,)
    assert torch.allclose(loss, torch.zeros(14), atol=1e-6)
    shifted = torch.roll(masks, shifts=SIZE // 2, dims=-1)
    assert (lv_loss(shifted, lv_templates.masks) > 0.2).all()


def test_lv_loss_resizes_and_has_gradient() -> None:
    probabilities = torch.full((2, 1, 16, 16), 0.5, requires_grad=True)
    reference = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    reference[:, :, :16] = 1  # upper half
    loss = lv_loss(probabilities, reference)
    assert loss.shape == (2,)
    assert torch.allclose(loss, torch.full((2,), 1 - 0.5**0.5), atol=1e-5)  # cos(uniform, half) = sqrt(1/2)
    loss.sum().backward()
    assert probabilities.grad is not None and probabilities.grad.abs().sum() > 0
