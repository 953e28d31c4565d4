"""What a model's training images look like, to tell when an image sent to it is unlike all of them.

Recorded at training time in the checkpoint (:func:`measure_input_statistics`) and read at inference time
(:meth:`InputStatistics.score`). An image is described, as the model sees it (``(C, S, S)`` in ``[0, 1]``
after resizing), by

* its **intensity histogram**, :data:`HISTOGRAM_BINS` bins per channel, whose distance to the training
  images' mean histogram is the total-variation distance averaged over channels (0: the same distribution,
  1: disjoint);
* a few **summary features**: the mean and standard deviation of each channel and the colour spread (the
  mean over pixels of largest channel - smallest channel: 0 for a grey radiograph, about 0.1-0.3 for an
  H&E tile), taken as ``log10(spread + 0.01)`` so that "no colour at all" stands apart from "less colour".
  Each is compared with the training images' median, in both directions (a grey image sent to a histology
  model is as unusual as a stained tile sent to a chest model).

Each of these deviations is divided by its 99th percentile over the training images (so 1.0 is "as unusual
as the 1 % most unusual training images"), and the **score** is the largest. The threshold above which an
image is flagged is calibrated on the validation split: the smallest value, at least 1.0, that flags at most
``max_flagged_fraction`` (1 %) of the validation images. This is a deliberately simple out-of-distribution
test (Hendrycks & Gimpel's baseline idea of calibrating a score on in-distribution data; here on image
statistics, not on the network's features): it catches a different modality or stain, not subtle shifts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HISTOGRAM_BINS = 32
#: Training images read for the reference (a seeded sample of larger sets): enough for a stable mean.
MAX_REFERENCE_IMAGES = 1000
_COLOUR_FLOOR = 0.01  # about the chroma noise of a JPEG of a grey image
# Smallest deviation scale of the channel means and stds, and of the log colour spread (a grey training set:
# a colour spread of 0.004 already scores 1.0).
_MIN_MEAN_SCALE, _MIN_COLOUR_SCALE = 0.02, 0.15
_MIN_HISTOGRAM_SCALE = 1e-3


def image_features(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """(histogram (C, HISTOGRAM_BINS) summing to 1 per channel, summary features (2 C + 1,): the channel means,
    the channel standard deviations and log10(colour spread + 0.01)) of ``image`` (C, H, W) in [0, 1] (a numpy array or
    a torch tensor)."""
    pixels = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if pixels.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {pixels.shape}")
    pixels = np.nan_to_num(np.clip(pixels, 0.0, 1.0), nan=0.0)
    flat = pixels.reshape(pixels.shape[0], -1)
    bins = np.minimum((flat * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    histogram = np.stack([np.bincount(row, minlength=HISTOGRAM_BINS) for row in bins]).astype(np.float64)
    histogram /= max(flat.shape[1], 1)
    colour = float((flat.max(axis=0) - flat.min(axis=0)).mean()) if flat.shape[0] > 1 else 0.0
    summary = np.concatenate([flat.mean(axis=1), flat.std(axis=1), [math.log10(colour + _COLOUR_FLOOR)]])
    return histogram, summary


def _histogram_distance(histogram: np.ndarray, reference: np.ndarray) -> float:
    return float(0.5 * np.abs(histogram - reference).sum(axis=1).mean())


@dataclass(frozen=True)
class InputStatistics:
    """The training images' reference features and the calibrated flagging threshold (module docstring).

    ``mean_histogram``: (C, HISTOGRAM_BINS) as nested lists (so the record is plain data in a checkpoint);
    ``histogram_scale``: the training images' 99th percentile of the histogram distance; ``feature_median``,
    ``feature_scale``: (2 C + 1,) the training images' median of each summary feature and the 99th
    percentile of their absolute deviation from it; ``threshold``: scores above it are flagged;
    ``reference_images``/``calibration_images``: how many training and validation images the figures come
    from; ``calibration_flagged``: how many validation images the threshold flags.
    """

    channels: int
    img_size: int
    mean_histogram: list[list[float]]
    histogram_scale: float
    feature_median: list[float]
    feature_scale: list[float]
    threshold: float
    reference_images: int
    calibration_images: int
    calibration_flagged: int

    def score(self, image: Any) -> float:
        """How unlike the training images ``image`` (C, H, W) in [0, 1] is: <= 1.0 typical, above
        :attr:`threshold` flagged."""
        histogram, summary = image_features(image)
        reference = np.asarray(self.mean_histogram, dtype=np.float64)
        if histogram.shape != reference.shape:
            raise ValueError(f"image has {histogram.shape[0]} channels; the statistics were made on {self.channels}")
        deviations = np.abs(summary - np.asarray(self.feature_median)) / np.asarray(self.feature_scale)
        return max(_histogram_distance(histogram, reference) / self.histogram_scale, float(deviations.max()))

    def is_unusual(self, image: Any) -> bool:
        return self.score(image) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Any) -> InputStatistics | None:
        """The statistics recorded in a checkpoint, or None for a checkpoint without them (or a malformed
        record: the check is then skipped rather than run on wrong figures)."""
        if not isinstance(record, dict):
            return None
        try:
            statistics = cls(**record)
            reference = np.asarray(statistics.mean_histogram, dtype=np.float64)
            median = np.asarray(statistics.feature_median, dtype=np.float64)
            scale = np.asarray(statistics.feature_scale, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        features = 2 * statistics.channels + 1
        numbers = np.concatenate([[statistics.histogram_scale, statistics.threshold], scale])
        if (
            reference.shape != (statistics.channels, HISTOGRAM_BINS)
            or median.shape != (features,)
            or scale.shape != (features,)
            or not np.isfinite(median).all()
            or not (np.isfinite(numbers) & (numbers > 0)).all()
        ):
            return None
        return statistics


def measure_input_statistics(
    training_images: Iterable[Any],
    validation_images: Iterable[Any],
    img_size: int,
    max_flagged_fraction: float = 0.01,
) -> InputStatistics:
    """Reference features from ``training_images`` and the threshold calibrated on ``validation_images``
    (each (C, S, S) in [0, 1], as the model sees them) so that at most ``max_flagged_fraction`` of them score
    above it."""
    if not 0.0 <= max_flagged_fraction < 1.0:
        raise ValueError(f"max_flagged_fraction must be in [0, 1), got {max_flagged_fraction}")
    features = [image_features(image) for image in training_images]
    if not features:
        raise ValueError("no training images to describe")
    histograms = np.stack([histogram for histogram, _ in features])
    summaries = np.stack([summary for _, summary in features])
    reference = histograms.mean(axis=0)
    distances = np.asarray([_histogram_distance(histogram, reference) for histogram in histograms])
    median = np.median(summaries, axis=0)
    spread = np.percentile(np.abs(summaries - median), 99, axis=0)
    statistics = InputStatistics(
        channels=int(reference.shape[0]),
        img_size=int(img_size),
        mean_histogram=reference.tolist(),
        histogram_scale=max(float(np.percentile(distances, 99)), _MIN_HISTOGRAM_SCALE),
        feature_median=median.tolist(),
        feature_scale=np.maximum(spread, [_MIN_MEAN_SCALE] * (len(spread) - 1) + [_MIN_COLOUR_SCALE]).tolist(),
        threshold=1.0,
        reference_images=len(features),
        calibration_images=0,
        calibration_flagged=0,
    )
    scores = np.sort([statistics.score(image) for image in validation_images])[::-1]
    allowed = math.floor(max_flagged_fraction * len(scores))
    threshold = max(1.0, float(scores[allowed])) if len(scores) else 1.0
    return InputStatistics(
        **{
            **statistics.to_dict(),
            "threshold": threshold,
            "calibration_images": len(scores),
            "calibration_flagged": int((scores > threshold).sum()),
        }
    )


def measure_on_files(
    training_files: Sequence[Path],
    validation_files: Sequence[Path],
    img_size: int,
    channels: int,
    seed: int = 0,
) -> InputStatistics:
    """:func:`measure_input_statistics` on image files, each read and resized exactly as
    :class:`lvseg.inference.Segmenter` reads an image (:func:`~lvseg.data.images.read_image`, then
    :func:`~lvseg.data.images.resize_image`); at most :data:`MAX_REFERENCE_IMAGES` training files, a seeded
    sample of larger sets."""
    from lvseg.data.images import read_image, resize_image

    files = list(training_files)
    if len(files) > MAX_REFERENCE_IMAGES:
        chosen = np.random.default_rng(seed).choice(len(files), MAX_REFERENCE_IMAGES, replace=False)
        files = [files[index] for index in sorted(chosen)]

    def images(paths: Sequence[Path]) -> Iterator[Any]:
        for path in paths:
            yield resize_image(read_image(path, channels=channels), img_size)

    return measure_input_statistics(images(files), images(validation_files), img_size)


__all__ = ["HISTOGRAM_BINS", "InputStatistics", "image_features", "measure_input_statistics", "measure_on_files"]
