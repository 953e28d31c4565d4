"""The LViT language-vision (LV) loss: pull an unlabeled prediction toward the mask of the most similar report.

For an unlabeled image, its report is compared with the reports of a *reference set* whose masks are
known, either

* the LViT template set (``LV_loss.xlsx`` with columns ``Image`` = ``figN.png`` and ``Description``,
  plus the template masks, non-zero = lesion), see :func:`load_template_references`, or
* the labeled training images, see :func:`references_from_samples`;

the most similar reference (cosine similarity of report embeddings) gives a reference mask, and

    LV loss = 1 - cos(predicted probability map, reference mask resized to the model's size)

computed per image over the flattened (H * W) maps (:func:`lv_loss`).

Report matching. The run's own text encoder is a poor matching space: a learned encoder is a moving
target during training and its pooled output is random at the start. The LV matching therefore uses
the *fixed*, deterministic :class:`lvseg.data.reports.ReportEmbedder` (QaTa structured findings +
word/bigram TF-IDF, described there), fitted once on the reference reports, so every unlabeled image's
reference is decided once before training (:meth:`LVReferenceSet.match`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lvseg.data.images import read_mask, resize_mask
from lvseg.data.layout import IMAGE_COLUMN, TEXT_COLUMN, Sample, read_text_table
from lvseg.data.reports import ReportEmbedder
from lvseg.errors import LvsegError

log = logging.getLogger(__name__)

TEMPLATE_TABLE = "LV_loss.xlsx"


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
        raise LvsegError(f"--lv-templates '{folder}' holds no {TEMPLATE_TABLE} (columns {IMAGE_COLUMN}, {TEXT_COLUMN})")
    texts, masks, names = [], [], []
    for row in read_text_table(table_path):
        image_name, description = row.key, row.description
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
    masks = torch.stack(
        [resize_mask(read_mask(sample.mask_path), img_size) for sample in labeled if sample.mask_path is not None]
    )  # all of them: narrows the type
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
