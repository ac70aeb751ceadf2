"""Item 1: a checkpoint cannot run code (weights_only loading), and NaN/inf weights are refused."""

from __future__ import annotations

import io
import os
import pickle
import random

import numpy as np
import pytest
import torch

from kidneyssl.errors import CheckpointError
from kidneyssl.io.checkpoint import load_checkpoint, save_checkpoint
from kidneyssl.training.seeding import capture_rng_state, restore_rng_state, seed_everything

from .conftest import TRAIN_SETS, error_lines, snapshot, train_config


class _Payload:
    """Unpickling this calls os.system (creates the marker file) - if anything unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(path, marker, as_torch: bool) -> None:
    payload = {"format_version": 1, "kind": "segmentation", "model_state": {}, "x": _Payload(marker)}
    if as_torch:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))


def test_malicious_checkpoint_runs_nothing_in_any_command(tmp_path, good_scan, tiny_cache, kidneyssl):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    _malicious(evil, marker, as_torch=True)
    run = tmp_path / "run"  # a run folder whose last.pt is the malicious file
    run.mkdir()
    (run / "last.pt").write_bytes(evil.read_bytes())
    (run / "run.json").write_text('{"kind": "segmentation", "status": "running", "cache": "%s"}' % tiny_cache)
    from kidneyssl.config import save_config
    from kidneyssl.training.split import make_split, save_split

    cfg = train_config()
    save_config(cfg, run / "config.yaml")
    save_split(make_split([f"case_{i:05d}" for i in range(4)], 0.5, cfg.train.seed), run / "split.json")
    before = snapshot(tmp_path, exclude=tmp_path / "out")
    runs = {
        "predict --model": (kidneyssl("predict", "--model", evil, "--input", good_scan, "--out", tmp_path / "out"),
                            evil),
        "train --init": (kidneyssl("train", "--init", evil, "--cache", tiny_cache, "--out", tmp_path / "out",
                                   "--device", "cpu", *TRAIN_SETS), evil),
        "train --resume": (kidneyssl("train", "--resume", "--out", run, "--device", "cpu"), run / "last.pt"),
    }
    for name, (proc, named) in runs.items():
        assert not marker.exists(), f"{name}: the pickle payload ran"
        assert proc.returncode == 2, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, name
        (line,) = error_lines(proc.stderr)
        assert line.startswith(f"kidneyssl {name.split()[0]}: error: {named}: not a readable PyTorch "
                               "checkpoint (refused by the safe (weights_only) unpickler"), (name, line)
        assert "GLOBAL posix.system" in line
    assert snapshot(tmp_path, exclude=tmp_path / "out") == before  # nothing else touched


@pytest.mark.parametrize("as_torch", [True, False], ids=["torch-zip", "raw-pickle"])
def test_malicious_file_is_refused_by_the_loader(tmp_path, as_torch):
    """What --init, --resume and --model all go through: refused by name, nothing ran."""
    from kidneyssl.training.tasks import SegmentationTask

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    _malicious(evil, marker, as_torch)
    with pytest.raises(CheckpointError, match=rf"^{evil}: not a readable PyTorch checkpoint \(refused by the safe"):
        SegmentationTask(init=str(evil)).initialize(None)
    with pytest.raises(CheckpointError, match="refused by the safe"):
        load_checkpoint(evil, kind="segmentation")
    assert not marker.exists()


def test_non_finite_weights_are_refused_naming_file_and_key(tmp_path, seg_checkpoint, good_scan, kidneyssl):
    payload = torch.load(seg_checkpoint, weights_only=True)
    key = next(k for k, v in payload["model_state"].items() if v.is_floating_point() and v.numel() > 1)
    payload["model_state"][key] = payload["model_state"][key].clone()
    payload["model_state"][key].view(-1)[0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match=rf"nan\.pt: weights are not finite: {key}"):
        load_checkpoint(bad)
    proc = kidneyssl("predict", "--model", bad, "--input", good_scan, "--out", tmp_path / "out")
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert str(bad) in line and key in line
    assert not (tmp_path / "out" / "prediction_good.nii.gz").exists()


def test_rng_state_round_trips_exactly_through_weights_only(tmp_path):
    seed_everything(5)
    random.random(), np.random.rand(3), np.random.randn(1), torch.rand(2)  # noqa: B018
    save_checkpoint(tmp_path / "c.pt", kind="pretrain", config={}, model_state={},
                    rng=capture_rng_state(), best={"val": np.float64(0.5)}, epoch=np.int64(3))
    ckpt = load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 3 and ckpt["best"]["val"] == 0.5
    expected = (random.random(), np.random.rand(4).tolist(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    seed_everything(99)
    restore_rng_state(ckpt["rng"])
    assert (random.random(), np.random.rand(4).tolist(), np.random.randn(3).tolist(),
            torch.rand(3).tolist()) == expected


def test_checkpoints_of_the_previous_layout_still_load(tmp_path):
    """Older checkpoints held numpy arrays/scalars (RNG state): data only, still accepted."""
    legacy = {"format_version": 1, "kind": "siamese", "config": {}, "model_state": {},
              "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                      "torch": torch.get_rng_state()}, "metric": np.float64(1.5)}
    buf = io.BytesIO()
    torch.save(legacy, buf)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    ckpt = load_checkpoint(tmp_path / "old.pt")
    state = np.random.get_state()
    restore_rng_state(ckpt["rng"])
    assert np.array_equal(np.random.get_state()[1], ckpt["rng"]["numpy"][1])
    np.random.set_state(state)
