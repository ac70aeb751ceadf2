"""``kidneyssl experiment``: the MwS vs MwoS comparison end to end on tiny phantoms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kidneyssl.cli.main import main

TINY = ["--preset", "demo",
        "--set", "preprocess.spacing_mm=[12.0,6.0,6.0]", "--set", "preprocess.crop_size=[16,32,32]",
        "--set", "model.init_features=4", "--set", "model.growth_rate=4", "--set", "model.norm_groups=2",
        "--set", "model.embedding_dim=8", "--set", "train.val_fraction=0.5",
        "--set", "inference.half_overlap_mm=16",
        "--set", "pretrain.epochs=1", "--set", "pretrain.pairs_per_epoch=8", "--set", "pretrain.val_pairs=4",
        "--set", "pretrain.batch_size=2", "--set", "train.epochs=2"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    from kidneyssl.phantoms import write_dataset

    root = tmp_path_factory.mktemp("experiment")
    write_dataset(root / "data", 4, seed=2, resolution="demo", workers=2)
    capture = root / "stdout.txt"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["experiment", "-q", "--data", str(root / "data"), "--out", str(root / "run"), *TINY,
                   "--device", "cpu"])
    capture.write_text(buf.getvalue())
    return root, rc, buf.getvalue()


def test_experiment_writes_the_report(experiment) -> None:
    root, rc, out = experiment
    assert rc == 0, out
    run = root / "run"
    report = run / "report"
    for name in ("table1.csv", "table1.md", "fig4_overlays.png", "fig5_dice_curves.png", "report.md",
                 "report.html"):
        assert (report / name).stat().st_size > 0, name
    with (report / "table1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"model", "metric", "mean", "sd", "n", "n_missed", "n_cases"} <= set(rows[0])
    assert {(r["model"], r["metric"]) for r in rows} == {
        (m, k) for m in ("MwS", "MwoS") for k in ("dice", "hd_mm", "hd95_mm", "bl_pct", "nhd")}
    assert all(r["n_cases"] == "2" for r in rows)  # 4 cases, val_fraction 0.5
    dice = {r["model"]: float(r["mean"]) for r in rows if r["metric"] == "dice"}
    assert all(0.0 <= d <= 1.0 for d in dice.values())
    # both models used the pretraining run's split; MwS started from its checkpoint
    split = (run / "pretrain" / "split.json").read_text()
    assert (run / "mws" / "split.json").read_text() == split == (run / "mwos" / "split.json").read_text()
    assert json.loads((run / "mws" / "run.json").read_text())["init"].endswith("best.pt")
    assert json.loads((run / "mwos" / "run.json").read_text())["init"] == "scratch"
    per_case = json.loads((run / "eval" / "MwS.json").read_text())
    assert [r["case_id"] for r in per_case] == json.loads(split)["val"]
    assert f"report: {report / 'report.md'}" in out and "MwS: final validation Dice" in out
    assert (run / "config.yaml").is_file()


def test_rerun_skips_finished_stages(experiment, capsys: pytest.CaptureFixture) -> None:
    root, rc, _ = experiment
    run = root / "run"
    before = {p: p.stat().st_mtime_ns for p in (run / "mws" / "last.pt", run / "pretrain" / "last.pt")}
    assert main(["experiment", "-q", "--data", str(root / "data"), "--out", str(run), *TINY, "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    stages = json.loads((run / "experiment.json").read_text())["stages"]
    assert all(stages[s] == "done" for s in ("prepare", "pretrain", "train_MwS", "train_MwoS", "eval_MwS"))


def test_experiment_refuses_another_config_or_foreign_folder(experiment, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    root, _, _ = experiment
    rc = main(["experiment", "--data", str(root / "data"), "--out", str(root / "run"), *TINY,
               "--set", "train.epochs=3"])
    assert rc == 2 and "another config" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("mine")
    rc = main(["experiment", "--data", str(root / "data"), "--out", str(tmp_path), *TINY])
    assert rc == 2 and "not empty" in capsys.readouterr().err
