"""The LViT language-vision (LV) loss: pull an unlabeled prediction toward the mask of the most similar report.

For an unlabeled image, its report is compared with the reports of a *reference set* whose masks are
known, either

* the LViT template set (``LV_loss.xlsx`` with columns ``Image`` = ``figN.png`` and ``Description``,
  plus the template masks, non-zero = lesion), see :func:`load_template_references`, or
* the labeled training images, see :func:`references_from_samples`;

the most similar reference (cosine similarity of report embeddings) gives a reference mask, and

    LV loss = 1 - cos(predicted probability map, reference mask resized to the model's size)

computed per image over the flattened (H * W) maps (:func:`lv_loss`).

Report embedding (:class:`ReportEmbedder`). The run's own text encoder is a poor matching space: a
learned encoder is a moving target during training and its pooled output is random at the start. The
LV matching therefore uses a *fixed*, deterministic embedding built once from the reference reports,
so every unlabeled image's reference is decided once before training (:meth:`LVReferenceSet.match`):

    e(report) = [ sqrt(a) * s / |s| ,  sqrt(1 - a) * t / |t| ]      (a = ``structure_weight`` = 0.5)

* ``s``: the structured findings of :func:`lvseg.data.reports.parse_report`: six zone indicators
  (left/right x upper/middle/lower), the involved sides (left, right) weighted 2, and a one-hot number
  of infected areas (1 ... 6+) weighted 0.5 (so a stated count never outweighs the side); all zero for a report outside the QaTa grammar (e.g. MoNuSeg);
* ``t``: TF-IDF of word unigrams and bigrams over the reference reports (smooth idf), so word order
  matters (``all left lung and upper middle lower right lung`` differs from
  ``upper middle lower left lung and all right lung``, which the structured part cannot tell apart).

With both parts unit-length, cos(e(q), e(r)) = a * cos(s_q, s_r) + (1 - a) * cos(t_q, t_r): a
right-lung-only report shares no zone or side with a left-lung-only template, so it always prefers a
template of its own side.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lvseg.data.images import read_mask, resize_mask
from lvseg.data.layout import IMAGE_COLUMN, TEXT_COLUMN, Sample
from lvseg.data.reports import LUNGS, ZONES, parse_report
from lvseg.errors import LvsegError

log = logging.getLogger(__name__)

TEMPLATE_TABLE = "LV_loss.xlsx"
MAX_COUNT = 6
SIDE_WEIGHT = 2.0
COUNT_WEIGHT = 0.5
_WORD = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    """Lower-case words plus adjacent word pairs (``"left lung"`` -> ``left``, ``lung``, ``left_lung``)."""
    words = _WORD.findall(text.lower())
    return words + [f"{first}_{second}" for first, second in zip(words, words[1:])]


def structured_vector(text: str) -> np.ndarray:
    """The findings of a QaTa-style report as a float32 vector of length 6 + 2 + MAX_COUNT (see module doc)."""
    findings = parse_report(text)
    zones = [1.0 if zone in findings.zones(lung) else 0.0 for lung in LUNGS for zone in ZONES]
    sides = [SIDE_WEIGHT if findings.zones(lung) else 0.0 for lung in LUNGS]
    count = [0.0] * MAX_COUNT
    if findings.count > 0:
        count[min(findings.count, MAX_COUNT) - 1] = COUNT_WEIGHT
    return np.asarray(zones + sides + count, dtype=np.float32)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


class ReportEmbedder:
    """Fixed report embedding for LV matching: structured findings + word/bigram TF-IDF (module doc).

    Fitted once on the reference reports; ``embed(texts) -> float32 (N, D)`` with unit-or-zero rows
    per part, so the dot product of two embeddings is their cosine similarity (for non-empty parts).
    """

    def __init__(self, reference_texts: Sequence[str], structure_weight: float = 0.5) -> None:
        if not 0.0 <= structure_weight <= 1.0:
            raise ValueError(f"structure_weight must be in [0, 1], got {structure_weight}")
        self.structure_weight = structure_weight
        documents = [set(_tokens(text)) for text in reference_texts]
        frequency = Counter(token for document in documents for token in document)
        self.vocabulary = {token: column for column, token in enumerate(sorted(frequency))}
        n = len(documents)
        self.idf = np.asarray(
            [math.log((1 + n) / (1 + frequency[token])) + 1.0 for token in sorted(frequency)], dtype=np.float32
        )

    def tfidf(self, texts: Sequence[str]) -> np.ndarray:
        """(N, V) L2-normalised TF-IDF rows; words unseen in the reference reports are ignored."""
        matrix = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        for row, text in enumerate(texts):
            for token, count in Counter(_tokens(text)).items():
                column = self.vocabulary.get(token)
                if column is not None:
                    matrix[row, column] = count * self.idf[column]
        return _unit_rows(matrix)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 14 + V) embeddings: [sqrt(a) * unit structured, sqrt(1 - a) * unit TF-IDF]."""
        structured = _unit_rows(np.stack([structured_vector(text) for text in texts])) if texts else np.zeros((0, 14))
        return np.concatenate(
            [math.sqrt(self.structure_weight) * structured, math.sqrt(1.0 - self.structure_weight) * self.tfidf(texts)],
            axis=1,
        ).astype(np.float32)


