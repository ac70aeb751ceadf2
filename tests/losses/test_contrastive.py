"""Contrastive loss (both distance conventions), pair distance and pair accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from kidneyssl.losses import ContrastiveLoss, pair_accuracy, pair_distance

# (a, b, y, margin, squared_distance, expected per-pair loss), by hand:
CASES = [
    # d = 5 (3-4-5), same side: d^2 = 25
    ([0.0, 0.0], [3.0, 4.0], 1, 1.0, False, 25.0),
    # d = 0.5, opposite sides: (1 - 0.5)^2
    ([0.0, 0.0], [0.3, 0.4], 0, 1.0, False, 0.25),
    # d = 5 > m: opposite sides cost nothing
    ([0.0, 0.0], [3.0, 4.0], 0, 1.0, False, 0.0),
    # identical embeddings: same side 0, opposite side m^2
    ([1.0, 2.0], [1.0, 2.0], 1, 1.0, False, 0.0),
    ([1.0, 2.0], [1.0, 2.0], 0, 2.0, False, 4.0),
    # literal paper form, d = ||a-b||^2 = 0.25: same side d^2 = 0.0625, opposite (1 - 0.25)^2
    ([0.0, 0.0], [0.3, 0.4], 1, 1.0, True, 0.0625),
    ([0.0, 0.0], [0.3, 0.4], 0, 1.0, True, 0.5625),
    # d = 25 (squared), same side: 625; opposite with margin 30: 25
    ([0.0, 0.0], [3.0, 4.0], 1, 1.0, True, 625.0),
    ([0.0, 0.0], [3.0, 4.0], 0, 30.0, True, 25.0),
]


@pytest.mark.parametrize("a, b, y, margin, squared, expected", CASES)
def test_hand_computed_values(a, b, y, margin, squared, expected) -> None:
    loss = ContrastiveLoss(margin=margin, squared_distance=squared, reduction="none")
    value = loss(torch.tensor([a], dtype=torch.double), torch.tensor([b], dtype=torch.double),
                 torch.tensor([y]))
    assert value.shape == (1,)
    assert float(value) == pytest.approx(expected, abs=1e-9)


def test_reductions() -> None:
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    y = torch.tensor([1, 0])
    assert float(ContrastiveLoss()(a, b, y)) == pytest.approx((25 + 0.25) / 2)
    assert float(ContrastiveLoss(reduction="sum")(a, b, y)) == pytest.approx(25.25)


@pytest.mark.parametrize("squared", [False, True])
def test_gradcheck(squared: bool) -> None:
    torch.manual_seed(0)
    a = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    b = (0.3 * torch.randn(4, 3, dtype=torch.double)).requires_grad_()
    y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.double)
    loss = ContrastiveLoss(margin=2.0, squared_distance=squared)
    assert torch.autograd.gradcheck(lambda p, q: loss(p, q, y), (a, b))


def test_gradient_finite_at_zero_distance() -> None:
    a = torch.ones(2, 4, requires_grad=True)
    b = torch.ones(2, 4)
    ContrastiveLoss()(a, b, torch.tensor([1, 0])).backward()
    assert torch.isfinite(a.grad).all()
    assert torch.all(a.grad == 0)


def test_pair_distance_and_accuracy() -> None:
    a = torch.zeros(4, 2)
    b = torch.tensor([[0.3, 0.4], [0.0, 0.1], [3.0, 4.0], [0.0, 0.6]])
    assert torch.allclose(pair_distance(a, b), torch.tensor([0.5, 0.1, 5.0, 0.6]))
    assert torch.allclose(pair_distance(a, b, squared_distance=True), torch.tensor([0.25, 0.01, 25.0, 0.36]))
    # predicted same side when d < 0.5: [no, yes, no, no]
    y = torch.tensor([0, 1, 0, 1])
    assert float(pair_accuracy(a, b, y, margin=1.0)) == pytest.approx(0.75)
    # margin 2, same side when d < 1: [yes, yes, no, yes] vs y -> [wrong, right, right, right]
    assert float(pair_accuracy(a, b, y, margin=2.0)) == pytest.approx(0.75)
    assert float(pair_accuracy(a, b, torch.tensor([1, 0, 1, 0]), margin=2.0)) == pytest.approx(0.25)
    # squared: d = 0.25 < 0.5 -> same
    assert float(pair_accuracy(a, b, torch.tensor([1, 1, 0, 1]), squared_distance=True)) == 1.0


@pytest.mark.parametrize("kwargs", [{"margin": 0.0}, {"reduction": "max"}])
def test_bad_options(kwargs) -> None:
    with pytest.raises(ValueError):
        ContrastiveLoss(**kwargs)


def test_bad_shapes() -> None:
    loss = ContrastiveLoss()
    with pytest.raises(ValueError, match="embeddings"):
        loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
    assert math.isfinite(float(loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))))
