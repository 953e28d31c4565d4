"""The QaTa-COV19 report grammar: structured findings <-> one-sentence reports.

QaTa-COV19 reports (and the 14 LV-loss templates) follow one pattern::

    Unilateral pulmonary infection, one infected area, all left lung.
    Bilateral pulmonary infection, two infected areas, all left lung and upper middle right lung.

i.e. ``<Unilateral|Bilateral> pulmonary infection, <count> infected area(s), <zones> left lung
[and <zones> right lung].`` where ``<zones>`` is ``all`` or a space-separated list of
``upper``/``middle``/``lower``. ``left``/``right`` are the *patient's* sides.

Rules chosen for :func:`render_report` (the templates are not fully consistent, see below):

* laterality is ``Unilateral`` when one lung is involved, ``Bilateral`` when both are;
* the left lung is written before the right lung, joined by ``and``;
* zones are written in ``upper middle lower`` order;
* ``all`` means "the whole lung as one area": a lung involving all three zones is written ``all``
  only when the count equals the number of involved lungs (every involved lung is a single area),
  otherwise ``upper middle lower``. This reproduces 12 of the 14 templates verbatim; templates
  12 and 13 ("three infected areas", both lungs fully involved) write ``all`` for one lung and
  ``upper middle lower`` for the other, which is ambiguous about which lung holds two areas — both
  parse to the same :class:`Findings` and are rendered with ``upper middle lower`` twice;
* the count is a number word (``one`` ... ``twelve``, digits above), singular ``area`` for one;
* degenerate findings stay renderable so that ``parse_report(render_report(f)) == f`` always holds:
  no zones and no count -> ``No pulmonary infection.``; zones without count omit the count clause;
  a count without zones -> ``Pulmonary infection, two infected areas.``

:func:`parse_report` accepts any case, extra spaces, hyphens (``upper-middle``), ``lungs`` and
digits; ``all`` expands to the three zones; text it does not understand gives empty findings.

Report matching (:class:`ReportEmbedder`, used by the LV loss to find the most similar reference
report, :mod:`lvseg.training.lv_loss`): a *fixed*, deterministic embedding fitted once on the
reference reports,

    e(report) = [ sqrt(a) * s / |s| ,  sqrt(1 - a) * t / |t| ]      (a = ``structure_weight`` = 0.5)

* ``s`` = :func:`structured_vector`: the structured findings of :func:`parse_report`: six zone
  indicators (left/right x upper/middle/lower), the involved sides (left, right) weighted 2, and a
  one-hot number of infected areas (1 ... 6+) weighted 0.5 (so a stated count never outweighs the
  side); all zero for a report outside the QaTa grammar (e.g. MoNuSeg);
* ``t``: TF-IDF of word unigrams and bigrams over the reference reports (smooth idf), so word order
  matters (``all left lung and upper middle lower right lung`` differs from
  ``upper middle lower left lung and all right lung``, which the structured part cannot tell apart).

With both parts unit-length, cos(e(q), e(r)) = a * cos(s_q, s_r) + (1 - a) * cos(t_q, t_r): a
right-lung-only report shares no zone or side with a left-lung-only template, so it always prefers a
template of its own side.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

LUNGS: tuple[str, str] = ("left", "right")
ZONES: tuple[str, str, str] = ("upper", "middle", "lower")
ZONE_VECTOR_LABELS: tuple[str, ...] = tuple(f"{lung}_{zone}" for lung in LUNGS for zone in ZONES) + ("count",)

#: A short and a long report in this grammar (every text front end of a chest X-ray model reads them).
EXAMPLE_REPORTS: tuple[str, str] = (
    "Unilateral pulmonary infection, one infected area, lower left lung.",
    "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
)

_NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
_WORD_TO_NUMBER: dict[str, int] = {word: value for value, word in enumerate(_NUMBER_WORDS)}

_LUNG_PHRASE = re.compile(r"\b((?:(?:all|upper|middle|lower)\b[\s,\-/]*)+)(left|right)\s+lungs?\b", re.IGNORECASE)
_COUNT_PHRASE = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r"|\d+)\s+infected\s+areas?\b", re.IGNORECASE)
_ZONE_WORD = re.compile(r"all|upper|middle|lower", re.IGNORECASE)


def _as_zone_set(zones: Iterable[object], lung: str) -> frozenset[str]:
    if isinstance(zones, str):
        raise TypeError(f"{lung} zones must be a set of zone names, not the string {zones!r}")
    result = frozenset(str(zone).lower() for zone in zones)
    unknown = sorted(result - set(ZONES))
    if unknown:
        raise ValueError(f"unknown {lung}-lung zone(s) {unknown}; expected some of {list(ZONES)}")
    return result


@dataclass(frozen=True)
class Findings:
    """Structured content of one report.

    Attributes:
        left: zones of the patient's left lung that are involved (subset of :data:`ZONES`).
        right: zones of the patient's right lung that are involved.
        count: number of infected areas stated by the report (0 when none is stated).
    """

    left: frozenset[str] = field(default_factory=frozenset)
    right: frozenset[str] = field(default_factory=frozenset)
    count: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "left", _as_zone_set(self.left, "left"))
        object.__setattr__(self, "right", _as_zone_set(self.right, "right"))
        count = int(self.count)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        object.__setattr__(self, "count", count)

    def zones(self, lung: str) -> frozenset[str]:
        """Involved zones of ``lung`` (``"left"`` or ``"right"``)."""
        if lung not in LUNGS:
            raise ValueError(f"lung must be one of {LUNGS}, got {lung!r}")
        return self.left if lung == "left" else self.right

    @property
    def lungs(self) -> tuple[str, ...]:
        """Involved lungs, left first."""
        return tuple(lung for lung in LUNGS if self.zones(lung))

    @property
    def is_empty(self) -> bool:
        """True when the findings name no zone and no count."""
        return not self.left and not self.right and self.count == 0


def _count_words(count: int) -> str:
    word = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)
    return f"{word} infected area" + ("" if count == 1 else "s")


def _zone_words(zones: frozenset[str], use_all: bool) -> str:
    if use_all and len(zones) == len(ZONES):
        return "all"
    return " ".join(zone for zone in ZONES if zone in zones)


def render_report(findings: Findings) -> str:
    """Write ``findings`` as a QaTa-COV19 style sentence (rules in the module docstring)."""
    lungs = findings.lungs
    if not lungs:
        if findings.count == 0:
            return "No pulmonary infection."
        return f"Pulmonary infection, {_count_words(findings.count)}."
    use_all = findings.count == len(lungs)
    laterality = "Unilateral" if len(lungs) == 1 else "Bilateral"
    parts = [f"{laterality} pulmonary infection"]
    if findings.count:
        parts.append(_count_words(findings.count))
    parts.append(" and ".join(f"{_zone_words(findings.zones(lung), use_all)} {lung} lung" for lung in lungs))
    return ", ".join(parts) + "."


def parse_report(text: object) -> Findings:
    """Read the findings of a QaTa-style sentence; unknown or malformed text gives empty findings.

    A report in the grammar is read by :func:`read_report`; other text is searched for the grammar's
    phrases (``<zones> left|right lung``, ``<count> infected area(s)``) wherever they stand (the LV-loss
    matching reads any report this way). Never raises: anything that is not a string, or holds no
    recognisable phrase, yields ``Findings()``.
    """
    if not isinstance(text, str):
        return Findings()
    try:
        return read_report(text)[0]  # the sentence grammar itself
    except ReportError:
        pass  # free or malformed text: look for the grammar's phrases anywhere in it
    normalized = " ".join(text.split())
    zones: dict[str, set[str]] = {lung: set() for lung in LUNGS}
    for match in _LUNG_PHRASE.finditer(normalized):
        lung = match.group(2).lower()
        for word in _ZONE_WORD.findall(match.group(1)):
            word = word.lower()
            zones[lung].update(ZONES if word == "all" else (word,))
    count = 0
    count_match = _COUNT_PHRASE.search(normalized)
    if count_match:
        token = count_match.group(1).lower()
        count = _WORD_TO_NUMBER[token] if token in _WORD_TO_NUMBER else int(token)
    findings = Findings(left=frozenset(zones["left"]), right=frozenset(zones["right"]), count=count)
    if findings.is_empty and normalized and not normalized.lower().startswith("no pulmonary infection"):
        # Not the text itself: the app reads reports through here, and its logs must hold no report text.
        logger.debug("report of %d characters not understood, returning empty findings", len(text))
    return findings


def states_no_finding(text: object) -> bool:
    """True for the grammar's negative report (``No pulmonary infection.``, any case and spacing)."""
    return isinstance(text, str) and bool(_NO_INFECTION.match(" ".join(text.split()).rstrip(".").strip()))


