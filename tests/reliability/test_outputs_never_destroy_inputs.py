"""Issue 20, items 1 and 2: no verb writes over, into or around one of its inputs (symbolic links
resolved), and none replaces a file it did not write without ``--force``. Each test compares the
checksums of every input file before and after."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kidneyssl.errors import DataError
from kidneyssl.io.outputs import check_outputs

from .conftest import ct_scan, error_lines, save_nifti, snapshot


def _one_error(proc, verb: str) -> str:
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"kidneyssl {verb}: error: "), lines[0]
    return lines[0]


def _pairs_dataset(root, n=2):
    """``root/images/scan_i.nii.gz`` + ``root/labels/scan_i.nii.gz`` (a pairs dataset)."""
    for i in range(n):
        arr, affine = ct_scan(seed=i)
        save_nifti(arr, affine, root / "images" / f"scan_{i}.nii.gz")
        label = np.zeros(arr.shape, np.uint8)
        label[8:16, 10:20, 6:14] = 1
        save_nifti(label, affine, root / "labels" / f"scan_{i}.nii.gz")
    return root


def _kits_dataset(root, n=2):
    for i in range(n):
        arr, affine = ct_scan(seed=i)
        save_nifti(arr, affine, root / f"case_{i:05d}" / "imaging.nii.gz")
        label = np.zeros(arr.shape, np.uint8)
        label[8:16, 10:20, 6:14] = 1
        save_nifti(label, affine, root / f"case_{i:05d}" / "segmentation.nii.gz")
    return root


# -- item 1: locate --input DS/images --out DS ------------------------------------------------------

def test_locate_into_the_dataset_it_reads_is_refused(tmp_path, seg_checkpoint, kidneyssl):
    ds = _pairs_dataset(tmp_path / "DS")
    before = snapshot(ds)
    proc = kidneyssl("locate", "--model", seg_checkpoint, "--input", ds / "images", "--out", ds)
    assert proc.returncode == 2
    line = _one_error(proc, "locate")
    assert str(ds / "images") in line and "outside the scans" in line and "(another --out)" in line
    assert snapshot(ds) == before  # every scan and label byte for byte, same mtimes


def test_locate_through_a_symlinked_out_is_refused(tmp_path, seg_checkpoint, kidneyssl):
    ds = _pairs_dataset(tmp_path / "DS")
    os.symlink(ds, tmp_path / "alias")
    before = snapshot(ds)
    proc = kidneyssl("locate", "--model", seg_checkpoint, "--input", ds / "images", "--out", tmp_path / "alias")
    assert proc.returncode == 2 and "outside the scans" in _one_error(proc, "locate")
    assert snapshot(ds) == before


def test_locate_never_replaces_labels_it_did_not_write(tmp_path, seg_checkpoint, kidneyssl):
    ds = _pairs_dataset(tmp_path / "DS")
    scans = tmp_path / "scans"
    scans.mkdir()
    for image in (ds / "images").iterdir():  # the same names, elsewhere
        (scans / image.name).write_bytes(image.read_bytes())
    before = snapshot(tmp_path)
    proc = kidneyssl("locate", "--model", seg_checkpoint, "--input", scans, "--out", ds)
    assert proc.returncode == 2
    line = _one_error(proc, "locate")
    assert "an existing file it did not write" in line and "(--force, another --out)" in line
    assert snapshot(tmp_path) == before


# -- item 2: evaluate --out onto a mask it reads, or onto a file it did not write ---------------------

@pytest.fixture
def scored(tmp_path):
    gt = _kits_dataset(tmp_path / "G")
    pred = tmp_path / "P"
    for case in sorted(gt.iterdir()):
        seg = case / "segmentation.nii.gz"
        (pred / f"prediction_{case.name[5:]}.nii.gz").parent.mkdir(exist_ok=True)
        (pred / f"prediction_{case.name[5:]}.nii.gz").write_bytes(seg.read_bytes())
    return gt, pred


@pytest.mark.parametrize("target, expected", [
    ("G/case_00000/segmentation.nii.gz", "found the input"),
    ("P/prediction_00001.nii.gz", "found the input"),
    ("G/case_00000/imaging.nii.gz", "an existing file it did not write"),  # not read, not evaluate's own
])
def test_evaluate_out_never_overwrites_a_mask_or_a_scan(tmp_path, scored, kidneyssl, target, expected):
    gt, pred = scored
    before = snapshot(tmp_path)
    proc = kidneyssl("evaluate", "--pred", pred, "--gt", gt, "--out", tmp_path / target)
    assert proc.returncode == 2
    assert expected in _one_error(proc, "evaluate")
    assert snapshot(tmp_path) == before


def test_evaluate_replaces_its_own_csv_and_with_force_another_file(tmp_path, scored, kidneyssl):
    gt, pred = scored
    inputs = snapshot(tmp_path)
    out = tmp_path / "scores.csv"
    assert kidneyssl("evaluate", "--pred", pred, "--gt", gt, "--out", out).returncode == 0
    assert kidneyssl("evaluate", "--pred", pred, "--gt", gt, "--out", out).returncode == 0  # its own: replaced
    notes = tmp_path / "notes.csv"
    notes.write_text("my notes\n")
    assert kidneyssl("evaluate", "--pred", pred, "--gt", gt, "--out", notes).returncode == 2
    assert notes.read_text() == "my notes\n"
    assert kidneyssl("evaluate", "--pred", pred, "--gt", gt, "--out", notes, "--force").returncode == 0
    assert notes.read_text().startswith("case_id")
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in inputs} == inputs  # no input touched


# -- the other writing verbs ------------------------------------------------------------------------------

def test_prepare_train_pretrain_and_experiment_refuse_outputs_around_inputs(tmp_path, tiny_cache, kidneyssl):
    data = _kits_dataset(tmp_path / "data", n=1)
    before = snapshot(tmp_path)
    proc = kidneyssl("prepare", "--data", data, "--out", tmp_path)
    assert proc.returncode == 2 and "does not contain one" in _one_error(proc, "prepare")
    proc = kidneyssl("experiment", "--data", data, "--out", data / "exp", "--dry-run")
    assert proc.returncode == 2 and f"a path inside the input folder {data}" in _one_error(proc, "experiment")
    proc = kidneyssl("train", "--cache", tiny_cache, "--out", tiny_cache.parent, "--force")
    assert proc.returncode == 2 and f"a folder holding the input {tiny_cache}" in _one_error(proc, "train")
    proc = kidneyssl("pretrain", "--cache", tiny_cache, "--out", tiny_cache, "--force")
    assert proc.returncode == 2 and "--out: expected a path outside --cache" in _one_error(proc, "pretrain")
    assert snapshot(tmp_path) == before


def test_train_force_never_empties_the_run_that_holds_its_init(tmp_path, tiny_cache, kidneyssl):
    run = tmp_path / "siamese"
    run.mkdir()
    (run / "best.pt").write_bytes(b"weights")
    (run / "split.json").write_text("{}")
    (run / "run.json").write_text('{"kind": "siamese", "status": "finished"}')
    before = snapshot(run)
    proc = kidneyssl("train", "--cache", tiny_cache, "--out", run, "--init", run / "best.pt",
                     "--split", run / "split.json", "--force")
    assert proc.returncode == 2 and "a folder holding the input" in _one_error(proc, "train")
    assert snapshot(run) == before


def test_check_outputs_relations(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    scan = inp / "a.nii.gz"
    scan.write_bytes(b"x")
    os.symlink(scan, tmp_path / "link.nii.gz")
    check_outputs([tmp_path / "out" / "a.nii.gz"], [scan])  # elsewhere: fine
    check_outputs([tmp_path / "link.nii.gz"], [scan])  # a link is replaced, its target left alone
    cases = [([scan], [scan], "found the input"),
             ([tmp_path], [scan], "found a folder holding the input"),
             ([inp / "b.csv"], [inp], "found a path inside the input folder"),
             ([tmp_path / "in_alias" / "b.csv"], [inp], "found a path inside the input folder")]
    os.symlink(inp, tmp_path / "in_alias")
    for outputs, inputs, found in cases:
        with pytest.raises(DataError, match=found):
            check_outputs(outputs, inputs, force=True)  # force never overrides it
    (tmp_path / "notes.csv").write_text("mine\n")
    with pytest.raises(DataError, match="an existing file it did not write"):
        check_outputs([tmp_path / "notes.csv"], [], is_own=lambda p: False)
    check_outputs([tmp_path / "notes.csv"], [], is_own=lambda p: False, force=True)
    check_outputs([tmp_path / "notes.csv"], [], is_own=lambda p: True)


def test_locate_killed_midway_is_rerun_without_force(tmp_path, seg_checkpoint, kidneyssl, monkeypatch):
    """Its files are recorded in locate.json before they are written, so a rerun knows them as its
    own; a locate.json that says running is not taken as a finished locate."""
    import kidneyssl.unlabeled.locate as locate
    from kidneyssl.unlabeled.located import read_locate_json

    ds = _pairs_dataset(tmp_path / "DS")
    out = tmp_path / "located"
    real, calls = locate._link_image, []

    def link_then_die(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the second scan
        return real(*args)

    monkeypatch.setattr(locate, "_link_image", link_then_die)
    assert kidneyssl("locate", "--model", seg_checkpoint, "--input", ds / "images", "--out", out).returncode == 130
    assert (out / "labels" / "scan_1.nii.gz").is_file()  # written just before the kill
    with pytest.raises(DataError, match="one that is running or was interrupted"):
        read_locate_json(out)
    monkeypatch.setattr(locate, "_link_image", real)
    proc = kidneyssl("locate", "--model", seg_checkpoint, "--input", ds / "images", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(read_locate_json(out)["cases"]) == ["scan_0", "scan_1"]
