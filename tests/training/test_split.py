"""Seeded train / validation / test splits: disjoint, reproducible, validated on load."""

from __future__ import annotations

from pathlib import Path

import pytest

from kidneyssl.errors import KidneySSLError
from kidneyssl.training.split import load_split, make_split, save_split

IDS = [f"case_{i:05d}" for i in range(10)]


def test_make_split_is_seeded_80_20_and_disjoint() -> None:
    a = make_split(IDS, 0.2, seed=0)
    assert len(a.val) == 2 and len(a.train) == 8
    assert set(a.val).isdisjoint(a.train) and set(a.val) | set(a.train) == set(IDS)
    assert make_split(list(reversed(IDS)), 0.2, seed=0) == a  # order of the input does not matter
    others = {make_split(IDS, 0.2, seed=s).val for s in range(1, 8)}
    assert any(v != a.val for v in others)


def test_make_split_errors() -> None:
    with pytest.raises(KidneySSLError, match="no annotated cases"):
        make_split([], 0.2, 0)
    with pytest.raises(KidneySSLError, match="at least 2 are needed"):
        make_split(IDS[:5], 0.2, 0)  # 1 validation case


def test_split_round_trip_and_validation(tmp_path: Path) -> None:
    split = make_split(IDS, 0.3, seed=4)
    save_split(split, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json", available=IDS) == split
    with pytest.raises(KidneySSLError, match="not annotated cases"):
        load_split(tmp_path / "split.json", available=IDS[:3])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KidneySSLError, match="not a split file"):
        load_split(tmp_path / "bad.json")


def test_test_part_is_disjoint_and_round_trips(tmp_path: Path) -> None:
    split = make_split([f"case_{i:05d}" for i in range(20)], 0.2, seed=3, test_fraction=0.25)
    assert (len(split.train), len(split.val), len(split.test)) == (11, 4, 5)
    assert not (set(split.train) & set(split.val) or set(split.train) & set(split.test)
                or set(split.val) & set(split.test))
    assert split.held_out == frozenset(split.val) | frozenset(split.test)
    save_split(split, tmp_path / "s.json")
    assert load_split(tmp_path / "s.json") == split
    with pytest.raises(KidneySSLError, match="test case"):
        make_split([f"c{i}" for i in range(10)], 0.2, seed=0, test_fraction=0.1)

