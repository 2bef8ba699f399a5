"""Metrics: the confusion matrix, evaluation of saved predictions, JSON reports."""

from sipe.metrics.confusion import ConfusionMatrix
from sipe.metrics.evaluate import (
    DEFAULT_THRESHOLDS,
    NegativeStats,
    evaluate,
    evaluate_cam,
    evaluate_is_cam,
    evaluate_label_dir,
)
from sipe.metrics.report import format_report, write_report

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ConfusionMatrix",
    "NegativeStats",
    "evaluate",
    "evaluate_cam",
    "evaluate_is_cam",
    "evaluate_label_dir",
    "format_report",
    "write_report",
]
