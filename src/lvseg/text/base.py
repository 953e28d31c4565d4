"""The text-encoder interface shared by every model that reads reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class TextFeatures:
    """Encoded reports.

    tokens: (B, L, D) per-token features, padded or truncated to the encoder's ``max_length`` L.
    mask:   (B, L) bool, True where a real token is.
    pooled: (B, D) one vector per report (masked mean of the tokens, or the encoder's own pooling).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


@dataclass(frozen=True)
class TextReading:
    """How a text front end understood one report, so users learn when a report was (mostly) not read.

    words: tokens in the report (0 when the front end does not count words); unknown_words: those a learned
    vocabulary does not know (read as ``<unk>``); parsed: for a report-grammar front end, whether the report
    followed the grammar (None: the front end has no grammar); problem: what did not parse.
    """

    words: int = 0
    unknown_words: tuple[str, ...] = ()
    parsed: bool | None = None
    problem: str | None = None

    #: Above this fraction of unknown words, the report is said to be mostly unread.
    MOSTLY_UNKNOWN = 0.5

    def warnings(self) -> list[str]:
        """Plain sentences for the user (empty when the report was read as written)."""
        found = []
        if self.parsed is False:
            found.append(
                "the report does not follow the report grammar this model reads, so it was read as an "
                f"empty report{f' ({self.problem})' if self.problem else ''}"
            )
        if self.unknown_words:
            distinct = list(dict.fromkeys(self.unknown_words))
            shown = ", ".join(f"'{word}'" for word in distinct[:12]) + (", ..." if len(distinct) > 12 else "")
            repeats = f" ({len(distinct)} distinct)" if len(distinct) != len(self.unknown_words) else ""
            found.append(
                f"{len(self.unknown_words)} of {self.words} words{repeats} are not in this model's vocabulary "
                f"and were ignored: {shown}"
            )
            if self.words and len(self.unknown_words) / self.words > self.MOSTLY_UNKNOWN:
                found.append(
                    "most of the report is unknown to the model: the result barely depends on it; "
                    "use the wording of the reports it was trained on"
                )
        return found


class TextEncoder(nn.Module):
    """Maps a list of report strings to :class:`TextFeatures`.

    Subclasses set ``feature_dim`` (D), ``max_length`` (L) and ``trainable``, and implement
    ``forward(texts)`` and ``config()``, a JSON-able dict that :func:`lvseg.text.text_encoder_from_config`
    turns back into an equal encoder (trainable weights travel in the state_dict).
    """

    feature_dim: int
    max_length: int
    trainable: bool

    def forward(self, texts: list[str]) -> TextFeatures:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, text: str) -> TextReading:
        """How this encoder understands ``text`` (default: nothing to report, e.g. subword tokenizers read
        every word)."""
        return TextReading()


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` (B, L, D) over the positions where ``mask`` (B, L) is True -> (B, D).

    A row without any True position gives a zero vector (no division by zero).
    """
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (tokens * weights).sum(dim=1)  # (B, D)
    count = weights.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return total / count


def check_texts(texts: object) -> list[str]:
    """Return ``texts`` as a list of strings; a bare string or a non-string item is a programming error."""
    if isinstance(texts, str):
        raise TypeError("a text encoder takes a list of strings, not one string; wrap it as [text]")
    items = list(texts)  # type: ignore[call-overload]
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"a text encoder takes a list of strings, got an item of type {type(item).__name__}")
    return items
