"""Item 6 and 9: argument and output errors are one line naming the (absolute) path, before any
work; ``-q``/``-v`` before the verb; ``predict --device auto``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from .conftest import error_lines, run_cli, snapshot


def _one_error_line(proc, verb: str) -> str:
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"kidneyssl {verb}: error: "), lines[0]
    return lines[0]


def test_predict_out_is_an_existing_file(tmp_path, seg_checkpoint, good_scan, kidneyssl):
    out = tmp_path / "out.txt"
    out.write_text("mine")
    before = snapshot(tmp_path)
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", good_scan, "--out", out)
    assert proc.returncode == 2
    line = _one_error_line(proc, "predict")
    assert f"{out}: --out: expected a folder, found an existing file" in line  # the CLI's own check
    assert "torch threads" not in proc.stderr  # refused before loading anything
    assert snapshot(tmp_path) == before


def test_prepare_out_is_an_existing_file(tmp_path, kidneyssl):
    data = tmp_path / "data" / "case_00000"
    data.mkdir(parents=True)
    out = tmp_path / "cache"
    out.write_text("mine")
    before = snapshot(tmp_path)
    proc = kidneyssl("prepare", "--data", tmp_path / "data", "--out", out)
    assert proc.returncode == 2
    line = _one_error_line(proc, "prepare")  # the library's check: it names no flag, the CLI adds it
    assert f"{out}: output folder: expected a folder, found an existing file" in line and "(another --out)" in line
    assert snapshot(tmp_path) == before


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write into (root ignores permission bits: use sysfs)."""
    if os.geteuid() == 0:
        try:
            (Path("/sys") / "kidneyssl-probe").mkdir()
        except OSError:
            return Path("/sys")
        (Path("/sys") / "kidneyssl-probe").rmdir()
        pytest.skip("running as root without a read-only folder to try")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_read_only_out_is_refused_before_inference(tmp_path, seg_checkpoint, good_scan, kidneyssl):
    out = _read_only_folder(tmp_path)
    before = snapshot(tmp_path / "scans")
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", good_scan, "--out", out)
    assert proc.returncode == 2
    line = _one_error_line(proc, "predict")
    assert f"{out}: --out: expected a writable folder, found" in line
    assert "torch threads" not in proc.stderr and "predicted" not in proc.stderr  # no inference ran
    assert snapshot(tmp_path / "scans") == before


@pytest.mark.parametrize("verb, args", [
    ("predict", ["--model", "m.pt", "--input", "x.nii.gz", "--out", "o", "--threads", "0"]),
    ("predict", ["--model", "m.pt", "--input", "x.nii.gz", "--out", "o", "--threads", "-3"]),
    ("predict", ["--model", "m.pt", "--input", "x.nii.gz", "--out", "o", "--threads", "two"]),
    ("prepare", ["--data", "d", "--out", "o", "--workers", "0"]),
    ("synth", ["--out", "o", "--cases", "-1"]),
    ("train", ["--out", "o", "--grad-accum", "0"]),
    ("predict", ["--model", "m.pt", "--input", "x.nii.gz"]),  # --out missing
    ("evaluate", ["--pred", "p", "--gt", "g", "--bl-mode", "nonsense"]),
])
def test_argument_errors_are_one_line_with_status_2(tmp_path, kidneyssl, verb, args):
    before = snapshot(tmp_path)
    proc = kidneyssl(verb, *args)
    assert proc.returncode == 2
    line = _one_error_line(proc, verb)
    assert line.endswith(f"(see kidneyssl {verb} --help)")
    assert "usage:" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_argument_error_in_a_child_process_is_one_line():
    proc = run_cli("predict", "--model", "m.pt", "--input", "x", "--out", "o", "--threads", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("kidneyssl predict: error: argument --threads: expected a whole number "
                                   ">= 1, got 0 (see kidneyssl predict --help)")


@pytest.mark.parametrize("argv, level", [
    (["-q", "check"], logging.WARNING), (["check", "-q"], logging.WARNING),
    (["-v", "check"], logging.DEBUG), (["check", "--verbose"], logging.DEBUG), (["check"], logging.INFO),
])
def test_quiet_and_verbose_before_or_after_the_verb(tmp_path, kidneyssl, argv, level):
    kidneyssl(*argv, "--data", tmp_path / "missing")
    assert logging.getLogger("kidneyssl").level == level


def test_quiet_and_verbose_together_is_an_error(tmp_path, kidneyssl):
    proc = kidneyssl("-q", "check", "-v", "--data", tmp_path)
    assert proc.returncode == 2 and "exclude each other" in _one_error_line(proc, "check")


def test_predict_device_defaults_to_auto(monkeypatch):
    from kidneyssl.cli._common import resolve_device
    from kidneyssl.cli.main import build_parser
    from kidneyssl.errors import KidneySSLError

    args = build_parser().parse_args(["predict", "--model", "m", "--input", "i", "--out", "o"])
    assert args.device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(KidneySSLError, match="no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_missing_files_name_absolute_paths_and_what_the_folder_holds(tmp_path, seg_checkpoint,
                                                                     good_scan, kidneyssl, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "seg_best.pt").write_bytes(b"")
    proc = kidneyssl("predict", "--model", "models/seg.pt", "--input", good_scan, "--out", "out")
    line = _one_error_line(proc, "predict")
    assert f"{tmp_path / 'models' / 'seg.pt'}: checkpoint not found ({tmp_path / 'models'} holds: seg_best.pt)" in line
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", "scans/god.nii.gz", "--out", "out")
    line = _one_error_line(proc, "predict")
    assert f"{tmp_path / 'scans' / 'god.nii.gz'}: input:" in line and "holds: good.nii.gz" in line
    proc = kidneyssl("train", "--cache", "nowhere/cache", "--out", "run")
    line = _one_error_line(proc, "train")
    assert f"{tmp_path / 'nowhere' / 'cache' / 'cache.json'}: cache:" in line
