"""Item 7: a ``train`` killed in its first epoch (run.json, no last.pt) can be resumed: ``--resume``
starts it again from the beginning with its saved config, cache, init and split."""

from __future__ import annotations

import contextlib
import json
import signal
import time

import torch

from kidneyssl.errors import RunFolderError
from kidneyssl.training.runfolder import RunFolder

from .conftest import TRAIN_SETS, start_cli


@contextlib.contextmanager
def _deterministic():
    """Deterministic single-thread torch in this process (restored afterwards)."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


def test_resume_of_a_run_killed_in_its_first_epoch(tmp_path, tiny_cache, kidneyssl):
    args = ["train", "-q", "--cache", tiny_cache, *TRAIN_SETS, "--set", "train.epochs=1", "--device", "cpu"]
    killed = tmp_path / "killed"
    child = start_cli(*args, "--out", killed, deterministic=True)
    deadline = time.time() + 120
    while not (killed / "run.json").is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (killed / "run.json").is_file(), child.stdout.read().decode()
    for name in ("last.pt", "best.pt", "history.jsonl"):  # if the first epoch slipped through
        (killed / name).unlink(missing_ok=True)
    assert RunFolder(killed).unstarted_inputs("segmentation")["cache"] == str(tiny_cache.resolve())
    # Before: "already holds a run; use --resume" without it, "nothing to resume" with it.
    with _deterministic():
        resumed = kidneyssl("train", "-q", "--out", killed, "--resume", "--device", "cpu")
        assert resumed.returncode == 0, resumed.stderr
        full = kidneyssl(*args, "--out", tmp_path / "full")
        assert full.returncode == 0, full.stderr
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 0
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    assert json.loads((killed / "run.json").read_text())["status"] == "finished"
    assert [json.loads(r)["epoch"] for r in (killed / "history.jsonl").read_text().splitlines()] == [0]


def test_resume_without_any_run_is_still_refused(tmp_path):
    import pytest

    from kidneyssl.config import load_preset
    from kidneyssl.training.runfolder import begin_run

    with pytest.raises(RunFolderError, match="nothing to resume"):
        begin_run(RunFolder(tmp_path / "empty"), "segmentation", load_preset("demo"), extend=lambda c, n: c,
                  epochs_of=lambda c: c.train.epochs, resume=True, force=False, extend_epochs=0, is_main=True)
