"""Issue 20, item 17: ``experiment --dry-run`` prints the plan and writes nothing into ``--out``
(``--help`` says so); the caches its probe needs go elsewhere."""

from __future__ import annotations

import shutil

import pytest

from .conftest import TRAIN_SETS


@pytest.mark.slow
def test_experiment_dry_run_writes_nothing_into_out(tmp_path, tiny_cache, kidneyssl):
    data = tmp_path / "data"
    for i in range(8):  # enough cases for a plan (2 test, 2 validation, 4 training)
        shutil.copytree(tiny_cache.parent / "data" / f"case_{i % 4:05d}", data / f"case_{i:05d}")
    out = tmp_path / "exp"
    proc = kidneyssl("experiment", "--data", data, "--out", out, "--dry-run", "--no-probe", "--workers", "1",
                     *TRAIN_SETS, "--set", "train.val_fraction=0.3", "--test-fraction", "0.25")
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stderr
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
