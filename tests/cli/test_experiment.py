"""``kidneyssl experiment``: the MwS vs MwoS comparison end to end on tiny phantoms, and the
procedure a reviewer relies on: one inference for Table 1 and ``predict``, no label at inference,
no held-out case touched by (pre)training, several seeds with intervals."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from kidneyssl.cli.main import main

TINY = ["--preset", "demo",
        "--set", "preprocess.spacing_mm=[12.0,6.0,6.0]", "--set", "pretrain.crop_size=[16,32,32]", "--set", "train.crop_size=null",
        "--set", "model.init_features=4", "--set", "model.growth_rate=4", "--set", "model.norm_groups=2",
        "--set", "model.embedding_dim=8", "--set", "train.val_fraction=0.25",
        "--set", "protocol.test_fraction=0.25", "--set", "inference.half_context_mm=16",
        "--set", "pretrain.epochs=1", "--set", "pretrain.pairs_per_epoch=8", "--set", "pretrain.val_pairs=4",
        "--set", "pretrain.batch_size=2", "--set", "train.epochs=1",
        "--seeds", "0", "1", "--proxy-variants", "region", "masked"]
MODELS = ("MwS-region", "MwS-masked", "MwoS")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    from kidneyssl.phantoms import write_dataset

    root = tmp_path_factory.mktemp("experiment")
    write_dataset(root / "data", 8, seed=2, resolution="demo", workers=2)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["experiment", "-q", "--data", str(root / "data"), "--out", str(root / "run"), *TINY,
                   "--device", "cpu"])
    return root, rc, buf.getvalue()


def _rows(run: Path, seed: int, model: str) -> list[dict]:
    return json.loads((run / "eval" / f"seed_{seed}" / f"{model}.json").read_text())


@pytest.fixture(scope="module")
def segmenting_checkpoint(experiment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The experiment's MwoS of seed 0 with its output bias shifted so that ~30 % of a test case's
    voxels are foreground: a tiny model trained for one epoch predicts nothing, and comparing
    empty masks would prove nothing. Same architecture, config and format as the real one."""
    import numpy as np
    import torch

    from kidneyssl.data.cache import open_cache
    from kidneyssl.io.checkpoint import load_checkpoint, save_checkpoint
    from kidneyssl.models.transfer import load_model

    root, rc, _ = experiment
    assert rc == 0
    run = root / "run"
    source = run / "seed_0" / "mwos" / "last.pt"
    model, _ = load_model(source)
    case = open_cache(run / "cache").load(json.loads((run / "split.json").read_text())["test"][0])
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.array(case.image, dtype=np.float32))[None, None]).logits
    shift = float(torch.quantile(logits.flatten(), 0.7))
    payload = load_checkpoint(source)
    state = dict(payload.pop("model_state"))
    state["decoder.head.2.bias"] = state["decoder.head.2.bias"] - shift
    out = tmp_path_factory.mktemp("segmenting") / "seg.pt"
    save_checkpoint(out, kind="segmentation", config=payload.pop("config"), model_state=state,
                    **{k: v for k, v in payload.items() if k not in ("format_version", "kidneyssl_version", "kind")})
    return out


