"""A simple, dependency-free word tokenizer and vocabulary builder for the ``learned`` encoder."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
SPECIAL_TOKENS: tuple[str, str] = (PAD, UNK)

# A word is a run of letters/digits (keeping inner apostrophes, hyphens and decimal points, as in
# "don't", "x-ray", "2.5"); every other non-space character is a token of its own (punctuation).
_TOKEN_RE = re.compile(r"[^\W_]+(?:['\-.][^\W_]+)*|[^\w\s]|_")
#: The tokenizer's pattern, for tokenizing the same way elsewhere (``lvseg export`` writes it to its manifest).
TOKEN_REGEX: str = _TOKEN_RE.pattern


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and single punctuation marks.

    >>> tokenize("Bilateral pulmonary infection, two infected areas.")
    ['bilateral', 'pulmonary', 'infection', ',', 'two', 'infected', 'areas', '.']
    """
    return _TOKEN_RE.findall(text.lower())


def build_vocabulary(texts: Iterable[str], min_count: int = 1) -> list[str]:
    """Build a word list from ``texts``: ``<pad>`` (id 0) and ``<unk>`` (id 1) first, then every token seen
    at least ``min_count`` times, most frequent first (ties in alphabetical order, so the result does not
    depend on the order of ``texts``)."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenize(text))
    words = [w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS]
    words.sort(key=lambda w: (-counts[w], w))
    return [*SPECIAL_TOKENS, *words]