@dataclass
class LVReferenceSet:
    """Reports with masks that unlabeled images are matched against.

    texts: R reports; masks: uint8 (R, 1, S, S) in {0, 1} at the model resolution S; names: R labels
    (template file or sample name) for logs.
    """

    texts: list[str]
    masks: torch.Tensor
    names: list[str]
    structure_weight: float = 0.5

    def __post_init__(self) -> None:
        if not self.texts:
            raise LvsegError("the LV-loss reference set is empty: it needs at least one report with a mask")
        if self.masks.shape[0] != len(self.texts) or len(self.names) != len(self.texts):
            raise ValueError("texts, masks and names of an LV reference set must have the same length")
        self.embedder = ReportEmbedder(self.texts, self.structure_weight)
        self.embeddings = self.embedder.embed(self.texts)  # (R, D), computed once

    def similarity(self, texts: Sequence[str]) -> np.ndarray:
        """(N, R) cosine similarities between ``texts`` and the reference reports."""
        return self.embedder.embed(list(texts)) @ self.embeddings.T

    def match(self, texts: Sequence[str]) -> np.ndarray:
        """Index (N,) int64 of the most similar reference report for each text (ties: lowest index)."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        return np.argmax(self.similarity(texts), axis=1).astype(np.int64)


def load_template_references(folder: str | Path, img_size: int, structure_weight: float = 0.5) -> LVReferenceSet:
    """Read the LViT template set (``LV_loss.xlsx`` + ``figN.png``) with masks resized nearest to ``img_size``."""
    folder = Path(folder)
    table_path = folder / TEMPLATE_TABLE
    if not table_path.is_file():
        raise LvsegError(f"--lv-templates '{folder}' holds no {TEMPLATE_TABLE} (columns Image, Description)")
    try:
        table = pd.read_excel(table_path, dtype=str, keep_default_na=False)
    except Exception as error:  # openpyxl raises many types for a bad file
        raise LvsegError(f"cannot read '{table_path}': {type(error).__name__}: {error}") from None
    table.columns = [str(column).strip() for column in table.columns]
    if IMAGE_COLUMN not in table.columns or TEXT_COLUMN not in table.columns:
        raise LvsegError(f"'{table_path}' needs the columns '{IMAGE_COLUMN}' and '{TEXT_COLUMN}'; found {list(table.columns)}")
    texts, masks, names = [], [], []
    for image_name, description in zip(table[IMAGE_COLUMN], table[TEXT_COLUMN]):
        image_name, description = str(image_name).strip(), str(description).strip()
        if not image_name or not description:
            continue
        mask_path = folder / image_name
        if not mask_path.is_file():
            raise LvsegError(f"template mask '{mask_path}' named in '{table_path}' does not exist")
        masks.append(resize_mask(read_mask(mask_path), img_size))
        texts.append(description)
        names.append(image_name)
    if not texts:
        raise LvsegError(f"'{table_path}' lists no template")
    log.info("LV loss: %d templates from %s", len(texts), folder)
    return LVReferenceSet(texts, torch.stack(masks), names, structure_weight)


def references_from_samples(samples: Sequence[Sample], img_size: int, structure_weight: float = 0.5) -> LVReferenceSet:
    """The labeled training images as the reference set (their masks read once, resized nearest)."""
    labeled = [sample for sample in samples if sample.mask_path is not None]
    if not labeled:
        raise LvsegError("the LV loss needs labeled images (or --lv-templates) to take reference masks from")
    masks = torch.stack([resize_mask(read_mask(sample.mask_path), img_size) for sample in labeled])
    log.info("LV loss: %d labeled training images as references", len(labeled))
    return LVReferenceSet([s.text for s in labeled], masks, [s.name for s in labeled], structure_weight)


def lv_loss(probabilities: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image LV loss 1 - cos(p, m).

    probabilities: (B, 1, H, W) predicted foreground probabilities; reference: (B, 1, h, w) masks in
    {0, 1} (resized nearest to H x W when h, w differ). Returns (B,) losses in [0, 1]; 0 where the
    prediction is proportional to the reference mask.
    """
    reference = reference.to(probabilities.device, probabilities.dtype)
    if reference.shape[-2:] != probabilities.shape[-2:]:
        reference = torch.nn.functional.interpolate(reference, size=probabilities.shape[-2:], mode="nearest-exact")
    cosine = torch.nn.functional.cosine_similarity(probabilities.flatten(1), reference.flatten(1), dim=1, eps=eps)
    return 1.0 - cosine