def test_experiment_writes_the_report(experiment) -> None:
    root, rc, out = experiment
    assert rc == 0, out
    run = root / "run"
    report = run / "report"
    for name in ("table1.csv", "table1.md", "fig4_overlays.png", "fig5_dice_curves.png", "proxy_accuracy.png",
                 "differences.json", "report.md", "report.html"):
        assert (report / name).stat().st_size > 0, name
    with (report / "table1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"model", "metric", "mean", "sd", "n", "n_missed", "n_cases"} <= set(rows[0])
    assert {(r["model"], r["metric"]) for r in rows} == {
        (f"{m} ({p})", k) for m in MODELS for p in ("val", "test")
        for k in ("dice", "hd_mm", "hd95_mm", "bl_pct", "nhd")}
    assert all(r["n_cases"] == "4" for r in rows)  # 2 cases x 2 seeds per part
    text = (report / "report.md").read_text()
    for needle in ("seed 0", "seed 1", "Table 1: test", "Table 1: validation", "t-interval over the case means",
                   "too few seeds/cases for a conclusion (n = 2 cases x 2 seeds",
                   "MwS-region − MwoS", "MwS-masked − MwoS", "epochs to 90 %", "proxy validation",
                   "cannot be reproduced"):
        assert needle in text, needle
    diffs = json.loads((report / "differences.json").read_text())["paired"]
    dice_test = [d for d in diffs if d["metric"] == "dice" and d["part"] == "test"]
    assert {d["model"] for d in dice_test} == {"MwS-region", "MwS-masked"}
    for d in dice_test:
        assert d["n_pairs"] == 4 and d["n_seeds"] == 2 and d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert "Dice (original grid)" in out and "95% t-interval over case means, 2 cases x 2 seed(s)" in out
    assert "too few seeds/cases for a conclusion" in out and "better than" not in out
    assert (run / "config.yaml").is_file()


def test_runs_share_one_split_and_never_touch_held_out_cases(experiment) -> None:
    import torch

    root, rc, _ = experiment
    assert rc == 0
    run = root / "run"
    split = json.loads((run / "split.json").read_text())
    held_out = set(split["val"]) | set(split["test"])
    assert len(split["val"]) == 2 and len(split["test"]) == 2 and len(split["train"]) == 4
    assert not held_out & set(split["train"])
    for seed in (0, 1):
        for sub in ("pretrain_region", "pretrain_masked", "mws_region", "mws_masked", "mwos"):
            assert json.loads((run / f"seed_{seed}" / sub / "split.json").read_text())["val"] == split["val"]
        for variant in ("region", "masked"):
            folder = run / f"seed_{seed}" / f"pretrain_{variant}"
            ckpt = torch.load(folder / "best.pt", weights_only=False)
            touched = set(ckpt["touched_cases"])
            assert touched and touched <= set(split["train"]) and not touched & held_out
            assert ckpt["config"]["pretrain"]["proxy_input"] == variant
            info = json.loads((folder / "run.json").read_text())
            assert set(info["proxy_val_cases"]) < set(split["train"])  # proxy validation: training cases
            mws = json.loads((run / f"seed_{seed}" / f"mws_{variant}" / "run.json").read_text())
            assert mws["init"].endswith(f"pretrain_{variant}/best.pt")
            assert mws["init_report"]["held_out_cases_touched"] == []
        mwos = json.loads((run / f"seed_{seed}" / "mwos" / "run.json").read_text())
        assert mwos["init"] == "scratch" and mwos["pos_weight"] > 1.0  # weighted BCE, computed


def test_table1_equals_predict_then_evaluate(experiment, segmenting_checkpoint: Path, tmp_path: Path) -> None:
    """One inference procedure: the experiment's per-case Dice of a test case is what `predict` +
    `evaluate` give for the same checkpoint."""
    from kidneyssl.data.cache import open_cache
    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.workflows.experiment import evaluate_model

    root, rc, _ = experiment
    assert rc == 0
    run = root / "run"
    split = json.loads((run / "split.json").read_text())
    # the experiment's own rows of a real checkpoint are scored the same way (exact equality below)
    data = tmp_path / "test_cases"
    for cid in split["test"]:
        shutil.copytree(root / "data" / cid, data / cid)
    gt = {cid: root / "data" / cid / "segmentation.nii.gz" for cid in split["test"]}
    for ckpt in (run / "seed_1" / "mws_region" / "last.pt", segmenting_checkpoint):
        rows, _ = evaluate_model(ckpt, open_cache(run / "cache"), split["test"], gt, init_distributed("cpu"))
        pred = tmp_path / f"pred_{ckpt.parent.name}"
        assert main(["predict", "-q", "--model", str(ckpt), "--input", str(data), "--out", str(pred),
                     "--device", "cpu"]) == 0
        assert main(["evaluate", "-q", "--pred", str(pred), "--gt", str(data), "--out", str(pred / "eval.csv")]) == 0
        with (pred / "eval.csv").open() as fh:
            evaluated = {r["case_id"]: float(r["dice"]) for r in csv.DictReader(fh)}
        table1 = {r["case_id"]: r["dice"] for r in rows}
        assert set(table1) == set(split["test"]) == set(evaluated)
        for cid in table1:
            assert abs(table1[cid] - evaluated[cid]) < 1e-6, cid
    assert rows == [r for r in rows if 0.0 < r["dice"] < 1.0], "the shifted model must segment something"
    mws_rows = [{k: v for k, v in r.items() if k not in ("seed", "model", "part")}
                for r in _rows(run, 1, "MwS-region") if r["part"] == "test"]
    first, _ = evaluate_model(run / "seed_1" / "mws_region" / "last.pt", open_cache(run / "cache"), split["test"],
                              gt, init_distributed("cpu"))
    assert json.dumps(mws_rows, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_scoring_does_not_read_the_cached_label(experiment, segmenting_checkpoint: Path, tmp_path: Path) -> None:
    """The prediction that is scored cannot change when the cached labels are deleted."""
    from kidneyssl.data.cache import open_cache
    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.workflows.experiment import evaluate_model

    root, rc, _ = experiment
    assert rc == 0
    run = root / "run"
    split = json.loads((run / "split.json").read_text())
    cache_copy = tmp_path / "cache"
    shutil.copytree(run / "cache", cache_copy)
    for cid in split["test"]:
        (cache_copy / cid / "label.npy").unlink()
        meta_path = cache_copy / cid / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta.update(has_label=False, split_x=-1, kidneys={})  # no label, no label-derived plane
        meta_path.write_text(json.dumps(meta))
    gt = {cid: root / "data" / cid / "segmentation.nii.gz" for cid in split["test"]}
    ctx = init_distributed("cpu")
    with_label, masks_a = evaluate_model(segmenting_checkpoint, open_cache(run / "cache"), split["test"], gt, ctx,
                                         split["test"])
    without, masks_b = evaluate_model(segmenting_checkpoint, open_cache(cache_copy), split["test"], gt, ctx,
                                      split["test"])
    assert json.dumps(with_label, sort_keys=True) == json.dumps(without, sort_keys=True)  # NaN-safe equality
    for cid in split["test"]:
        assert masks_a[cid].any() and (masks_a[cid] == masks_b[cid]).all()


def test_rerun_skips_finished_stages_and_more_seeds_continue(experiment) -> None:
    root, rc, _ = experiment
    run = root / "run"
    before = {p: p.stat().st_mtime_ns for p in (run / "seed_0" / "mws_region" / "last.pt",
                                                 run / "seed_1" / "pretrain_masked" / "last.pt")}
    assert main(["experiment", "-q", "--data", str(root / "data"), "--out", str(run), *TINY, "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    stages = json.loads((run / "experiment.json").read_text())["stages"]
    assert all(stages[f"seed_{s}/{k}"] == "done" for s in (0, 1)
               for k in ("pretrain_region", "pretrain_masked", "train_MwS-region", "train_MwoS", "eval_MwoS"))


def test_experiment_refuses_another_config_or_foreign_folder(experiment, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    root, _, _ = experiment
    rc = main(["experiment", "--data", str(root / "data"), "--out", str(root / "run"), *TINY,
               "--set", "train.epochs=3"])
    assert rc == 2 and "another config" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("mine")
    rc = main(["experiment", "--data", str(root / "data"), "--out", str(tmp_path), *TINY])
    assert rc == 2 and "not empty" in capsys.readouterr().err


def test_unlabeled_scans_add_mws_u(experiment, segmenting_checkpoint: Path, tmp_path: Path) -> None:
    """Scans without masks, located by a model trained on the training cases only, pretrain a third
    model, MwS+U, scored beside MwS and MwoS; a locator is also run on the fly by ``pretrain``.
    (Last in this file: it continues the shared experiment with a third model.)"""
    from kidneyssl.io.checkpoint import load_checkpoint
    from kidneyssl.phantoms import write_dataset
    from kidneyssl.training.split import load_split

    root, rc, _ = experiment
    run = root / "run"
    split = load_split(run / "split.json")
    write_dataset(tmp_path / "src", 3, seed=21, resolution="demo", workers=2)
    raw = tmp_path / "raw"  # scans only: no segmentation anywhere
    raw.mkdir()
    for i, case in enumerate(sorted((tmp_path / "src").glob("case_*"))):
        shutil.copy(case / "imaging.nii.gz", raw / f"scan_{i}.nii.gz")
    assert main(["locate", "-q", "--model", str(segmenting_checkpoint), "--input", str(raw),
                 "--out", str(tmp_path / "located")]) == 0
    located = json.loads((tmp_path / "located" / "locate.json").read_text())
    assert located["touched_cases"] == sorted(split.train)  # the locator's (MwoS last.pt) training cases

    assert main(["experiment", "-q", "--data", str(root / "data"), "--out", str(run), *TINY, "--device", "cpu",
                 "--unlabeled", str(tmp_path / "located")]) == 0
    stages = json.loads((run / "experiment.json").read_text())["stages"]
    assert all(stages[f"seed_{s}/{k}"] == "done" for s in (0, 1)
               for k in ("pretrain_u", "train_MwS+U", "eval_MwS+U", "train_MwoS"))
    for seed in (0, 1):
        info = json.loads((run / f"seed_{seed}" / "pretrain_u" / "run.json").read_text())["unlabeled"]
        assert info["used"] >= 1 and info["scans"] == 3
        touched = set(load_checkpoint(run / f"seed_{seed}" / "pretrain_u" / "best.pt")["touched_cases"])
        assert set(split.train) <= touched and not touched & split.held_out
        assert {r["part"] for r in _rows(run, seed, "MwS+U")} == {"val", "test"}
    report = (run / "report" / "report.md").read_text()
    assert "MwS+U − MwoS" in report and "scans used" in report
    diffs = json.loads((run / "report" / "differences.json").read_text())["paired"]
    assert {d["model"] for d in diffs} == {"MwS-region", "MwS-masked", "MwS+U"}

    # pretrain locates raw scans on the fly with a given locator, into OUT/located
    out = tmp_path / "pretrain"
    assert main(["pretrain", "-q", "--cache", str(run / "cache"), "--split", str(run / "split.json"),
                 "--out", str(out), *TINY[:-6], "--device", "cpu", "--yes", "--no-probe",
                 "--unlabeled", str(raw), "--locator", str(segmenting_checkpoint)]) == 0
    assert (out / "located" / "locate.json").is_file()
    info = json.loads((out / "run.json").read_text())["unlabeled"]
    assert info["locator"] == str(segmenting_checkpoint.absolute()) and info["used"] >= 1


@pytest.mark.slow
def test_experiment_under_torchrun_claims_its_folder_once(experiment, tmp_path: Path) -> None:
    """Two processes start ``experiment`` on a new folder at once: rank 0 alone claims it and
    writes config.yaml, the other receives its decision (it used to find the folder rank 0 had
    just started and refuse it), and the global batch of 2 gives each process one half volume."""
    import os
    import socket
    import subprocess
    import sys

    root, rc, _ = experiment
    assert rc == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", KIDNEYSSL_NO_PROGRESS="1")
    tiny = [a for a in TINY if a not in ("1", "masked")]  # one seed, one proxy input
    tiny = tiny[:tiny.index("--seeds")] + ["--seeds", "0", "--proxy-variants", "region"]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "kidneyssl.cli.main", "experiment", "-q",
           "--data", str(root / "data"), "--cache", str(root / "run" / "cache"), "--out", str(out), *tiny,
           "--set", "train.batch_size=2", "--device", "cpu", "--no-probe"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "experiment.json").read_text())
    assert all(state["stages"][k] == "done" for k in ("seed_0/pretrain_region", "seed_0/train_MwoS",
                                                       "seed_0/train_MwS-region", "report"))
    run_info = json.loads((out / "seed_0" / "mwos" / "run.json").read_text())
    assert run_info["world_size"] == 2 and run_info["global_batch"] == 2
    assert state["compute"]["seed_0/train_MwoS"]["devices"] == 2
