"""Contrastive loss of the siamese proxy task (paper, section 2; Hadsell, Chopra & LeCun 2006).

    L = y * d^2 + (1 - y) * max(0, m - d)^2,   y = 1 for a same-side pair, 0 for opposite sides.

**Which d.** The paper calls ``d = ||a - b||^2`` "the L2 distance" and then squares it again in
the loss. We default to the Euclidean distance ``d = ||a - b||_2`` (``squared_distance=False``):
that is Hadsell et al.'s loss, the one the text describes ("L2 distance"), and the margin m = 1 is
then a distance in embedding space. ``squared_distance=True`` gives the literal formula
(``d = ||a - b||^2``, so the positive term is ``||a - b||^4`` and the margin applies to the squared
distance). For the Euclidean form the positive term uses the exact ``||a - b||^2`` and the
negative term a square root whose value and gradient are 0 at ``a == b`` (no NaN, no eps bias).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ContrastiveLoss", "pair_distance", "pair_accuracy"]

def _safe_sqrt(sq: Tensor) -> Tensor:
    """sqrt with value 0 and gradient 0 (not inf/NaN) where ``sq == 0``."""
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def _check(emb_a: Tensor, emb_b: Tensor, y: Tensor | None = None) -> None:
    if emb_a.dim() != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(f"embeddings must both be (B, E); got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}")
    if y is not None and tuple(y.shape) != (emb_a.shape[0],):
        raise ValueError(f"labels must be (B,) = ({emb_a.shape[0]},), got {tuple(y.shape)}")


def pair_distance(emb_a: Tensor, emb_b: Tensor, squared_distance: bool = False) -> Tensor:
    """(B,) distance between paired embeddings (B, E): Euclidean, or its square if asked."""
    _check(emb_a, emb_b)
    sq = (emb_a - emb_b).pow(2).sum(dim=1)
    return sq if squared_distance else _safe_sqrt(sq)


class ContrastiveLoss(nn.Module):
    """Margin contrastive loss on pairs of embeddings.

    Args:
        margin: m (paper: 1).
        squared_distance: use the paper's literal ``d = ||a-b||^2`` (see the module docstring).
        reduction: ``"mean"`` (over pairs; default), ``"sum"`` (the paper's sum over N) or ``"none"``.

    Shapes: ``forward(emb_a (B, E), emb_b (B, E), y (B,))`` with y in {0, 1} (1 = same side).

    Example:
        >>> loss = ContrastiveLoss()(torch.zeros(1, 2), torch.tensor([[0.3, 0.4]]), torch.tensor([0.]))
        >>> round(float(loss), 6)  # d = 0.5, (1 - 0.5)^2
        0.25
    """

    def __init__(self, margin: float = 1.0, squared_distance: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.margin = float(margin)
        self.squared_distance = squared_distance
        self.reduction = reduction

    def forward(self, emb_a: Tensor, emb_b: Tensor, y: Tensor) -> Tensor:
        _check(emb_a, emb_b, y)
        y = y.to(emb_a.dtype)
        sq = (emb_a - emb_b).pow(2).sum(dim=1)
        if self.squared_distance:
            d = sq
            positive = sq.pow(2)
        else:
            d = _safe_sqrt(sq)
            positive = sq
        negative = torch.clamp(self.margin - d, min=0.0).pow(2)
        loss = y * positive + (1.0 - y) * negative
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


@torch.no_grad()
def pair_accuracy(emb_a: Tensor, emb_b: Tensor, y: Tensor, margin: float = 1.0,
                  squared_distance: bool = False) -> Tensor:
    """Fraction of pairs classified correctly: "same side" is predicted when d < margin / 2.

    Returns a 0-dim float tensor in [0, 1].
    """
    _check(emb_a, emb_b, y)
    same = pair_distance(emb_a, emb_b, squared_distance) < margin / 2.0
    return (same == (y > 0.5)).float().mean()