def zone_vector(findings: Findings) -> list[float]:
    """Fixed-order location/count vector, labels in :data:`ZONE_VECTOR_LABELS`.

    ``[left_upper, left_middle, left_lower, right_upper, right_middle, right_lower, count]``:
    six 0/1 zone indicators followed by the raw count of infected areas.
    """
    vector = [1.0 if zone in findings.zones(lung) else 0.0 for lung in LUNGS for zone in ZONES]
    vector.append(float(findings.count))
    return vector


# ------------------------------------------------------------------------------ strict reading, vectors

#: The C2FVL report vector, in its order: bilateral flag, number of infected areas, six zone flags
#: (also the names of the columns C2FVL's text tables carry).
REPORT_VECTOR_FIELDS: tuple[str, ...] = (
    "bilateral",
    "number",
    "lupper",
    "lmiddle",
    "llower",
    "rupper",
    "rmiddle",
    "rlower",
)

_LATERALITY = re.compile(r"^(unilateral|bilateral)\s+pulmonary\s+infections?$", re.IGNORECASE)
_NO_INFECTION = re.compile(r"^no\s+pulmonary\s+infections?$", re.IGNORECASE)
_COUNT_CLAUSE = re.compile(r"^(" + "|".join(_NUMBER_WORDS) + r"|\d+)\s+infected\s+areas?$", re.IGNORECASE)
_LUNG_CLAUSE = re.compile(
    r"^((?:all|upper|middle|lower)(?:[\s\-/]+(?:all|upper|middle|lower))*)\s+(left|right)\s+lungs?$", re.IGNORECASE
)


