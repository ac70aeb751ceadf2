"""Fixtures for the hostile-input tests: a tiny segmentation checkpoint, CT-like scans, the CLI in
a child process, and snapshots of everything outside ``--out``."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

# The CLI in a child process (the same interpreter, this checkout's sources first).
CHILD = "import sys; from kidneyssl.cli.main import main; sys.exit(main(sys.argv[1:]))"
# ... deterministic on CPU with one thread (bit-exact training runs).
DETERMINISTIC_CHILD = ("import sys, torch; torch.use_deterministic_algorithms(True); torch.set_num_threads(1); "
                       "from kidneyssl.cli.main import main; sys.exit(main(sys.argv[1:]))")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def child_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KIDNEYSSL_NO_PROGRESS": "1"}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def run_cli(*args: str, timeout: float = 240, deterministic: bool = False) -> subprocess.CompletedProcess:
    """``kidneyssl ARGS`` in a child process; returns its exit status, stdout and stderr."""
    return subprocess.run([sys.executable, "-c", DETERMINISTIC_CHILD if deterministic else CHILD,
                           *map(str, args)], env=child_env(), capture_output=True, text=True, timeout=timeout)


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def kidneyssl(capsys):
    """``kidneyssl(*args)``: the CLI in this process (fast); returns exit status, stdout, stderr."""
    from kidneyssl.cli.main import main

    def call(*args) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


def start_cli(*args: str, deterministic: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DETERMINISTIC_CHILD if deterministic else CHILD,
                             *map(str, args)], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that report an error (what a user reads)."""
    return [ln for ln in stderr.splitlines() if "error" in ln.lower()]


def snapshot(root: Path, exclude: Path | None = None) -> dict[str, tuple[int, int, str]]:
    """(size, mtime_ns, sha1) of every file under ``root`` except under ``exclude``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns,
                                                hashlib.sha1(path.read_bytes()).hexdigest())
    return out


def ct_scan(shape=(40, 48, 24), spacing=(2.0, 2.5, 3.0), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 CT-like scan in HU (air, soft tissue, two bright blobs) and its LPS affine."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(30.0, 20.0, size=shape)
    arr[:, :4] = -1000.0  # some air
    arr[8:16, 10:20, 6:14] = 250.0
    arr[24:32, 10:20, 6:14] = 250.0
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    return arr.astype(np.int16), affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture(scope="session")
def seg_checkpoint(tmp_path_factory) -> Path:
    """A segmentation checkpoint of a tiny demo architecture (random weights, coarse grid)."""
    from kidneyssl.config import PreprocessConfig, config_to_dict
    from kidneyssl.io.checkpoint import save_checkpoint
    from kidneyssl.models import build_segmentation_model

    cfg = dataclasses.replace(train_config(), preprocess=PreprocessConfig(spacing_mm=(8.0, 6.0, 6.0)))
    torch.manual_seed(0)
    model = build_segmentation_model(cfg.model)
    path = tmp_path_factory.mktemp("reliability_ckpt") / "seg.pt"
    save_checkpoint(path, kind="segmentation", config=config_to_dict(cfg), model_state=model.state_dict(),
                    epoch=0)
    return path


@pytest.fixture
def good_scan(tmp_path) -> Path:
    arr, affine = ct_scan()
    return save_nifti(arr, affine, tmp_path / "scans" / "good.nii.gz")


#: A tiny training config (matches :func:`tiny_cache`).
TRAIN_SETS = ["--preset", "demo", "--set", "preprocess.spacing_mm=[4.0,6.0,6.0]", "--set", "train.val_fraction=0.5",
              "--set", "model.init_features=4", "--set", "model.growth_rate=4", "--set", "model.norm_groups=2",
              "--set", "inference.half_context_mm=16", "--set", "train.crop_size=null"]


def train_config():
    from kidneyssl.config import apply_overrides, load_preset

    return apply_overrides(load_preset("demo"), [TRAIN_SETS[i + 1] for i in range(2, len(TRAIN_SETS), 2)])


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Four box-kidney cases prepared with the TRAIN_SETS config (a few seconds)."""
    from kidneyssl.data.prepare import prepare_dataset
    from kidneyssl.io.geometry import Geometry
    from kidneyssl.io.volumes import write_mask, write_volume
    from kidneyssl.phantoms import kits_affine

    root = tmp_path_factory.mktemp("tiny_cache")
    geometry = Geometry(kits_affine((4.0, 3.0, 3.0)), (16, 32, 64))
    for i in range(4):
        image = (40.0 + 30.0 * np.random.default_rng(i).normal(size=geometry.shape)).astype(np.float32)
        label = np.zeros(geometry.shape, np.uint8)
        label[4:12, 8:20, 8:20] = 1
        label[3:10, 10:22, 40:50] = 1
        write_volume(image, geometry, root / "data" / f"case_{i:05d}" / "imaging.nii.gz")
        write_mask(label, root / "data" / f"case_{i:05d}" / "segmentation.nii.gz", like=geometry)
    assert not prepare_dataset(root / "data", root / "cache", train_config().preprocess, workers=1).failed
    return root / "cache"
