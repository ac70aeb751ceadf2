"""Label budgets (issue 22): nested subsets, reproducible from the split seed and the seed,
balanced for single-kidney cases; the budgets a protocol asks for; the proxy split of a budget."""

from __future__ import annotations

import pytest

from kidneyssl.errors import KidneySSLError
from kidneyssl.training.label_budget import LabelBudget, budget_order, label_subsets, resolve_budgets

IDS = [f"case_{i:05d}" for i in range(40)]
#: 8 of 40 cases (20 %) have one kidney.
GROUPS = {c: (1 if i % 5 == 0 else 2) for i, c in enumerate(IDS)}


def _budgets(*sizes: int) -> list[LabelBudget]:
    return [LabelBudget(n, count=n) for n in sizes]


def test_subsets_are_nested_and_reproducible_from_the_split_seed_and_seed() -> None:
    budgets = _budgets(2, 5, 10, 20)
    a = label_subsets(IDS, GROUPS, budgets, split_seed=3, seed=0)
    assert {n: len(v) for n, v in a.items()} == {2: 2, 5: 5, 10: 10, 20: 20}
    for small, large in ((2, 5), (5, 10), (10, 20)):
        assert set(a[small]) < set(a[large])  # every smaller subset inside every larger one
    assert set(a[20]) <= set(IDS)
    # a pure function of (training ids, groups, split seed, seed): the same in any order of the ids
    assert label_subsets(list(reversed(IDS)), GROUPS, budgets, split_seed=3, seed=0) == a
    # per seed (the subsets are a source of variation the seeds sample), and per split seed
    assert label_subsets(IDS, GROUPS, budgets, split_seed=3, seed=1) != a
    assert label_subsets(IDS, GROUPS, budgets, split_seed=4, seed=0) != a
    # adding a budget later changes none of the earlier ones
    more = label_subsets(IDS, GROUPS, _budgets(2, 3, 5, 10, 20, 30), split_seed=3, seed=0)
    assert all(more[n] == a[n] for n in a)


def test_every_prefix_keeps_the_single_kidney_share() -> None:
    order = budget_order(IDS, GROUPS, [0, 1])
    assert sorted(order) == sorted(IDS)
    for k in range(1, len(IDS) + 1):
        singles = sum(GROUPS[c] == 1 for c in order[:k])
        assert abs(singles - 0.2 * k) < 1, (k, singles)  # the proportional share, within one case
    assert [GROUPS[c] for c in order[:3]] == [2, 2, 1]  # one single-kidney case once 20 % is nearer 1 than 0
    # without single-kidney cases: a plain seeded permutation
    plain = budget_order(IDS, {c: 2 for c in IDS}, [0, 1])
    assert sorted(plain) == sorted(IDS) and plain != sorted(IDS)
    with pytest.raises(KidneySSLError, match="no kidney count"):
        budget_order(IDS, {}, 0)


def test_budgets_from_fractions_and_counts() -> None:
    budgets = resolve_budgets((0.1, 0.25, 0.5, 1.0), (3,), n_train=20)
    assert [(b.cases, b.folder) for b in budgets] == [(2, "f010"), (3, "n003"), (5, "f025"), (10, "f050")]
    assert LabelBudget(3, fraction=0.125).folder == "f012p5"
    assert resolve_budgets((0.01,), (), n_train=20)[0].cases == 1  # at least one case
    assert resolve_budgets((1.0,), (20,), n_train=20) == []  # the full set: always run, no budget stage
    with pytest.raises(KidneySSLError, match="both come to 2"):
        resolve_budgets((0.1,), (2,), n_train=20)
    with pytest.raises(KidneySSLError, match="more than the 20 training cases"):
        resolve_budgets((), (21,), n_train=20)


def test_the_proxy_split_of_a_tiny_budget(tiny_cfg) -> None:
    """Pretraining on a budget reads its cases only; with located scans 2 or 3 annotated cases
    still pretrain (2 validate), 1 cannot; without them 4 are needed."""
    from kidneyssl.training.split import Split
    from kidneyssl.training.tasks.pretraining import proxy_split

    split = Split(tuple(IDS[:20]), tuple(IDS[20:24]), 0, 0.2, tuple(IDS[24:28]), 0.2)
    for n, n_train in ((2, 0), (3, 1), (4, 2), (10, 8)):
        proxy = proxy_split(split, tiny_cfg, min_train=0, cases=IDS[:n])
        assert len(proxy.val) == 2 and len(proxy.train) == n_train
        assert set(proxy.train) | set(proxy.val) == set(IDS[:n]) and not set(proxy.train) & set(proxy.val)
    with pytest.raises(KidneySSLError, match="at least 2"):
        proxy_split(split, tiny_cfg, min_train=0, cases=IDS[:1])
    with pytest.raises(KidneySSLError, match="at least 4"):
        proxy_split(split, tiny_cfg, cases=IDS[:3])
    with pytest.raises(KidneySSLError, match="must be training cases"):
        proxy_split(split, tiny_cfg, cases=IDS[18:22])


def test_side_proxy_at_a_budget_whose_locator_found_nothing(tiny_cache, tiny_cfg, tmp_path) -> None:
    """2 annotated cases and no usable located scan: the budget's cases go on alone (validation
    cases join the training pairs), recorded; no label outside the budget is read."""
    import json

    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.training.tasks.side import SideTask

    ctx = init_distributed("cpu")
    probe = SideTask(tiny_cache)
    probe.setup(tiny_cfg, None, None, ctx)
    assert probe.split is not None
    budget = sorted(probe.split.train)[:2]
    located = tmp_path / "located"
    located.mkdir()
    (located / "locate.json").write_text(json.dumps({
        "status": "finished", "model": "scratch.pt", "touched_cases": budget,
        "cases": {"scan_0": {"kidney_voxels": 0, "confidence": 0.0}}}))
    task = SideTask(tiny_cache, unlabeled=located, label_cases=budget)
    task.setup(tiny_cfg, None, tmp_path / "run", ctx)
    assert task.proxy.train == () and set(task.proxy.val) == set(budget) and task.train_pairs is None
    task.prepare(ctx)
    assert task.train_pairs is not None and len(task.train_pairs) == tiny_cfg.pretrain.pairs_per_epoch
    assert "proxy validation cases join the training pairs" in task.run_info()["unlabeled"]["fallback"]
    assert set(task.labels_read(best=True)) == set(task.labels_read(best=False)) == set(budget)
    assert task.run_info()["label_cases"] == budget
