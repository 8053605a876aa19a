"""The errors of calibration and data-driven scoring: each names what is wrong and how to fix it."""

from __future__ import annotations

__all__ = ["NotCalibratedError", "StaleStatisticsError", "CalibrationError"]


class NotCalibratedError(RuntimeError):
    """A data-driven importance was asked for scores before any statistics were collected."""


class StaleStatisticsError(RuntimeError):
    """The statistics do not describe the model being scored: its channel counts changed since calibration, or
    they were collected on another model (a copy included)."""


class CalibrationError(ValueError):
    """Bad calibration input: no batches, too few images, missing or out-of-range labels, non-finite
    activations, a one-shot iterator where the data must be read again."""
