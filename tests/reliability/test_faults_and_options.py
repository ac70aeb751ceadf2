"""Issue 20, items 13 and 14: a full disk is reported naming the file and the folder, and a case
reported failed leaves no file under its final name; a bogus device or a NaN/inf config value is
one line (no traceback)."""

from __future__ import annotations

import errno
import json

import nibabel as nib
import pytest

from kidneyssl.io.paths import is_temp_name

from .conftest import TRAIN_SETS, ct_scan, error_lines, save_nifti


def _one_error(proc, verb: str) -> str:
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"kidneyssl {verb}: error: "), lines[0]
    return lines[0]


def _full_disk_for(monkeypatch, prefix: str):
    """``nibabel.save`` fails like a full disk (an OSError naming no file) for files named ``prefix*``."""
    real = nib.save

    def save(image, filename, *args, **kwargs):
        if str(filename).rsplit("/", 1)[-1].startswith(prefix):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(image, filename, *args, **kwargs)

    monkeypatch.setattr(nib, "save", save)


@pytest.fixture
def scans(tmp_path):
    for name in ("a", "b"):
        arr, affine = ct_scan(seed=ord(name))
        save_nifti(arr, affine, tmp_path / "scans" / f"{name}.nii.gz")
    return tmp_path / "scans"


@pytest.mark.parametrize("prefix", ["probability_", "prediction_"])
def test_predict_on_a_full_disk_names_file_and_folder_and_leaves_no_final_file(
        tmp_path, scans, seg_checkpoint, kidneyssl, monkeypatch, prefix):
    out = tmp_path / "out"
    out.mkdir()
    (out / "prediction_a.nii.gz").write_bytes(b"an earlier run's mask")  # must not survive a failed case
    _full_disk_for(monkeypatch, prefix)
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", scans, "--out", out, "--save-probabilities")
    assert proc.returncode == 1
    for name in ("a", "b"):
        assert f"{out / (prefix + name)}.nii.gz: No space left on device (free space in {out} or write elsewhere)" \
            in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["predict_summary.json"]  # no mask, no temporary file
    summary = json.loads((out / "predict_summary.json").read_text())
    assert sorted(summary["failed"]) == ["a.nii.gz", "b.nii.gz"] and summary["written"] == {}


def test_locate_on_a_full_disk_leaves_no_label_of_a_failed_case(tmp_path, scans, seg_checkpoint, kidneyssl,
                                                                monkeypatch):
    import kidneyssl.unlabeled.locate as locate

    def link(source, target, volume, kind):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(locate, "_link_image", link)
    out = tmp_path / "located"
    proc = kidneyssl("locate", "--model", seg_checkpoint, "--input", scans, "--out", out)
    assert proc.returncode == 1
    assert f"{out / 'images' / 'a.nii.gz'}: No space left on device (free space in {out / 'images'}" in proc.stderr
    assert not list((out / "labels").glob("*.nii.gz")) and not list((out / "images").glob("*"))
    assert sorted(json.loads((out / "locate.json").read_text())["failed"]) == ["a", "b"]


def test_a_full_disk_when_writing_the_summary_is_one_line(tmp_path, scans, seg_checkpoint, kidneyssl, monkeypatch):
    import kidneyssl.io.atomic as atomic

    real = atomic.atomic_write_text

    def write_text(target, text):
        if str(target).endswith("predict_summary.json"):
            with atomic.atomic_path(target) as tmp:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))  # ours: a hidden temp name
        return real(target, text)

    monkeypatch.setattr(atomic, "atomic_write_text", write_text)
    out = tmp_path / "out"
    proc = kidneyssl("predict", "--model", seg_checkpoint, "--input", scans, "--out", out)
    assert proc.returncode == 2
    assert _one_error(proc, "predict") == (f"kidneyssl predict: error: {out / 'predict_summary.json'}: No space left "
                                           f"on device (free space in {out} or write elsewhere)")
    assert not [p for p in out.iterdir() if is_temp_name(p.name)]


@pytest.mark.parametrize("verb, extra", [
    ("predict", ["--device", "bogus"]), ("predict", ["--sw-device", "bogus"]), ("locate", ["--device", "bogus"]),
])
def test_bogus_devices_are_one_line(tmp_path, scans, seg_checkpoint, kidneyssl, verb, extra):
    proc = kidneyssl(verb, "--model", seg_checkpoint, "--input", scans, "--out", tmp_path / "out", *extra)
    assert proc.returncode == 2
    assert "'bogus' is not a device; use auto, cpu, cuda or cuda:N (--device cpu)" in _one_error(proc, verb)


def test_bogus_device_for_train_is_one_line(tmp_path, tiny_cache, kidneyssl):
    proc = kidneyssl("train", "--cache", tiny_cache, "--out", tmp_path / "run", "--device", "bogus", *TRAIN_SETS)
    assert proc.returncode == 2
    assert "'bogus' is not a device" in _one_error(proc, "train")


@pytest.mark.parametrize("override", ["preprocess.spacing_mm=[8, .nan, 4]", "train.lr=.inf",
                                      "inference.half_context_mm=-.inf", "pretrain.margin=.NaN"])
def test_nan_and_inf_config_values_are_refused(tmp_path, kidneyssl, override):
    proc = kidneyssl("prepare", "--data", tmp_path, "--out", tmp_path / "cache", "--preset", "demo", "--set", override)
    assert proc.returncode == 2
    assert "expected a finite number, got" in _one_error(proc, "prepare")


def test_nan_in_a_json_config_file_is_refused(tmp_path):
    from kidneyssl.config import ConfigError, load_config

    path = tmp_path / "config.json"
    path.write_text('{"preprocess": {"spacing_mm": [8, NaN, 4]}}')
    with pytest.raises(ConfigError, match=r"preprocess.spacing_mm\[1\]: expected a finite number, got nan"):
        load_config(path)
