"""Label budgets (issue 22): how many annotated training cases a model may read, and which.

A budget is a number of annotated cases out of the split's training cases, asked for as a
fraction (``protocol.label_fractions``: ``round(f x n_train)``, at least 1) or as a count
(``protocol.label_counts``). The full training set is the experiment without a budget.

**Nested subsets.** For each seed the training cases are put in one seeded order and a budget of
``n`` cases takes the first ``n`` of it (:func:`budget_order`), so every smaller subset lies inside
every larger one, and adding a budget later never changes an earlier one.

**Drawn per seed** (from ``(split_seed, seed)``), not once for all seeds. Which cases get annotated
is itself a source of variation, and at a budget of 2-5 cases it can dominate: with one subset
for every seed, the seeds would vary only initialisation and data order, and an interval over
seeds would describe those few cases, not the budget. Per seed, a method and scratch of the same
seed still share their subset (the comparison stays paired) and resampling the seeds resamples
the subsets too. The subsets of every seed are recorded in the experiment's ``split.json``.

**Balanced for single-kidney cases.** Cases are grouped by their number of located kidneys (the
cache's ``meta["kidneys"]``, recorded by ``prepare`` from each training case's mask: a triage
glance, not voxels: no mask outside a subset reaches a model). The order interleaves the groups
so that every prefix holds each group in proportion to the training set, within one case
(largest deficit first: at size ``k`` the next case comes from the group ``g`` with the largest
``k x share_g - taken_g``); without single-kidney cases this is a plain seeded permutation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from kidneyssl.errors import KidneySSLError

__all__ = ["LabelBudget", "resolve_budgets", "budget_order", "kidney_counts", "label_subsets", "BUDGET_SALT",
           "subsets_record"]

#: Salt that separates the budget order's seed from the split's and the training runs' seeds.
BUDGET_SALT = 2_000_029


@dataclass(frozen=True)
class LabelBudget:
    """A label budget: ``cases`` annotated training cases, asked for as ``fraction`` or ``count``.

    A stage's identity holds this value; its folder and key use :attr:`folder` (``f025`` for
    25 %, ``n005`` for 5 cases). Two budgets are equal when asked for alike.
    """

    cases: int
    fraction: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("a label budget is a fraction or a count")
        if self.cases < 1:
            raise ValueError(f"a label budget needs at least one case, got {self.cases}")

    @property
    def folder(self) -> str:
        """``f025`` (25 %), ``f012p5`` (12.5 %), ``n005`` (5 cases)."""
        if self.count is not None:
            return f"n{self.count:03d}"
        assert self.fraction is not None
        whole, _, decimals = f"{round(self.fraction * 100, 6):g}".partition(".")
        return f"f{int(whole):03d}" + (f"p{decimals}" if decimals else "")

    @property
    def label(self) -> str:
        """How the report names it: ``25 %`` or ``5 cases`` (with the case count)."""
        if self.count is not None:
            return f"{self.count} cases"
        assert self.fraction is not None
        return f"{self.fraction * 100:g} % ({self.cases} cases)"


def resolve_budgets(fractions: Sequence[float], counts: Sequence[int], n_train: int) -> list[LabelBudget]:
    """The budgets smaller than the training set, fewest cases first.

    A fraction ``f`` gives ``max(1, floor(f x n_train + 0.5))`` cases; a budget that comes to all
    ``n_train`` cases (fraction 1.0, or a count equal to it) is the full training set, which the
    experiment always runs, and is left out.

    Raises:
        KidneySSLError: a count above ``n_train``, or two budgets below it that come to the same
            number of cases (they would train the same models twice).
    """
    budgets: list[LabelBudget] = []
    for f in fractions:
        budgets.append(LabelBudget(max(1, math.floor(float(f) * n_train + 0.5)), fraction=float(f)))
    for n in counts:
        if int(n) > n_train:
            raise KidneySSLError(f"label count {n} is more than the {n_train} training cases of the split")
        budgets.append(LabelBudget(int(n), count=int(n)))
    seen: dict[int, LabelBudget] = {}
    for b in budgets:
        if b.cases == n_train:
            continue  # the full training set: always run
        if b.cases in seen:
            raise KidneySSLError(f"label budgets {seen[b.cases].label} and {b.label} both come to {b.cases} of "
                                 f"{n_train} training cases; give each size once")
        seen[b.cases] = b
    return sorted(seen.values(), key=lambda b: b.cases)


def budget_order(case_ids: Sequence[str], groups: Mapping[str, int], seed: Sequence[int] | int) -> list[str]:
    """All ``case_ids`` in the seeded order whose prefixes are the nested budget subsets,
    every prefix holding each group (``groups[case]``, e.g. its number of kidneys) in proportion
    to the whole (see the module docstring). A pure function of its arguments.

    Raises:
        KidneySSLError: a case without a group.
    """
    ids = sorted(set(case_ids))
    missing = [c for c in ids if c not in groups]
    if missing:
        raise KidneySSLError(f"no kidney count for case(s) {missing[:5]}")
    rng = np.random.default_rng(seed)
    keys = sorted({int(groups[c]) for c in ids}, reverse=True)  # two kidneys first on ties
    queues = {g: [c for c in ids if int(groups[c]) == g] for g in keys}
    for g in keys:
        queues[g] = [queues[g][i] for i in rng.permutation(len(queues[g]))]
    share = {g: len(queues[g]) / len(ids) for g in keys}
    taken = {g: 0 for g in keys}
    order: list[str] = []
    for k in range(1, len(ids) + 1):
        open_groups = [g for g in keys if taken[g] < len(queues[g])]
        g = max(open_groups, key=lambda h: k * share[h] - taken[h])  # max() keeps the first on ties
        order.append(queues[g][taken[g]])
        taken[g] += 1
    return order


def kidney_counts(cache: Any, case_ids: Sequence[str]) -> dict[str, int]:
    """Number of kidneys ``prepare`` located in each case (``meta["kidneys"]``)."""
    return {c: len(cache.load(c, mmap=True).meta.get("kidneys") or {}) for c in case_ids}


def label_subsets(train_ids: Sequence[str], groups: Mapping[str, int], budgets: Sequence[LabelBudget],
                  split_seed: int, seed: int) -> dict[int, tuple[str, ...]]:
    """Budget size -> its training cases (sorted) for one seed: the first ``size`` cases of
    :func:`budget_order` seeded by ``(split_seed, BUDGET_SALT, seed)``."""
    order = budget_order(train_ids, groups, [int(split_seed), BUDGET_SALT, int(seed)])
    return {b.cases: tuple(sorted(order[:b.cases])) for b in budgets}


def subsets_record(subsets: Mapping[int, Mapping[int, Sequence[str]]], budgets: Sequence[LabelBudget],
                   groups: Mapping[str, int], split_seed: int) -> dict[str, Any]:
    """What ``split.json`` records of the budgets: the rule, each budget, each case's kidney
    count and, per seed, the cases of each budget."""
    return {
        "rule": "nested subsets of the training cases, one seeded order per seed (split seed, seed), every prefix "
                "balanced by the number of kidneys; a budget of n cases is the first n",
        "split_seed": int(split_seed),
        "budgets": [{"folder": b.folder, "cases": b.cases, "fraction": b.fraction, "count": b.count} for b in budgets],
        "kidneys": {c: int(n) for c, n in sorted(groups.items())},
        "subsets": {str(seed): {b.folder: list(by_size[b.cases]) for b in budgets}
                    for seed, by_size in sorted(subsets.items())},
    }
