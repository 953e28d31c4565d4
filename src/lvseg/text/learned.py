"""The ``learned`` text encoder: a word vocabulary from the training reports and trainable embeddings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lvseg.errors import LvsegError
from lvseg.text.base import TextEncoder, TextFeatures, TextReading, check_texts, masked_mean
from lvseg.text.tokenize import PAD, PAD_ID, SPECIAL_TOKENS, UNK, UNK_ID, build_vocabulary, tokenize

logger = logging.getLogger(__name__)

_MAX_CACHED_TEXTS = 100_000


class LearnedTextEncoder(TextEncoder):
    """Word embeddings plus learned position embeddings, trained with the segmentation network.

    ``vocab`` is the word list (``vocab[0] == "<pad>"``, ``vocab[1] == "<unk>"``), usually made by
    :meth:`from_texts`. Each report is lower-cased, split into words and punctuation
    (:func:`lvseg.text.tokenize.tokenize`), mapped to ids (unknown words -> ``<unk>``) and truncated or
    padded to ``max_length``. An empty report is encoded as a single ``<unk>`` so that every row of the
    mask has at least one True (attention over an all-padding row would give NaN).

    With ``context_layers`` > 0, a small pre-norm Transformer encoder runs over the embeddings so each
    token carries its sentence's context (as BERT's tokens do for the official LViT): "upper" then knows
    which lung it refers to, which a per-token embedding cannot express.

    Output: ``tokens`` (B, max_length, dim) = (contextualised) word + position embedding, zero at padding;
    ``mask`` (B, max_length) bool; ``pooled`` (B, dim) = masked mean of ``tokens``.
    """

    trainable = True

    def __init__(self, vocab: Sequence[str], dim: int = 64, max_length: int = 32, context_layers: int = 1) -> None:
        super().__init__()
        vocab = list(vocab)
        if tuple(vocab[:2]) != SPECIAL_TOKENS:
            raise LvsegError(f"a learned text vocabulary must start with {PAD!r}, {UNK!r}; got {vocab[:2]!r}")
        if len(set(vocab)) != len(vocab):
            raise LvsegError("a learned text vocabulary must not repeat a word")
        if dim < 1 or max_length < 1:
            raise LvsegError(f"learned text encoder needs dim >= 1 and max_length >= 1, got {dim} and {max_length}")
        self.vocab: list[str] = vocab
        self.feature_dim = int(dim)
        self.max_length = int(max_length)
        self._index: dict[str, int] = {word: i for i, word in enumerate(vocab)}
        self._ids_cache: dict[str, list[int]] = {}

        self.word_embedding = nn.Embedding(len(vocab), self.feature_dim, padding_idx=PAD_ID)
        self.position_embedding = nn.Embedding(self.max_length, self.feature_dim)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        if context_layers < 0:
            raise LvsegError(f"learned text encoder needs context_layers >= 0, got {context_layers}")
        self.context_layers = int(context_layers)
        self.context: nn.TransformerEncoder | None = None
        if self.context_layers:
            heads = next(h for h in (4, 2, 1) if self.feature_dim % h == 0)
            layer = nn.TransformerEncoderLayer(
                self.feature_dim,
                heads,
                dim_feedforward=2 * self.feature_dim,
                dropout=0.0,
                batch_first=True,
                norm_first=True,
            )
            self.context = nn.TransformerEncoder(layer, self.context_layers, enable_nested_tensor=False)

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], dim: int = 64, max_length: int = 32, min_count: int = 1, context_layers: int = 1
    ) -> LearnedTextEncoder:
        """Build the vocabulary from ``texts`` (words seen at least ``min_count`` times) and the encoder."""
        texts = check_texts(texts)
        if not texts:
            raise LvsegError("the learned text encoder needs the training reports to build its vocabulary; got none")
        vocab = build_vocabulary(texts, min_count=min_count)
        logger.info("learned text vocabulary: %d words from %d reports", len(vocab) - 2, len(texts))
        return cls(vocab, dim=dim, max_length=max_length, context_layers=context_layers)

    def config(self) -> dict[str, Any]:
        return {
            "type": "learned",
            "vocab": list(self.vocab),
            "dim": self.feature_dim,
            "max_length": self.max_length,
            "context_layers": self.context_layers,
        }

    def read(self, text: str) -> TextReading:
        """Words of ``text`` outside the vocabulary (punctuation is not counted)."""
        words = [token for token in tokenize(text) if any(char.isalnum() for char in token)]
        return TextReading(words=len(words), unknown_words=tuple(w for w in words if w not in self._index))

    def token_ids(self, text: str) -> list[int]:
        """Ids of ``text``'s tokens, truncated to ``max_length`` (no padding); cached per text."""
        ids = self._ids_cache.get(text)
        if ids is None:
            ids = [self._index.get(token, UNK_ID) for token in tokenize(text)][: self.max_length] or [UNK_ID]
            if len(self._ids_cache) >= _MAX_CACHED_TEXTS:
                self._ids_cache.clear()
            self._ids_cache[text] = ids
        return ids

    def encode_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, max_length) long tensor of token ids, padded with ``<pad>`` (0), on the encoder's device."""
        rows = [self.token_ids(text) for text in texts]
        ids = torch.full((len(rows), self.max_length), PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids.to(self.word_embedding.weight.device)

    def features_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) long -> per-token features (B, L, D), zero at padding (the tensor path, which
        ``lvseg export`` writes to ONNX)."""
        mask = ids != PAD_ID  # (B, L)
        positions = torch.arange(self.max_length, device=ids.device)
        tokens = self.word_embedding(ids) + self.position_embedding(positions).unsqueeze(0)  # (B, L, D)
        if self.context is not None:
            tokens = self.context(tokens, src_key_padding_mask=~mask)
        return tokens * mask.unsqueeze(-1).to(tokens.dtype)

    def forward(self, texts: list[str]) -> TextFeatures:
        ids = self.encode_ids(check_texts(texts))  # (B, L)
        mask = ids != PAD_ID
        tokens = self.features_from_ids(ids)
        return TextFeatures(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))

    def extra_repr(self) -> str:
        return (
            f"vocab={len(self.vocab)}, dim={self.feature_dim}, max_length={self.max_length}, "
            f"context_layers={self.context_layers}"
        )
