"""Atomic writes leave the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os

import pytest

from kidneyssl.io.atomic import atomic_path, atomic_write_json, atomic_write_text


def test_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    assert os.stat(target).st_mode & 0o044  # readable by others, not mkstemp's 0600


def test_failure_keeps_old_content(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_suffix_is_kept_for_writers_that_look_at_it(tmp_path):
    with atomic_path(tmp_path / "x.nii.gz", suffix=".nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"1")
    assert (tmp_path / "x.nii.gz").read_bytes() == b"1"
