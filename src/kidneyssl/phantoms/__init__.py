"""Synthetic contrast-enhanced abdominal CT phantoms with kidney labels, in KiTS19 layout.

The default dataset of ``kidneyssl demo`` and of the tests. Each case has two kidneys that differ
as real ones do (right lower and usually slightly smaller, left higher and longer, both tilted
with upper poles medial and posterior, hilum facing medially), cortex brighter than medulla,
liver beside/above the right kidney, spleen beside the left, spine, psoas and paraspinal muscles,
aorta left and IVC right of the midline, fat, bowel with gas and fluid, stomach, pancreas, noise
and smooth intensity variation; renal tumours (label 2) in ~40% of cases; ~5% single-kidney
cases. Geometry is KiTS19's: arrays (slices, Y, X), axis codes ``('I', 'P', 'L')``, origin 0.

Public API: :func:`generate_case`, :func:`write_dataset`, :func:`sample_anatomy`, :func:`case_seed`.
"""

from kidneyssl.phantoms.anatomy import SINGLE_KIDNEY_RATE, TUMOUR_RATE, PhantomAnatomy, sample_anatomy
from kidneyssl.phantoms.dataset import MANIFEST, case_id, case_seed, write_dataset, write_nifti
from kidneyssl.phantoms.generate import RESOLUTIONS, generate_case, kits_affine

__all__ = [
    "generate_case",
    "write_dataset",
    "write_nifti",
    "sample_anatomy",
    "PhantomAnatomy",
    "case_seed",
    "case_id",
    "kits_affine",
    "MANIFEST",
    "RESOLUTIONS",
    "SINGLE_KIDNEY_RATE",
    "TUMOUR_RATE",
]
