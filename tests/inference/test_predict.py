"""predict_volume / predict_path / load_model: geometry in any orientation, names, bad inputs,
incompatible checkpoints."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from kidneyssl.errors import CheckpointError
from kidneyssl.inference.predict import load_model, predict_path, predict_volume
from kidneyssl.io.geometry import Geometry, Volume, to_canonical


def dice(a, b) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def save_nifti(array, affine, path):
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def assert_same_geometry(out_path, in_path):
    """Shape and affine of ``out_path`` equal ``in_path``'s, read with nibabel AND SimpleITK."""
    a, b = nib.load(str(out_path)), nib.load(str(in_path))
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    assert a.get_data_dtype() == np.uint8
    sa, sb = sitk.ReadImage(str(out_path)), sitk.ReadImage(str(in_path))
    assert sa.GetSize() == sb.GetSize()
    np.testing.assert_allclose(sa.GetSpacing(), sb.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(sa.GetOrigin(), sb.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(sa.GetDirection(), sb.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("axcodes", [("I", "P", "L"), ("R", "A", "S"), ("L", "P", "S")])
def test_predict_volume_any_orientation(box_model, small_cfg, make_kidney_scan, reorient_fn, axcodes):
    img, gt, aff = make_kidney_scan()
    arr, aff2 = reorient_fn(img, aff, axcodes)
    gt2, _ = reorient_fn(gt, aff, axcodes)
    vol = Volume(arr, Geometry(aff2, arr.shape))
    res = predict_volume(box_model, vol, small_cfg)
    assert res.mask.dtype == np.uint8 and res.mask.shape == arr.shape
    assert res.geometry.same_as(vol.geometry)
    assert dice(res.mask, gt2) > 0.85
    assert set(res.timings) == {"preprocess", "infer", "postprocess", "restore"}
    assert res.strategy == "halves"
    # the same physical mask whatever the storage orientation
    canon, _ = to_canonical(Volume(res.mask, res.geometry))
    ref = predict_volume(box_model, Volume(img, Geometry(aff, img.shape)), small_cfg).mask
    np.testing.assert_array_equal(canon.array, ref)


def test_largest_component_per_side_removes_a_speck(box_model, small_cfg, make_kidney_scan):
    img, gt, aff = make_kidney_scan(speck=True)
    vol = Volume(img, Geometry(aff, img.shape))
    kept = predict_volume(box_model, vol, small_cfg).mask
    off = dataclasses.replace(small_cfg, inference=dataclasses.replace(small_cfg.inference,
                                                                       largest_component=False))
    raw = predict_volume(box_model, vol, off).mask
    from scipy import ndimage

    assert ndimage.label(raw)[1] == 3 and ndimage.label(kept)[1] == 2
    assert dice(kept, gt) > dice(raw, gt)
    # kept kidneys are identical voxel for voxel: the filter only removes
    assert np.all(kept <= raw) and (raw - kept).sum() < 0.1 * kept.sum()


def test_probabilities_and_sliding_window(box_model, small_cfg, make_kidney_scan):
    img, gt, aff = make_kidney_scan()
    vol = Volume(img, Geometry(aff, img.shape))
    halves = predict_volume(box_model, vol, small_cfg, keep_probabilities=True)
    sw_cfg = dataclasses.replace(small_cfg, inference=dataclasses.replace(
        small_cfg.inference, sw_roi_size=(16, 16, 32), sw_overlap=0.5))
    sliding = predict_volume(box_model, vol, sw_cfg, strategy="sliding", keep_probabilities=True)
    assert sliding.strategy == "sliding"
    p = halves.probabilities
    assert p.dtype == np.float32 and p.shape == img.shape and 0.0 <= p.min() and p.max() <= 1.0
    assert dice(sliding.mask, halves.mask) > 0.99
    np.testing.assert_array_equal(halves.mask, (p >= 0.5).astype(np.uint8))


# --- with a real checkpoint -------------------------------------------------------------------


def test_load_model_drops_reconstruction_branch(demo_checkpoint):
    engine, cfg = load_model(demo_checkpoint)
    model = engine.module
    assert not model.training and model.reconstruction is None
    assert cfg.preprocess.spacing_mm == (4.0, 3.0, 3.0)
    with torch.inference_mode():
        out = model(torch.zeros(1, 1, 16, 32, 32))
    assert out.logits.shape == (1, 1, 16, 32, 32)


def test_incompatible_checkpoints_raise_clear_errors(demo_checkpoint, tmp_path):
    payload = torch.load(demo_checkpoint, weights_only=False)
    old = dict(payload, format_version=99)
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_model(tmp_path / "old.pt")
    # the config says growth 8, the weights were made for growth 4
    from kidneyssl.config import ModelConfig
    from kidneyssl.models import build_segmentation_model

    other = build_segmentation_model(ModelConfig(init_features=8, growth_rate=4, norm_groups=4))
    torch.save(dict(payload, model_state=other.state_dict()), tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch: encoder\..*checkpoint \("):
        load_model(tmp_path / "arch.pt")
    cfg = dict(payload["config"], model=dict(payload["config"]["model"], attention=True))
    torch.save(dict(payload, config=cfg), tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="attention"):
        load_model(tmp_path / "newer.pt")
    torch.save(dict(payload, kind="siamese"), tmp_path / "siamese.pt")
    with pytest.raises(CheckpointError, match="segmentation"):
        load_model(tmp_path / "siamese.pt")


@pytest.mark.parametrize("axcodes", [("I", "P", "L"), ("R", "A", "S"), ("L", "P", "S")])
def test_predict_path_writes_input_geometry(demo_checkpoint, make_kidney_scan, reorient_fn, tmp_path, axcodes):
    img, _, aff = make_kidney_scan(shape=(30, 48, 56))
    arr, aff2 = reorient_fn(img, aff, axcodes)
    src = save_nifti(arr, aff2, tmp_path / "scan.nii.gz")
    summary = predict_path(demo_checkpoint, src, tmp_path / "out", save_probabilities=True)
    assert summary.ok and list(summary.written) == ["scan.nii.gz"]
    out = tmp_path / "out" / "prediction_scan.nii.gz"
    assert summary.written["scan.nii.gz"] == out
    assert_same_geometry(out, src)
    assert set(np.unique(nib.load(str(out)).get_fdata())) <= {0.0, 1.0}
    prob = nib.load(str(tmp_path / "out" / "probability_scan.nii.gz"))
    assert prob.shape == arr.shape and prob.get_data_dtype() == np.float32
    np.testing.assert_allclose(prob.affine, aff2, atol=1e-4)
    timings = json.loads((tmp_path / "out" / "predict_summary.json").read_text())["timings_s"]["scan.nii.gz"]
    assert {"read", "preprocess", "infer", "restore", "write"} <= set(timings)


def test_kits_layout_corrupt_and_missing_cases_reported(demo_checkpoint, make_kidney_scan, tmp_path):
    img, _, aff = make_kidney_scan(shape=(30, 48, 56))
    data = tmp_path / "kits"
    for cid in ("00000", "00002"):
        (data / f"case_{cid}").mkdir(parents=True)
        save_nifti(img, aff, data / f"case_{cid}" / "imaging.nii.gz")
    (data / "case_00001").mkdir()  # no imaging
    (data / "case_00003").mkdir()
    good = (data / "case_00000" / "imaging.nii.gz").read_bytes()
    (data / "case_00003" / "imaging.nii.gz").write_bytes(good[: len(good) // 2])  # truncated gzip
    out = tmp_path / "pred"
    summary = predict_path(demo_checkpoint, data, out, probability_format="uint8", save_probabilities=True)
    assert sorted(summary.written) == ["case_00000", "case_00002"]
    assert sorted(summary.failed) == ["case_00001", "case_00003"]
    assert "case_00001" in summary.failed["case_00001"] and "imaging.nii.gz" in summary.failed["case_00001"]
    assert "case_00003" in summary.failed["case_00003"]
    for cid in ("00000", "00002"):
        assert_same_geometry(out / f"prediction_{cid}.nii.gz", data / f"case_{cid}" / "imaging.nii.gz")
        assert nib.load(str(out / f"probability_{cid}.nii.gz")).get_data_dtype() == np.uint8
    assert not (out / "prediction_00001.nii.gz").exists() and not (out / "prediction_00003.nii.gz").exists()
    saved = json.loads((out / "predict_summary.json").read_text())
    assert sorted(saved["failed"]) == ["case_00001", "case_00003"]


def test_real_ras_ct_geometry(demo_checkpoint, real_ct_dir, tmp_path):
    src = real_ct_dir / "example_ct_sm.nii.gz"
    summary = predict_path(demo_checkpoint, src, tmp_path)
    assert summary.ok
    assert_same_geometry(tmp_path / "prediction_example_ct_sm.nii.gz", src)


def test_predict_says_its_plan_once_and_each_case_only_when_verbose(demo_checkpoint, make_kidney_scan, tmp_path):
    """`kidneyssl predict` on a folder of 3 scans: the strategy rule once at the start, and no
    per-case "half volume ..." line unless -v."""
    import subprocess
    import sys

    folder = tmp_path / "scans"
    folder.mkdir()
    for seed in range(3):
        img, _, aff = make_kidney_scan(shape=(30, 48, 56), seed=seed)
        save_nifti(img, aff, folder / f"scan{seed}.nii.gz")

    def predict(*flags: str) -> str:
        cmd = [sys.executable, "-m", "kidneyssl.cli.main", "predict", *flags, "--model", str(demo_checkpoint),
               "--input", str(folder), "--out", str(tmp_path / "out")]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr

    default = predict()
    assert "half volume" not in default
    assert default.count("strategy: halves while each fits") == 1
    # the precision once, and once more only if the bf16 mask check turned it to fp32
    assert default.count("precision") == 1 + default.count("precision fp32 from here on")
    assert "predicted 3 of 3 scans" in default
    verbose = predict("-v")
    assert verbose.count("half volume") == 3


def test_predict_path_holds_no_scan_voxels_through_inference(demo_checkpoint, make_kidney_scan, tmp_path,
                                                             monkeypatch):
    """Only the scan's grid is kept once it is preprocessed: its voxels (150-300 MB for a KiTS
    scan) are freed before the network runs, whose activations make predict's peak memory."""
    import gc
    import weakref

    import kidneyssl.inference.predict as predict_module
    import kidneyssl.inference.segment as segment_module

    img, _, aff = make_kidney_scan(shape=(30, 48, 56))
    src = save_nifti(img, aff, tmp_path / "scan.nii.gz")
    voxels: list[weakref.ref] = []
    alive_at_inference: list[bool] = []
    real_read, real_segment = predict_module.read_input, segment_module.segment_image

    def read_input(*args, **kwargs):
        volume = real_read(*args, **kwargs)
        voxels.append(weakref.ref(volume.array))
        return volume

    def segment_image(*args, **kwargs):
        gc.collect()
        alive_at_inference.append(voxels[-1]() is not None)
        return real_segment(*args, **kwargs)

    monkeypatch.setattr(predict_module, "read_input", read_input)
    monkeypatch.setattr(segment_module, "segment_image", segment_image)
    summary = predict_path(demo_checkpoint, src, tmp_path / "out")
    assert summary.ok and alive_at_inference == [False]
    assert_same_geometry(tmp_path / "out" / "prediction_scan.nii.gz", src)


_PREDICT_THEN_ALLOCATE = r"""
import sys, kidneyssl.system
kidneyssl.system.free_pages_go_to_hypervisor = lambda *a: sys.argv[1] == "reporting"
from kidneyssl.cli.main import main
main(["predict", "--model", sys.argv[2], "--input", sys.argv[3], "--out", sys.argv[4]])
import torch
big = torch.ones(64 << 20)  # 256 MB, after predict: huge or not as torch decided at its first tensor
print(sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages")))
"""


def _kernel_gives_huge_pages_on_request() -> bool:
    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


@pytest.mark.skipif(not _kernel_gives_huge_pages_on_request(), reason="transparent huge pages off or not Linux")
def test_predict_settles_huge_pages_before_torch_decides(demo_checkpoint, make_kidney_scan, tmp_path):
    """`kidneyssl predict` turns huge pages off where free pages go to the hypervisor before torch
    reads the variable (at its first tensor), and leaves them on elsewhere."""
    import os
    import subprocess
    import sys

    img, _, aff = make_kidney_scan(shape=(30, 48, 56))
    scan = save_nifti(img, aff, tmp_path / "scan.nii.gz")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    def huge_kb(machine: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PREDICT_THEN_ALLOCATE, machine, str(demo_checkpoint), str(scan),
                              str(tmp_path / machine)], env=env, capture_output=True, text=True, check=True)
        assert (tmp_path / machine / "prediction_scan.nii.gz").is_file(), out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    assert huge_kb("reporting") == 0
    assert huge_kb("bare") > 0
