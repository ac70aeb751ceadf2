"""Shared fixtures. Real-data tests use ../shared (beside the checkout) and skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KIDNEYSSL_SHARED", REPO.parent / "shared"))

# Progress bars off in tests (their output only clutters failures).
os.environ.setdefault("KIDNEYSSL_NO_PROGRESS", "1")


@pytest.fixture(scope="session", autouse=True)
def _inference_cache_dir(tmp_path_factory):
    """Inference's cache folder (precision probes, OpenVINO exports) is a temporary one in tests,
    never the user's; subprocesses inherit it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("KIDNEYSSL_CACHE_DIR", str(tmp_path_factory.mktemp("kidneyssl_cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _huge_pages_setting():
    """``predict`` and ``locate`` run in this process may turn PyTorch's huge pages off for the
    process (kidneyssl.system.settle_whole_scan_inference); later tests' subprocesses start with
    the setting ``import kidneyssl`` made instead."""
    before = os.environ.get("THP_MEM_ALLOC_ENABLE")
    yield
    if before is None:
        os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
    else:
        os.environ["THP_MEM_ALLOC_ENABLE"] = before


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder; skips the test when it is absent (fresh clone without data)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} not present")
    return SHARED


@pytest.fixture(scope="session")
def kits_masks_dir(shared_dir: Path) -> Path:
    path = shared_dir / "kits19-masks"
    if not (path / "case_00000" / "segmentation.nii.gz").is_file():
        pytest.skip(f"{path} has no KiTS19 masks")
    return path


@pytest.fixture(scope="session")
def real_ct_dir(shared_dir: Path) -> Path:
    path = shared_dir / "real-ct"
    if not (path / "example_ct_sm.nii.gz").is_file():
        pytest.skip(f"{path} has no real CT")
    return path
