"""Metrics and evaluation runs (overlays: :mod:`lvseg.rendering`)."""
