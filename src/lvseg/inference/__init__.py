"""Prediction: ``load_model(checkpoint) -> Segmenter`` with ``.predict(image, text)``, and folder prediction."""

from lvseg.inference.loading import load_model
from lvseg.inference.segmenter import Prediction, Segmenter, resolve_device, upsample_probability

__all__ = ["Prediction", "Segmenter", "load_model", "resolve_device", "upsample_probability"]
