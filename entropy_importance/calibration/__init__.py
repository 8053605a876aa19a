"""Calibration: streaming activation statistics for the data-driven criteria, and what each criterion needs."""

from .batches import model_device, split_batch, to_device
from .errors import CalibrationError, NotCalibratedError, StaleStatisticsError
from .observe import DataDrivenImportance, Observer
from .refresh import REQUIREMENTS, Requirements, refresh_importance, requirements, reusable_batches
from .statistics import LayerStatistic, MapEntropySum, ResponseSamples, distributed_world

__all__ = [
    "CalibrationError", "DataDrivenImportance", "LayerStatistic", "MapEntropySum", "NotCalibratedError",
    "Observer", "REQUIREMENTS", "Requirements", "ResponseSamples", "StaleStatisticsError", "distributed_world",
    "model_device", "refresh_importance", "requirements", "reusable_batches", "split_batch", "to_device",
]
