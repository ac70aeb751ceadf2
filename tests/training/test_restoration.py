"""What MAE and Models Genesis share (``training/tasks/restoration.py``): seeded crops inside the
body, images only (no label file is ever opened), scans without masks, checkpoints that touched
training cases only, and what their weights give a segmentation network (encoder, or encoder and
decoder, never the output layer); ``kidneyssl pretrain --method mae`` end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyssl.cli.main import main
from kidneyssl.config import apply_overrides
from kidneyssl.data.cache import open_cache
from kidneyssl.data.subvolumes import BODY_THRESHOLD, SubvolumeDataset, crop_start
from kidneyssl.errors import DataError
from kidneyssl.io.checkpoint import load_checkpoint
from kidneyssl.training.distributed import init_distributed
from kidneyssl.training.split import load_split
from kidneyssl.unlabeled.scans import check_scans_held_out, find_scans

from .conftest import RESTORATION_OVERRIDES, TINY_OVERRIDES


def _keep(crop, rng, intensity):
    return crop, crop, np.ones_like(crop)


def test_crops_are_seeded_by_seed_epoch_and_index(tiny_cache: Path) -> None:
    cache = open_cache(tiny_cache)
    data = SubvolumeDataset(cache, cache.case_ids[:3], 6, seed=4, crop_size=(16, 32, 32), corrupt=_keep)
    first = [data[i]["id"] for i in range(6)]
    again = SubvolumeDataset(cache, cache.case_ids[:3], 6, seed=4, crop_size=(16, 32, 32), corrupt=_keep)
    assert [again[i]["id"] for i in range(6)] == first
    assert torch.equal(again[2]["input"], data[2]["input"]) and data[2]["input"].shape == (1, 16, 32, 32)
    data.set_epoch(1)
    assert [data[i]["id"] for i in range(6)] != first
    assert {i.split(":")[0] for i in first} <= set(cache.case_ids[:3])


def test_crop_centres_lie_inside_the_body(tiny_cache: Path) -> None:
    cache = open_cache(tiny_cache)
    data = SubvolumeDataset(cache, cache.case_ids, 20, seed=0, crop_size=(16, 32, 32), corrupt=_keep)
    for i in range(20):
        case_id, start, crop, intensity, _ = data.draw(i)
        case = cache.load(case_id, label=False)
        _, centres, _ = data._case(case_id)
        unit = intensity.to_unit(np.asarray(case.image)[tuple(centres.T)])
        assert np.all(unit >= BODY_THRESHOLD)  # every candidate centre is body, not air or fat
        assert all(0 <= s <= n - k for s, k, n in zip(start, (16, 32, 32), case.image.shape))
    assert crop_start((2, 50, 50), (16, 32, 32), (40, 64, 64)) == (0, 32, 32)  # moved inside, still holds it
    assert crop_start((5, 5, 5), (16, 32, 32), (8, 64, 64)) == (-4, 0, 0)  # too small: padded on both sides


@pytest.fixture(scope="module")
def raw_scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two scans without masks in a flat folder, each beside a mask file that must be left out."""
    from kidneyssl.phantoms import write_dataset

    phantoms = tmp_path_factory.mktemp("raw_phantoms")
    write_dataset(phantoms, 2, seed=23, resolution="demo", workers=1)
    out = tmp_path_factory.mktemp("raw_scans")
    for name, case in zip(("scan_a", "scan_b"), sorted(phantoms.glob("case_*"))):
        os.symlink(case / "imaging.nii.gz", out / f"{name}.nii.gz")
        os.symlink(case / "segmentation.nii.gz", out / f"{name}_seg.nii.gz")
    return out


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path, raw_scans: Path) -> tuple[Path, Path, str]:
    """``kidneyssl pretrain --method mae --unlabeled RAW`` on a copy of the tiny cache whose label
    files are deleted: (run folder, label-less cache, stderr)."""
    root = tmp_path_factory.mktemp("mae")
    cache = root / "cache"
    shutil.copytree(tiny_cache, cache)
    removed = [p.unlink() or p for p in cache.glob("*/label.npy")]
    assert removed
    sets = [a for item in TINY_OVERRIDES + RESTORATION_OVERRIDES for a in ("--set", item)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["pretrain", "--method", "mae", "--cache", str(cache), "--out", str(root / "run"),
                   "--unlabeled", str(raw_scans), "--preset", "demo", *sets, "--device", "cpu", "--yes", "--no-probe"])
    assert rc == 0, err.getvalue()[-3000:]
    return root / "run", cache, err.getvalue()


def test_mae_pretrains_from_images_alone(mae_run) -> None:
    run, cache, _ = mae_run
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == "mae" and info["status"] == "finished" and info["kind"] == "pretrain"
    assert not list(cache.glob("*/label.npy"))  # trained with every label file gone
    assert info["settings"]["crop_size"] == [16, 32, 32] and info["settings"]["mask_ratio"] == 0.75
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(r["optimizer_steps"], r["samples_seen"]) for r in history] == [(4, 8), (8, 16)]
    assert all(np.isfinite(r["val_loss"]) for r in history)


def test_scans_without_masks_join_the_training_crops(mae_run) -> None:
    run, _, _ = mae_run
    unl = json.loads((run / "run.json").read_text())["unlabeled"]
    assert unl["cases"] == ["scan_a", "scan_b"] and unl["used"] == 2 and unl["scans"] == 2  # masks left out
    prepared = open_cache(run / "unlabeled_cache")
    assert all(not prepared.load(c, label=False).meta["has_label"] for c in prepared.case_ids)
    assert not list((run / "unlabeled_cache").glob("*/label.npy"))


