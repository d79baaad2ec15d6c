"""Instance-segmentation metrics (Dice, AJI, AJI+, PQ, mSA) with the field's reference semantics.

See :mod:`nucleisam.metrics.instance` for the exact definitions and conventions and
:mod:`nucleisam.metrics.aggregate` for how images are combined.
"""

from nucleisam.metrics.aggregate import MetricAccumulator, MetricSummary
from nucleisam.metrics.instance import (
    METRIC_NAMES,
    MSA_THRESHOLDS,
    InstanceCounts,
    aji,
    aji_plus,
    boundary_zone,
    dice,
    evaluate_instances,
    hungarian_pairs,
    image_counts,
    max_iou_pairs,
    mean_segmentation_accuracy,
    panoptic_quality,
    zone_footprint,
)
from nucleisam.metrics.table import OverlapTable, overlap_table, remove_vague

__all__ = [
    "METRIC_NAMES",
    "MSA_THRESHOLDS",
    "InstanceCounts",
    "MetricAccumulator",
    "MetricSummary",
    "OverlapTable",
    "aji",
    "aji_plus",
    "boundary_zone",
    "dice",
    "evaluate_instances",
    "hungarian_pairs",
    "image_counts",
    "max_iou_pairs",
    "mean_segmentation_accuracy",
    "overlap_table",
    "panoptic_quality",
    "remove_vague",
    "zone_footprint",
]
