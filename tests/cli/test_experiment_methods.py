"""``kidneyssl experiment --methods side-region mae genesis``: the paper's proxy beside MAE and
Models Genesis on one split and seed, a report row per method, pretraining checkpoints that touched
training cases only, and the restoration methods' encoder and decoder in their fine-tuned models."""

from __future__ import annotations

import contextlib
import csv
import io
import json
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
        *[a for m in ("mae", "genesis") for key in ("epochs=1", "samples_per_epoch=8", "val_samples=4",
                                                    "batch_size=2", "crop_size=[16,32,32]")
          for a in ("--set", f"methods.{m}.{key}")],
        "--set", "methods.mae.patch_size=[8,8,8]", "--set", "methods.genesis.local_blocks=200",
        "--seeds", "0", "--methods", "side-region", "mae", "genesis", "--init-parts", "encoder+decoder", "--no-probe"]
MODELS = ("MwS-region", "MAE", "Genesis", "MwoS")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    from kidneyssl.phantoms import write_dataset

    root = tmp_path_factory.mktemp("experiment_methods")
    write_dataset(root / "data", 8, seed=5, resolution="demo", workers=2)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["experiment", "-q", "--data", str(root / "data"), "--out", str(root / "run"), *TINY,
                   "--device", "cpu"])
    return root / "run", rc, buf.getvalue()


@pytest.mark.slow
def test_the_report_has_a_row_per_method(experiment) -> None:
    run, rc, out = experiment
    assert rc == 0, out
    report = run / "report"
    with (report / "table1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {f"{m} ({p})" for m in MODELS for p in ("val", "test")}
    paired = json.loads((report / "differences.json").read_text())["paired"]
    dice = {(d["model"], d["reference"]) for d in paired if d["metric"] == "dice" and d["part"] == "test"}
    assert {("MAE", "MwoS"), ("Genesis", "MwoS"), ("MwS-region", "MwoS")} <= dice
    assert {("MAE", "MwS-region"), ("Genesis", "MwS-region")} <= dice
    md = (report / "report.md").read_text()
    assert "](pretraining_val_loss.png)" in md and "](proxy_accuracy.png)" in md
    assert "MAE − MwoS" in md and "Genesis − MwoS" in md


@pytest.mark.slow
def test_pretraining_touched_training_cases_only_and_gave_encoder_and_decoder(experiment) -> None:
    import torch

    run, rc, out = experiment
    assert rc == 0, out
    split = json.loads((run / "split.json").read_text())
    held_out = set(split["val"]) | set(split["test"])
    for key, method in (("region", "side"), ("mae", "mae"), ("genesis", "genesis")):
        folder = run / "seed_0" / f"pretrain_{key}"
        for name in ("best.pt", "last.pt"):
            ckpt = torch.load(folder / name, weights_only=False)
            touched = set(ckpt["touched_cases"])
            assert touched and touched <= set(split["train"]) and not touched & held_out
            assert ckpt["method"] == method
        history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
        assert history[-1]["optimizer_steps"] == 4 and history[-1]["samples_seen"] == 8  # the budget, recorded
        tuned = json.loads((run / "seed_0" / f"mws_{key}" / "run.json").read_text())
        assert tuned["init_report"]["held_out_cases_touched"] == []
        expected = ["encoder."] if method == "side" else ["encoder.", "decoder.ups."]  # side gives its encoder
        assert tuned["init_report"]["prefixes"] == expected