def test_checkpoints_touched_training_cases_only(mae_run) -> None:
    run, _, _ = mae_run
    split = load_split(run / "split.json")
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run / name, kind="pretrain")
        touched = set(ckpt["touched_cases"])
        annotated = {c for c in touched if not c.startswith("unlabeled/")}
        assert annotated and annotated <= set(split.train) and not touched & split.held_out
        assert touched - annotated == {"unlabeled/scan_a", "unlabeled/scan_b"}  # it says which scans it read
        assert ckpt["method"] == "mae" and ckpt["transfer"] == {"encoder": ["encoder."], "decoder": ["decoder.ups."]}


def test_extending_a_run_keeps_its_method_and_scans(mae_run) -> None:
    run, _, _ = mae_run
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["pretrain", "--out", str(run), "--extend-epochs", "1", "--device", "cpu", "--yes", "--no-probe"])
    assert rc == 0, err.getvalue()[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == "mae" and info["epochs"] == 3 and info["unlabeled"]["used"] == 2
    assert "mae epoch 3/3" in err.getvalue()


@pytest.mark.parametrize("parts", ["encoder", "encoder+decoder"])
def test_fine_tuning_loads_the_chosen_parts_and_never_the_output_layer(mae_run, tiny_cache: Path, tiny_cfg,
                                                                       parts: str) -> None:
    from kidneyssl.training.tasks.segmentation import SegmentationTask

    run, _, _ = mae_run
    task = SegmentationTask(tiny_cache, init=str(run / "best.pt"), init_parts=parts)
    task.setup(apply_overrides(tiny_cfg, RESTORATION_OVERRIDES), None, None, init_distributed("cpu"))
    model = task.build_model()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = task.initialize(model)
    assert report is not None and report["method"] == "mae" and report["parts"] == parts
    pretrained = load_checkpoint(run / "best.pt")["model_state"]
    state = model.state_dict()
    loaded = {k for k in state if k in pretrained and torch.equal(state[k], pretrained[k]) and not torch.equal(
        fresh[k], pretrained[k])}
    decoder = {k for k in state if k.startswith("decoder.ups.") and k in pretrained}
    encoder = {k for k in state if k.startswith("encoder.")}
    assert {k for k in encoder if not torch.equal(fresh[k], pretrained[k])} <= loaded
    assert all(torch.equal(state[k], pretrained[k]) for k in encoder)
    if parts == "encoder":
        assert not loaded & decoder and report["prefixes"] == ["encoder."]
        assert report["loaded"] == len(encoder)
    else:
        assert decoder and all(torch.equal(state[k], pretrained[k]) for k in decoder)
        assert report["prefixes"] == ["encoder.", "decoder.ups."] and report["loaded"] == len(encoder) + len(decoder)
    head = [k for k in state if k.startswith("decoder.head.")]
    assert head and all(torch.equal(state[k], fresh[k]) for k in head)  # the output layer stays fresh
    assert not any(k.startswith("reconstruction.") and k in pretrained for k in state)


def test_scans_of_held_out_cases_are_refused(phantom_data: Path, tmp_path: Path) -> None:
    held_out = {"case_00001": phantom_data / "case_00001" / "imaging.nii.gz"}
    scans = [case for case, _ in find_scans(phantom_data)]  # the annotated dataset itself
    assert [c.segmentation for c in scans] == [None] * len(scans)
    with pytest.raises(DataError, match="held-out case id"):
        check_scans_held_out(scans, held_out, phantom_data)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(held_out["case_00001"], renamed / "another_name.nii.gz")  # same content, another name
    with pytest.raises(DataError, match="the image of held-out case case_00001"):
        check_scans_held_out([c for c, _ in find_scans(renamed)], held_out, renamed)


def test_dataset_folders_give_their_images_only(phantom_data: Path, tmp_path: Path) -> None:
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for case in ("case_00000", "case_00002"):
        os.symlink(phantom_data / case / "imaging.nii.gz", tmp_path / "images" / f"{case}.nii.gz")
        os.symlink(phantom_data / case / "segmentation.nii.gz", tmp_path / "labels" / f"{case}.nii.gz")
    found = find_scans(tmp_path)
    assert [(c.case_id, c.imaging.parent.name, c.segmentation) for c, _ in found] == [
        ("case_00000", "images", None), ("case_00002", "images", None)]


def test_reader_processes_make_the_same_batches(tiny_cache: Path, tiny_cfg) -> None:
    """Batches are a pure function of (seed, epoch, index): a reader process gives what the
    training process gives, Genesis' random transforms included."""
    from kidneyssl.training.tasks.base import BatchLayout
    from kidneyssl.training.tasks.genesis import GenesisTask

    ctx = init_distributed("cpu")
    batches = []
    for workers in (0, 1):
        cfg = apply_overrides(tiny_cfg, RESTORATION_OVERRIDES + [f"train.num_workers={workers}"])
        task = GenesisTask(tiny_cache)
        task.setup(cfg, None, None, ctx)
        items, n = task.epoch_items(1, ctx, BatchLayout(2, 1, 1))
        batches.append(list(items))
        assert n == len(batches[-1]) == 4
    for a, b in zip(*batches):
        assert all(torch.equal(a[k], b[k]) for k in ("input", "target", "weight"))
    assert not torch.equal(batches[0][0]["input"], batches[0][0]["target"])
