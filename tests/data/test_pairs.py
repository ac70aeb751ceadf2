"""Siamese pairs: balance, labels, determinism, no self-pairs, single-kidney cases, crops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from kidneyssl.data.pairs import KidneyPairDataset, kidney_items, sample_pairs
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Side
from kidneyssl.preprocessing.crops import kidney_crop


def _items(n_cases: int, single: dict[int, Side] | None = None):
    single = single or {}
    out = []
    for i in range(n_cases):
        for side in (Side.RIGHT, Side.LEFT):
            if i in single and single[i] is not side:
                continue
            out.append((f"case_{i:05d}", side))
    return out


def test_pairs_are_balanced_labelled_and_distinct():
    items = _items(10, single={3: Side.LEFT})
    pairs = sample_pairs(items, 101, np.random.default_rng(0))
    labels = Counter(label for _, _, label in pairs)
    assert labels == {1: 51, 0: 50}
    for a, b, label in pairs:
        assert a != b  # never a kidney with itself
        assert label == int(a[1] is b[1])
        if label == 1:
            assert a[0] != b[0]  # same-side kidneys come from two patients
    # Without replacement while enough distinct pairs exist (9*8 + 10*9 same, 9*10 opposite).
    assert len({(a, b) for a, b, _ in pairs}) == 101
    # Both orders and both sides occur.
    assert {a[1] for a, _, label in pairs if label == 0} == {Side.LEFT, Side.RIGHT}
    assert {a[1] for a, _, label in pairs if label == 1} == {Side.LEFT, Side.RIGHT}
    # The single-kidney case only ever shows its one side.
    assert ("case_00003", Side.RIGHT) not in {it for a, b, _ in pairs for it in (a, b)}


def test_pairs_are_deterministic_given_the_generator():
    items = _items(6)
    p1 = sample_pairs(items, 40, np.random.default_rng([7, 0]))
    p2 = sample_pairs(items, 40, np.random.default_rng([7, 0]))
    p3 = sample_pairs(items, 40, np.random.default_rng([7, 1]))
    assert p1 == p2 and p1 != p3


def test_more_pairs_than_distinct_ones_and_errors():
    items = _items(2)  # 2 right + 2 left kidneys: 4 same-side and 4 opposite ordered pairs
    pairs = sample_pairs(items, 20, np.random.default_rng(1))
    assert len(pairs) == 20 and Counter(lab for *_, lab in pairs) == {1: 10, 0: 10}
    assert all(a != b for a, b, _ in pairs)
    assert sample_pairs(items, 0, np.random.default_rng(1)) == []
    with pytest.raises(ValueError, match="two kidneys of one side"):
        sample_pairs([("c1", Side.LEFT), ("c2", Side.RIGHT)], 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="a right and a left"):
        sample_pairs([("c1", Side.LEFT), ("c2", Side.LEFT)], 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unique"):
        sample_pairs([("c1", Side.LEFT), ("c1", Side.LEFT)], 2, np.random.default_rng(0))


def test_kidney_items_from_cache_skip_missing_side(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=3, single={1: Side.LEFT})
    assert kidney_items(cache, cache.case_ids) == [
        ("case_00000", Side.RIGHT), ("case_00000", Side.LEFT),
        ("case_00001", Side.LEFT),
        ("case_00002", Side.RIGHT), ("case_00002", Side.LEFT),
    ]


def test_pair_dataset_items_and_epochs(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=4, single={2: Side.RIGHT})
    crop = (8, 16, 16)
    ds = KidneyPairDataset(cache, cache.case_ids, n_pairs=12, seed=3, crop_size=crop)
    assert len(ds) == 12
    item = ds[0]
    assert item["a"].shape == (1, *crop) and item["a"].dtype == torch.float32
    assert item["b"].shape == (1, *crop) and item["label"].dtype == torch.float32
    (ca, sa), (cb, sb), label = ds.pairs[0]
    assert item["ids"] == (f"{ca}:{sa.value}", f"{cb}:{sb.value}")
    assert float(item["label"]) == float(label)
    case = cache.load(ca)
    expected = kidney_crop(case.image, case.meta["kidneys"][sa.value]["center"], crop)
    np.testing.assert_array_equal(item["a"][0].numpy(), expected)
    assert sum(float(ds[i]["label"]) for i in range(len(ds))) == 6.0

    again = KidneyPairDataset(cache, cache.case_ids, n_pairs=12, seed=3, crop_size=crop)
    assert again.pairs == ds.pairs  # same seed and epoch -> same pairs in every process
    first = list(ds.pairs)
    ds.set_epoch(1)
    assert ds.pairs != first and len(ds) == 12
    again.set_epoch(1)
    assert again.pairs == ds.pairs
    ds.set_epoch(0)
    assert ds.pairs == first

    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["a"].shape == (4, 1, *crop) and batch["label"].shape == (4,)


def test_pair_dataset_mask_outside_keeps_only_its_kidney(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=2)
    crop = (12, 24, 64)  # wide enough to reach the other kidney
    ds = KidneyPairDataset(cache, cache.case_ids, n_pairs=4, seed=0, crop_size=crop, mask_outside=True)
    plain = KidneyPairDataset(cache, cache.case_ids, n_pairs=4, seed=0, crop_size=crop)
    case = cache.load("case_00000")
    masked = ds.crop("case_00000", Side.RIGHT)
    full = plain.crop("case_00000", Side.RIGHT)
    center = case.meta["kidneys"]["right"]["center"]
    start = [c - s // 2 for c, s in zip(center, crop)]
    kidney = kidney_crop(case.label, center, crop) > 0
    x = np.arange(start[2], start[2] + crop[2])
    own = (x < case.meta["split_x"])[None, None, :]
    assert (kidney & ~own).any()  # the other kidney is inside the box ...
    np.testing.assert_array_equal(masked[kidney & own], full[kidney & own])
    assert not masked[~(kidney & own)].any()  # ... but zeroed, as is everything outside the mask


def test_pair_dataset_errors(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=1, single={0: Side.LEFT})
    with pytest.raises(KidneySSLError, match="cannot form siamese pairs"):
        KidneyPairDataset(cache, cache.case_ids, n_pairs=4, seed=0, crop_size=(4, 4, 4))
    with pytest.raises(KidneySSLError, match="no located kidney"):
        KidneyPairDataset(cache, [], n_pairs=4, seed=0, crop_size=(4, 4, 4))
