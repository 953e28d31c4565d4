"""Per-class summaries of an evaluation on multi-class data (one sample per image and structure).

The VLSM study (Poudel et al., "Exploring Transfer Learning in Medical Image Segmentation using
Vision-Language Models", MIDL 2024) reports Dice per dataset and structure; lvseg gives every metric per
class (the mean over that class's samples, negative samples included: an empty prediction on an empty mask
scores Dice and IoU 1, HD95 undefined) and ``class_mean``, the unweighted mean of the per-class means (each
structure counts once, however many samples it has).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from lvseg.evaluation.metrics import METRIC_NAMES, summarize


def _json_float(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def per_class_means(results: Sequence[Any]) -> dict[str, dict[str, float]]:
    """{class: {metric: mean over its samples, "n": count}} of results with a ``class_name``; {} when none has
    one (a binary set). HD95 means skip undefined values (an empty truth or prediction)."""
    by_class: dict[str, list[Any]] = defaultdict(list)
    for result in results:
        if result.class_name:
            by_class[result.class_name].append(result)
    summary = {}
    for name, group in by_class.items():
        means = {metric: summarize(getattr(result, metric) for result in group)[0] for metric in METRIC_NAMES}
        summary[name] = {**means, "n": float(len(group))}
    return summary


def class_mean(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{metric: mean over classes of the per-class means} (classes whose mean is undefined are skipped)."""
    return {metric: summarize(values[metric] for values in per_class.values())[0] for metric in METRIC_NAMES}


def class_summary_json(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The ``per_class`` and ``class_mean`` entries of ``metrics.json``; {} for a binary set."""
    if not per_class:
        return {}
    return {
        "per_class": {
            name: {key: int(value) if key == "n" else _json_float(value) for key, value in values.items()}
            for name, values in per_class.items()
        },
        "class_mean": {metric: _json_float(value) for metric, value in class_mean(per_class).items()},
    }


def class_reliance(reports: Mapping[str, Any]) -> dict[str, float]:
    """{class: Dice(given) - Dice(shuffled)} from the reports of the ``given`` and ``shuffled`` text modes."""
    given, shuffled = reports["given"].per_class, reports["shuffled"].per_class
    return {name: given[name]["dice"] - shuffled[name]["dice"] for name in given if name in shuffled}


def class_reliance_json(reports: Mapping[str, Any], reads_text: bool) -> dict[str, Any]:
    """The ``text_reliance_per_class`` entry (null per class for a model that reads no text); {} for a binary
    set or without both text modes."""
    if "given" not in reports or "shuffled" not in reports or not reports["given"].per_class:
        return {}
    if not reads_text:
        return {"text_reliance_per_class": dict.fromkeys(reports["given"].per_class)}
    return {"text_reliance_per_class": {name: _json_float(v) for name, v in class_reliance(reports).items()}}