class ReportError(ValueError):
    """A report outside the grammar: ``report`` is the text, ``part`` the piece not understood, ``reason``."""

    def __init__(self, report: str, part: str, reason: str) -> None:
        self.report, self.part, self.reason = report, part, reason
        super().__init__(f"report {report!r}: {reason} ({part!r})" if part else f"report {report!r}: {reason}")


def read_report(text: str) -> tuple[Findings, bool]:
    """Read a report that must follow the grammar exactly; returns (findings, bilateral flag).

    ``<Unilateral|Bilateral> pulmonary infection, <count> infected area(s), <zones> left|right lung
    [and <zones> left|right lung].`` (any case and spacing, final period optional) or ``No pulmonary
    infection.``. Raises :class:`ReportError` naming the clause not understood, or the contradiction
    (``Unilateral`` with both lungs, ``Bilateral`` with one, a lung named twice, fewer areas than lungs).
    """
    if not isinstance(text, str) or not text.strip():
        raise ReportError(str(text), "", "the report is empty")
    sentence = " ".join(text.split()).rstrip(".").strip()
    if _NO_INFECTION.match(sentence):
        return Findings(), False
    clauses = [clause.strip() for clause in sentence.split(",")]
    if len(clauses) != 3:
        raise ReportError(
            text,
            sentence,
            "expected three comma-separated parts: '<Unilateral|Bilateral> pulmonary "
            "infection, <count> infected area(s), <zones> left|right lung'",
        )
    laterality, count_clause, lung_clause = clauses
    lateral = _LATERALITY.match(laterality)
    if not lateral:
        raise ReportError(
            text, laterality, "expected 'Unilateral pulmonary infection' or 'Bilateral pulmonary infection'"
        )
    counted = _COUNT_CLAUSE.match(count_clause)
    if not counted:
        raise ReportError(text, count_clause, "expected '<one|two|...|number> infected area(s)'")
    token = counted.group(1).lower()
    count = _WORD_TO_NUMBER[token] if token in _WORD_TO_NUMBER else int(token)
    zones: dict[str, set[str]] = {}
    for piece in re.split(r"\s+and\s+", lung_clause, flags=re.IGNORECASE):
        lung_match = _LUNG_CLAUSE.match(piece.strip())
        if not lung_match:
            raise ReportError(text, piece.strip(), "expected '<all|upper|middle|lower ...> left|right lung'")
        lung = lung_match.group(2).lower()
        if lung in zones:
            raise ReportError(text, piece.strip(), f"the {lung} lung is named twice")
        words = {word.lower() for word in _ZONE_WORD.findall(lung_match.group(1))}
        zones[lung] = set(ZONES) if "all" in words else words
    bilateral = lateral.group(1).lower() == "bilateral"
    if bilateral != (len(zones) == 2):
        raise ReportError(text, lung_clause, f"'{lateral.group(1)}' contradicts the {len(zones)} lung(s) named")
    if count < len(zones):
        raise ReportError(text, count_clause, f"{count} infected area(s) cannot cover {len(zones)} lungs")
    findings = Findings(left=frozenset(zones.get("left", ())), right=frozenset(zones.get("right", ())), count=count)
    return findings, bilateral


