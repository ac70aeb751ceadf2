"""Evaluation: pair predicted masks with ground truth and score them (Dice, Hausdorff, boundary
length) under a label policy; used by ``kidneyssl evaluate`` and callable without the CLI."""

from kidneyssl.evaluation.pairing import case_id_of, index_masks, pair_cases
from kidneyssl.evaluation.scoring import (
    EvaluationResult,
    evaluate_folders,
    ground_truth_policy,
    score_case,
)

__all__ = [
    "pair_cases",
    "index_masks",
    "case_id_of",
    "EvaluationResult",
    "evaluate_folders",
    "score_case",
    "ground_truth_policy",
]
