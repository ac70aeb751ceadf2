"""The epoch loop's pieces: the learning-rate schedule."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("schedule, warmup, expected", [
    ("constant", 0, [1.0, 1.0, 1.0, 1.0]),
    ("constant", 2, [0.5, 1.0, 1.0, 1.0]),
    ("poly", 0, [1.0, 0.75 ** 0.9, 0.5 ** 0.9, 0.25 ** 0.9]),
    ("poly", 2, [0.5, 0.75 ** 0.9, 0.5 ** 0.9, 0.25 ** 0.9]),
])
def test_scheduled_learning_rate(schedule, warmup, expected):
    from kidneyssl.training.loop import scheduled_lr

    got = [scheduled_lr(1.0, step, 4, warmup, schedule) for step in range(4)]
    assert got == pytest.approx(expected)
    with pytest.raises(ValueError, match="schedule"):
        scheduled_lr(1.0, 0, 4, 0, "cosine")
