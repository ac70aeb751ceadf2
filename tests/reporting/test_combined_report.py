"""``benchmarks/science_demo.py --combine``: one report from runs of different seeds and proxy
inputs says, under "What was run", every seed, model and proxy input it holds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kidneyssl.config import apply_overrides, load_preset, save_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "science_demo.py"


def _fake_run(work: Path, seeds: list[int], variants: list[str]) -> None:
    """The files ``combine`` reads from a finished ``run_experiment`` folder, with made-up numbers."""
    run = work / "run"
    run.mkdir(parents=True)
    cfg = apply_overrides(load_preset("demo"), [f"protocol.seeds=[{', '.join(map(str, seeds))}]",
                                                f"protocol.proxy_variants=[{', '.join(variants)}]"])
    save_config(cfg, run / "config.yaml")
    (run / "split.json").write_text(json.dumps({"train": ["a"], "val": ["v0", "v1"], "test": ["t0", "t1", "t2"]}))
    (run / "experiment.json").write_text(json.dumps({"timings": {"report": 1.0}}))
    models = {f"MwS-{v}": f"mws_{v}" for v in variants} | {"MwoS": "mwos"}
    for seed in seeds:
        for i, (model, sub) in enumerate(models.items()):
            rows = [{"seed": seed, "model": model, "part": part, "case_id": cid, "dice": 0.8 + 0.01 * i,
                     "hd_mm": 5.0, "hd95_mm": 4.0, "bl_pct": 10.0, "nhd": 0.1, "empty_pred": False,
                     "empty_gt": False} for part, ids in (("val", ["v0", "v1"]), ("test", ["t0", "t1", "t2"]))
                    for cid in ids]
            (run / "eval" / f"seed_{seed}").mkdir(parents=True, exist_ok=True)
            (run / "eval" / f"seed_{seed}" / f"{model}.json").write_text(json.dumps(rows))
            (run / f"seed_{seed}" / sub).mkdir(parents=True)
            (run / f"seed_{seed}" / sub / "history.jsonl").write_text(json.dumps({"epoch": 0, "val_dice": 0.7}) + "\n")
        for v in variants:
            (run / f"seed_{seed}" / f"pretrain_{v}").mkdir(parents=True)
            (run / f"seed_{seed}" / f"pretrain_{v}" / "history.jsonl").write_text(
                json.dumps({"epoch": 0, "val_accuracy": 0.9}) + "\n")


@pytest.fixture()
def science_demo(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("science_demo", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")  # never the repository's results
    return module


def test_combined_report_lists_every_seed_model_and_proxy_input(tmp_path, science_demo, capsys):
    _fake_run(tmp_path / "W0", [0], ["region"])
    _fake_run(tmp_path / "W1", [1, 2], ["region", "masked"])
    science_demo.combine([tmp_path / "W0", tmp_path / "W1"], name="combined")
    md = (tmp_path / "combined_report" / "report.md").read_text()
    run = md.split("## What was run", 1)[1].split("##", 1)[0]
    assert "seeds in these results: `0, 1, 2`" in run
    assert "models compared: `MwS-region, MwoS, MwS-masked`" in run
    assert "pretraining methods: `side-region, side-masked`" in run
    assert "one run's (seeds `0`; methods `side-region`)" in run  # the config shown is W0's
    out = json.loads((tmp_path / "results" / "combined.json").read_text())
    assert out["seeds"] == [0, 1, 2] and out["pretraining_methods"] == ["side-region", "side-masked"]
    # 3 test cases: numbers, no direction
    assert all(d["verdict"] == "too few" for d in out["paired_differences"])
    assert "too few seeds/cases for a conclusion" in capsys.readouterr().out


def test_combining_runs_of_the_same_seed_is_refused(tmp_path, science_demo):
    _fake_run(tmp_path / "W0", [0], ["region"])
    _fake_run(tmp_path / "W1", [0, 1], ["region"])
    with pytest.raises(SystemExit, match="seed 0 is in more than one"):
        science_demo.combine([tmp_path / "W0", tmp_path / "W1"], name="combined")
