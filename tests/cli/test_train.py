"""``kidneyssl train``: exact resume after SIGKILL, refuse/force, CLI errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kidneyssl.cli.main import main

TINY = ["--preset", "demo",
        "--set", "preprocess.spacing_mm=[12.0,6.0,6.0]", "--set", "pretrain.crop_size=[16,32,32]", "--set", "train.crop_size=null",
        "--set", "model.init_features=4", "--set", "model.growth_rate=4", "--set", "model.norm_groups=2",
        "--set", "model.embedding_dim=8", "--set", "train.val_fraction=0.5",
        "--set", "inference.half_context_mm=16"]

# Run the CLI in a child process, deterministic on CPU with fixed threads.
CHILD = (
    "import sys, torch; torch.use_deterministic_algorithms(True); torch.set_num_threads(1); "
    "from kidneyssl.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.data.prepare import prepare_dataset
    from kidneyssl.phantoms import write_dataset

    root = tmp_path_factory.mktemp("train_cli")
    write_dataset(root / "data", 4, seed=1, resolution="demo", workers=2)
    cfg = apply_overrides(load_preset("demo"), [TINY[i + 1] for i in range(2, len(TINY), 2)])
    prepare_dataset(root / "data", root / "cache", cfg.preprocess, workers=2)
    return root / "cache"


def _child(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KIDNEYSSL_NO_PROGRESS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _last_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # noqa: BLE001 - not written yet, or being renamed
        return -1


def test_resume_after_sigkill_ends_with_the_same_weights(cache: Path, tmp_path: Path) -> None:
    epochs = 3
    args = ["train", "-q", "--cache", str(cache), *TINY, "--set", f"train.epochs={epochs}", "--device", "cpu"]
    full = _child([*args, "--out", str(tmp_path / "full")])
    killed = _child([*args, "--out", str(tmp_path / "killed")])
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 240
    while _last_epoch(last) < 0 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "training finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert 0 <= _last_epoch(last) < epochs - 1
    resumed = _child(["train", "-q", "--out", str(tmp_path / "killed"), "--resume", "--device", "cpu"])
    out_resumed, _ = resumed.communicate(timeout=240)
    out_full, _ = full.communicate(timeout=240)
    assert full.returncode == 0, out_full.decode()
    assert resumed.returncode == 0, out_resumed.decode()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(last, weights_only=False)
    assert a["epoch"] == b["epoch"] == epochs - 1
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    hist_a = (tmp_path / "full" / "history.jsonl").read_text().splitlines()
    hist_b = (tmp_path / "killed" / "history.jsonl").read_text().splitlines()
    assert len(hist_a) == len(hist_b) == epochs


def test_output_folder_with_another_run_is_refused_unless_force(cache: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"kind": "siamese", "status": "finished"}')
    rc = main(["train", "--cache", str(cache), "--out", str(out), *TINY, "--set", "train.epochs=1"])
    assert rc == 2 and "already holds" in capsys.readouterr().err
    rc = main(["train", "--cache", str(cache), "--out", str(out), *TINY, "--set", "train.epochs=1", "--force",
               "--device", "cpu"])
    assert rc == 0 and (out / "last.pt").is_file()
    assert '"segmentation"' in (out / "run.json").read_text()


def test_cache_prepared_with_another_config_is_refused(cache: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "--cache", str(cache), "--out", str(tmp_path / "run"), *TINY,
               "--set", "preprocess.spacing_mm=[6.0,3.0,3.0]"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "kidneyssl train: error:" in err and not (tmp_path / "run" / "last.pt").exists()


def test_resume_and_extend_are_separate_modes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "--out", str(tmp_path), "--resume", "--extend-epochs", "2"])
    assert rc == 2 and "separate modes" in capsys.readouterr().err
    rc = main(["train", "--out", str(tmp_path / "none"), "--resume"])
    assert rc == 2 and "nothing to resume" in capsys.readouterr().err


def test_torchrun_two_processes_runs_the_train_command(cache: Path, tmp_path: Path) -> None:
    """The real command under PyTorch's launcher (2 CPU processes, gloo): it finishes (uneven
    validation shards included), only rank 0 writes, and the run is complete."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", KIDNEYSSL_NO_PROGRESS="1")
    out = tmp_path / "ddp"
    # 4 cases, val_fraction 0.75 -> 3 validation cases over 2 ranks (2 + 1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "kidneyssl.cli.main", "train",
           "--cache", str(cache), "--out", str(out), "--init", "scratch", "--device", "cpu", *TINY,
           "--set", "train.epochs=2", "--set", "train.val_fraction=0.75"]
    # the paper's batch size (1 half volume per step) cannot be split over 2 processes: refused,
    # by every rank alike, before anything is written
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "train.batch_size=1" in proc.stderr and "multiple of 2" in proc.stderr
    assert not (out / "run.json").exists()
    # the global batch of 2: one half volume per process per step
    proc = subprocess.run(cmd + ["--set", "train.batch_size=2"], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # one writer: no duplicated lines
    assert all(len(r["val_dice_per_case"]) == 3 for r in rows)
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert not list(out.glob("*.tmp*"))
    info = json.loads((out / "run.json").read_text())
    assert (info["world_size"], info["global_batch"], info["micro_batch"], info["accumulate"]) == (2, 2, 1, 1)
