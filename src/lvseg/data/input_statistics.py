"""What a model's training images look like, to tell when an image sent to it is unlike all of them.

Recorded at training time in the checkpoint (:func:`measure_input_statistics`) and read at inference time
(:meth:`InputStatistics.score`). An image is described, as the model sees it (``(C, S, S)`` in ``[0, 1]``
after resizing), by two features:

* its **intensity histogram**, :data:`HISTOGRAM_BINS` bins per channel; its distance to the training images'
  mean histogram is the total-variation distance averaged over channels (0: the same distribution, 1:
  disjoint);
* its **colour spread**, the mean over pixels of (largest channel - smallest channel): 0 for grey images
  (a chest radiograph), about 0.1-0.3 for an H&E tile.

Each feature is divided by its 99th percentile over the training images (so 1.0 is "as unusual as the 1 %
most unusual training images"), and the **score** is the larger of the two. The threshold above which an
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
_MIN_COLOUR_SCALE = 0.02  # a grey training set: a colour spread of 0.02 already scores 1.0
_MIN_HISTOGRAM_SCALE = 1e-3


def image_features(image: Any) -> tuple[np.ndarray, float]:
    """(histogram (C, HISTOGRAM_BINS) summing to 1 per channel, colour spread) of ``image`` (C, H, W) in [0, 1]
    (a numpy array or a torch tensor)."""
    pixels = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if pixels.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {pixels.shape}")
    pixels = np.nan_to_num(np.clip(pixels, 0.0, 1.0), nan=0.0)
    flat = pixels.reshape(pixels.shape[0], -1)
    bins = np.minimum((flat * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    histogram = np.stack([np.bincount(row, minlength=HISTOGRAM_BINS) for row in bins]).astype(np.float64)
    histogram /= max(flat.shape[1], 1)
    colour = float((flat.max(axis=0) - flat.min(axis=0)).mean()) if flat.shape[0] > 1 else 0.0
    return histogram, colour


def _histogram_distance(histogram: np.ndarray, reference: np.ndarray) -> float:
    return float(0.5 * np.abs(histogram - reference).sum(axis=1).mean())


@dataclass(frozen=True)
class InputStatistics:
    """The training images' reference features and the calibrated flagging threshold (module docstring).

    ``mean_histogram``: (C, HISTOGRAM_BINS) as nested lists (so the record is plain data in a checkpoint);
    ``histogram_scale``, ``colour_scale``: the training images' 99th percentiles of each feature;
    ``threshold``: scores above it are flagged; ``reference_images``/``calibration_images``: how many
    training and validation images the figures come from; ``calibration_flagged``: how many validation
    images the threshold flags.
    """

    channels: int
    img_size: int
    mean_histogram: list[list[float]]
    histogram_scale: float
    colour_scale: float
    threshold: float
    reference_images: int
    calibration_images: int
    calibration_flagged: int

    def score(self, image: Any) -> float:
        """How unlike the training images ``image`` (C, H, W) in [0, 1] is: <= 1.0 typical, above
        :attr:`threshold` flagged."""
        histogram, colour = image_features(image)
        reference = np.asarray(self.mean_histogram, dtype=np.float64)
        if histogram.shape != reference.shape:
            raise ValueError(f"image has {histogram.shape[0]} channels; the statistics were made on {self.channels}")
        return max(
            _histogram_distance(histogram, reference) / self.histogram_scale,
            colour / self.colour_scale,
        )

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
        except (TypeError, ValueError):
            return None
        numbers = (statistics.histogram_scale, statistics.colour_scale, statistics.threshold)
        if reference.shape != (statistics.channels, HISTOGRAM_BINS) or not all(
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0 for value in numbers
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
    colours = np.asarray([colour for _, colour in features])
    reference = histograms.mean(axis=0)
    distances = np.asarray([_histogram_distance(histogram, reference) for histogram in histograms])
    statistics = InputStatistics(
        channels=int(reference.shape[0]),
        img_size=int(img_size),
        mean_histogram=reference.tolist(),
        histogram_scale=max(float(np.percentile(distances, 99)), _MIN_HISTOGRAM_SCALE),
        colour_scale=max(float(np.percentile(colours, 99)), _MIN_COLOUR_SCALE),
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