def report_vector(findings: Findings, bilateral: bool | None = None) -> list[float]:
    """The C2FVL vector ``[bilateral, number, lupper, lmiddle, llower, rupper, rmiddle, rlower]``
    (:data:`REPORT_VECTOR_FIELDS`); ``bilateral`` defaults to "both lungs involved"."""
    if bilateral is None:
        bilateral = len(findings.lungs) == 2
    zones = [1.0 if zone in findings.zones(lung) else 0.0 for lung in LUNGS for zone in ZONES]
    return [1.0 if bilateral else 0.0, float(findings.count), *zones]


def findings_from_vector(vector: Sequence[float]) -> Findings:
    """Inverse of :func:`report_vector` for the zones and count (the bilateral flag follows from the zones)."""
    if len(vector) != len(REPORT_VECTOR_FIELDS):
        raise ValueError(f"a report vector has {len(REPORT_VECTOR_FIELDS)} values, got {len(vector)}")
    flags = [float(value) != 0 for value in vector[2:]]
    return Findings(
        left=frozenset(z for z, on in zip(ZONES, flags[:3]) if on),
        right=frozenset(z for z, on in zip(ZONES, flags[3:]) if on),
        count=int(float(vector[1])),
    )


# ------------------------------------------------------------------------------------- report matching

MAX_COUNT = 6
SIDE_WEIGHT = 2.0
COUNT_WEIGHT = 0.5
#: Length of :func:`structured_vector`: zone indicators, side indicators, one-hot count.
STRUCTURED_SIZE = len(LUNGS) * len(ZONES) + len(LUNGS) + MAX_COUNT
_WORD = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    """Lower-case words plus adjacent word pairs (``"left lung"`` -> ``left``, ``lung``, ``left_lung``)."""
    words = _WORD.findall(text.lower())
    return words + [f"{first}_{second}" for first, second in itertools.pairwise(words)]


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
    """Fixed report embedding for matching: structured findings + word/bigram TF-IDF (module doc).

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
        """(N, STRUCTURED_SIZE + V) embeddings: [sqrt(a) * unit structured, sqrt(1 - a) * unit TF-IDF]."""
        structured = (
            _unit_rows(np.stack([structured_vector(text) for text in texts]))
            if texts
            else np.zeros((0, STRUCTURED_SIZE))
        )
        return np.concatenate(
            [math.sqrt(self.structure_weight) * structured, math.sqrt(1.0 - self.structure_weight) * self.tfidf(texts)],
            axis=1,
        ).astype(np.float32)
