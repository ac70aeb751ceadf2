"""Segmentation metrics on binary 3-D masks with voxel spacing (mm, array-axis order).

``dice`` (overlap.py); ``hausdorff_distance`` (HD / HD95 on surfaces, in mm, MONAI's conventions),
``boundary_length_difference`` (BL%), ``normalized_hausdorff`` (the authors' normalised HD)
(surface.py); ``compute_case_metrics`` / ``summarize`` / ``MetricAccumulator`` (summary.py).
Every function states its empty-mask policy; summaries count empty and missed cases.
"""

from kidneyssl.metrics.overlap import dice
from kidneyssl.metrics.summary import (
    METRIC_NAMES,
    ROW_KEYS,
    MetricAccumulator,
    compute_case_metrics,
    summarize,
)
from kidneyssl.metrics.surface import (
    boundary_length,
    boundary_length_difference,
    hausdorff_distance,
    normalized_hausdorff,
    slice_perimeter_mm,
    surface_area_mm2,
    surface_distances,
    surface_voxels,
)

__all__ = [
    "METRIC_NAMES",
    "ROW_KEYS",
    "MetricAccumulator",
    "boundary_length",
    "boundary_length_difference",
    "compute_case_metrics",
    "dice",
    "hausdorff_distance",
    "normalized_hausdorff",
    "slice_perimeter_mm",
    "summarize",
    "surface_area_mm2",
    "surface_distances",
    "surface_voxels",
]
