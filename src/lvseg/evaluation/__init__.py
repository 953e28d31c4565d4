"""Metrics, evaluation runs and overlays."""
