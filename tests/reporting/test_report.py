"""Tests of kidneyssl.reporting.report: Table 1 values, report files, Markdown/HTML contents."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.reporting.figures import OverlayCase
from kidneyssl.reporting.report import (
    TABLE1_COLUMNS,
    table1_markdown,
    table1_rows,
    write_experiment_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = math.nan


def _row(case_id, dice, hd, hd95, bl, nhd, empty_pred=False, empty_gt=False):
    return {"case_id": case_id, "dice": dice, "hd_mm": hd, "hd95_mm": hd95, "bl_pct": bl, "nhd": nhd,
            "pred_voxels": 0.0 if empty_pred else 100.0, "gt_voxels": 0.0 if empty_gt else 100.0,
            "empty_pred": empty_pred, "empty_gt": empty_gt}


@pytest.fixture()
def per_case():
    return {
        "MwoS": [
            _row("case_00001", 0.8, 10.0, 4.0, 10.0, 0.2),
            _row("case_00002", 0.9, 20.0, 6.0, 20.0, 0.4),
            _row("case_00003", 0.0, NAN, NAN, 100.0, NAN, empty_pred=True),  # a missed kidney
        ],
        "MwS": [
            _row("case_00001", 0.9, 8.0, 3.0, 12.0, 0.3),
            _row("case_00002", 0.95, 12.0, None, 14.0, 0.3),  # None (JSON null) counts as missed
        ],
    }


def _table(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == TABLE1_COLUMNS
        return {(r["model"], r["metric"]): r for r in reader}


def _overlay() -> OverlayCase:
    z, y, x = np.mgrid[:8, :24, :24]
    gt = ((z - 4) ** 2 + (y - 12) ** 2 + (x - 6) ** 2) < 16
    return OverlayCase("case_00001", (x + y).astype(np.float32), gt, {"MwoS": np.roll(gt, 1, axis=2), "MwS": gt})


def test_table1_mean_sd_counts(per_case):
    rows = {(r["model"], r["metric"]): r for r in table1_rows(per_case)}
    assert len(rows) == 10
    dice = rows["MwoS", "dice"]
    assert dice["mean"] == pytest.approx(1.7 / 3)
    assert dice["sd"] == pytest.approx(np.std([0.8, 0.9, 0.0], ddof=1))  # 0.49329
    assert dice["sd"] == pytest.approx(0.4932883, abs=1e-6)
    assert (dice["n"], dice["n_missed"], dice["n_cases"], dice["paper_value"]) == (3, 0, 3, 0.907)
    hd = rows["MwoS", "hd_mm"]
    assert (hd["mean"], hd["sd"], hd["n"], hd["n_missed"]) == (pytest.approx(15.0), pytest.approx(math.sqrt(50)), 2, 1)
    assert math.isnan(hd["paper_value"])
    # the paper's HD column has no reconstructible unit: it is not set beside any row
    assert math.isnan(rows["MwoS", "nhd"]["paper_value"]) and rows["MwS", "bl_pct"]["paper_value"] == 12.9
    one = rows["MwS", "hd95_mm"]  # a single finite value: mean = it, sd undefined
    assert (one["mean"], one["n"], one["n_missed"]) == (3.0, 1, 1) and math.isnan(one["sd"])


def test_table1_markdown_layout(per_case):
    md = table1_markdown(table1_rows(per_case))
    lines = md.strip().splitlines()
    assert lines[0] == "| Metric | MwoS | MwS | paper MwoS | paper MwS |"
    assert lines[2].startswith("| Dice (DC) | 0.567 ± 0.493 | 0.925 ± 0.035 | 0.907 | 0.931 |")
    assert "| HD (mm) | 15.0 ± 7.1 (n=2/3, 1 undefined) |" in md
    assert "| normalised HD (not the paper's HD) | 0.300 ± 0.141 (n=2/3, 1 undefined) | 0.300 ± 0.000 | – | – |" in md


def _experiment_rows(per_case):
    """Rows of two seeds (the second seed 0.05 better for MwS), test and val parts."""
    rows = []
    for seed in (0, 1):
        for part in ("test", "val"):
            for model, cases in per_case.items():
                name = "MwS-region" if model == "MwS" else model
                for r in cases:
                    bonus = 0.05 * seed if model == "MwS" and r["dice"] == r["dice"] else 0.0
                    rows.append({"seed": seed, "model": name, "part": part, "strategy": "halves",
                                 **r, "dice": r["dice"] + bonus})
    return rows


def test_write_experiment_report_files_and_contents(tmp_path, per_case):
    def history(base):
        return [{"epoch": e, "train_loss": 1.0 - 0.1 * e, "val_dice": base + 0.05 * e, "seconds": 2.0}
                for e in range(6)]

    histories = {"MwS-region": {0: history(0.6), 1: history(0.62)}, "MwoS": {0: history(0.5), 1: history(0.5)}}
    histories["MwoS"][0][3]["val_dice"] = NAN
    proxy = {"region": {0: [{"epoch": e, "val_accuracy": 0.5 + 0.1 * e} for e in range(3)],
                        1: [{"epoch": e, "val_accuracy": 0.6 + 0.1 * e} for e in range(3)]}}
    config = {"name": "demo", "preprocess": {"spacing_mm": (6.44, 3.24, 3.24)},
              "train": {"epochs": 6, "bce_weight_start": 0.6, "dice_weight_start": 0.4,
                        "bce_weight_end": 0.1, "dice_weight_end": 0.9}}
    rows = _experiment_rows(per_case)
    report, differences = write_experiment_report(
        tmp_path / "report", rows, histories, proxy, [_overlay()], config,
        timings={"pretrain": 61.0, "train MwS": 15.0}, split={"train": 10, "val": 3, "test": 3})
    out = tmp_path / "report"
    assert report == out / "report.md"
    for name in ("table1.csv", "table1.md", "fig4_overlays.png", "fig5_dice_curves.png", "proxy_accuracy.png",
                 "differences.json", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    for name in ("fig4_overlays.png", "fig5_dice_curves.png", "proxy_accuracy.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*tmp*")), "atomic temporary file left behind"

    table = _table(out / "table1.csv")
    assert float(table["MwoS (test)", "dice"]["mean"]) == pytest.approx(1.7 / 3)  # 3 cases x 2 seeds
    assert table["MwoS (test)", "dice"]["n"] == "6"
    assert table["MwoS (val)", "hd95_mm"]["n_missed"] == "2" and table["MwoS (val)", "hd95_mm"]["n"] == "4"
    assert table["MwS-region (test)", "dice"]["label"] == "Dice (DC)"

    # paired differences over the 2 cases both models have, x 2 seeds: (0.1, 0.05) and (0.15, 0.1)
    dice_test = next(d for d in differences["paired"] if d["metric"] == "dice" and d["part"] == "test")
    assert dice_test["model"] == "MwS-region" and dice_test["n_pairs"] == 4
    assert dice_test["mean"] == pytest.approx(0.1) and dice_test["per_seed"] == {0: pytest.approx(0.075),
                                                                                 1: pytest.approx(0.125)}
    # 2 cases: too few for a bootstrap; a t-interval over the case means 0.125 and 0.075 (1 df)
    assert dice_test["interval"] == "t" and dice_test["test"] == "sign-flip exact"
    half = 12.706204736 * 0.025  # t(0.975, 1) x sd (0.0353553) / sqrt(2)
    assert (dice_test["ci_low"], dice_test["ci_high"]) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    assert dice_test["p_value"] == pytest.approx(0.5) and dice_test["verdict"] == "too few"
    # MwoS's final Dice is 0.75 (seeds 0, 1): 90 % = 0.675, reached by MwS at epoch 2 (0.65 + ...)
    reach = differences["epochs_to_reach"]["MwS-region"]["90pct"]
    assert reach == {0: 3, 1: 3} and differences["epochs_to_reach"]["MwoS"]["90pct"] == {0: 5, 1: 5}

    md = report.read_text()
    assert "](fig4_overlays.png)" in md and "](fig5_dice_curves.png)" in md and "](proxy_accuracy.png)" in md
    assert "**MwS-region − MwoS, test Dice: 0.100 [" in md
    assert ("too few seeds/cases for a conclusion (n = 2 cases x 2 seeds; at least 2 seeds and 10 cases are "
            "needed)") in md
    assert "better than" not in md and "worse than" not in md
    assert "seed 0: val / test Dice" in md and "Table 1: test" in md and "Table 1: validation" in md
    assert "| MwoS (test) | 6 | 2 | 0 | case_00003, case_00003 |" in md  # missed case counted and named
    assert "| pretrain | 61.0 s (0:01:01) |" in md
    assert "voxel spacing (mm, z y x): `6.44, 3.24, 3.24`" in md
    assert "`0.6/0.4` at the first epoch to `0.1/0.9`" in md
    assert "0.907" in md and "cannot be reproduced" in md and "strategy: halves" in md

    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(img)[:8] == PNG_MAGIC for img in images)
    assert base64.b64decode(images[0]) == (out / "fig5_dice_curves.png").read_bytes()
    assert not re.search(r'src="(?!data:)', page), "HTML must not reference external files"


def test_report_single_epoch_nan_metrics_no_overlays(tmp_path):
    rows = [{"seed": 0, "part": "test", "model": "MwoS", **_row("c1", 0.0, NAN, NAN, NAN, NAN, empty_pred=True)},
            {"seed": 0, "part": "test", "model": "MwS-region", **_row("c1", 0.5, 3.0, 2.0, 5.0, 0.1)}]
    histories = {"MwS-region": {0: [{"epoch": 0, "val_dice": 0.5}]}, "MwoS": {0: [{"epoch": 0, "val_dice": NAN}]}}
    report, differences = write_experiment_report(tmp_path, rows, histories, {}, [], {})
    md = report.read_text()
    assert "Fig. 4 left out" in md and "fig4_overlays.png" not in md
    assert not (tmp_path / "fig4_overlays.png").exists()
    assert "| HD (mm) | 3.0 ± – | – ± – (n=0/1, 1 undefined) | – | – |" in md
    table = _table(tmp_path / "table1.csv")
    assert table["MwoS (test)", "bl_pct"]["mean"] == "nan" and table["MwoS (test)", "bl_pct"]["n_missed"] == "1"
    assert len(re.findall("data:image/png;base64,", (tmp_path / "report.html").read_text())) == 1
    one = next(d for d in differences["paired"] if d["metric"] == "dice")
    assert one["mean"] == pytest.approx(0.5) and one["n_pairs"] == 1


# ------------------------------------------------------------- what the report may conclude
def _design(n_seeds, n_cases, shift=0.05, noise=0.01):
    """Rows of MwS-region and MwoS on ``n_cases`` test cases x ``n_seeds`` seeds: MwS-region's Dice
    ``shift`` higher (plus noise) and its HD95 ``20 * shift`` mm lower; histories of one epoch."""
    rng = np.random.default_rng(n_seeds * 100 + n_cases)
    rows = []
    for seed in range(n_seeds):
        for i in range(n_cases):
            base = rng.uniform(0.7, 0.9)
            for model, s in (("MwoS", 0.0), ("MwS-region", shift)):
                rows.append({"seed": seed, "model": model, "part": "test", **_row(
                    f"case_{i:05d}", base + s + rng.normal(0, noise), 10.0, 10.0 - 20 * s + rng.normal(0, 0.2),
                    10.0, 0.1)})
    histories = {m: {s: [{"epoch": 0, "val_dice": 0.5}] for s in range(n_seeds)} for m in ("MwS-region", "MwoS")}
    return rows, histories


@pytest.mark.parametrize("n_seeds, n_cases, interval", [(1, 3, "t"), (3, 6, "t"), (3, 20, "bootstrap")])
def test_a_direction_is_stated_only_with_enough_seeds_and_cases(tmp_path, n_seeds, n_cases, interval):
    rows, histories = _design(n_seeds, n_cases)
    report, differences = write_experiment_report(tmp_path, rows, histories, {}, [], {})
    md = report.read_text()
    paired = differences["paired"]
    assert {(d["model"], d["reference"], d["metric"]) for d in paired} == {
        ("MwS-region", "MwoS", "dice"), ("MwS-region", "MwoS", "hd95_mm")}
    assert differences["n_comparisons"] == {"test": 2} and "2 on the test cases" in md
    assert all(d["interval"] == interval and d["n_seeds"] == n_seeds and d["n_cases"] == n_cases for d in paired)
    saved = json.loads((tmp_path / "differences.json").read_text())
    assert [d["verdict"] for d in saved["paired"]] == [d["verdict"] for d in paired]
    if n_seeds < 2 or n_cases < 10:
        # every pair favours MwS-region and, with 3 cases, a percentile bootstrap would exclude 0;
        # the report gives the numbers and says they are too few
        assert all(d["wins" if d["metric"] == "dice" else "losses"] == n_seeds * n_cases for d in paired)
        words = (f"too few seeds/cases for a conclusion (n = {n_cases} cases x {n_seeds} seed"
                 f"{'s' if n_seeds > 1 else ''}; at least 2 seeds and 10 cases are needed)")
        assert all(d["verdict"] == "too few" and d["conclusion"] == words for d in paired)
        assert words in md and "better than" not in md and "worse than" not in md
        assert "t-interval over the case means" in md and "sign-flip exact p = " in md
    else:
        assert all(d["verdict"] == "better" and (d["ci_low"] > 0 or d["ci_high"] < 0) for d in paired)
        assert "MwS-region is better than MwoS (the 95 % interval excludes 0; Holm-adjusted p < 0.0002 over " \
               "2 comparisons)" in md
        assert "95 % bootstrap interval (seeds and cases resampled), 20 cases x 3 seed(s)" in md
        # no effect: the interval includes 0 and nothing is concluded either way
        rows, histories = _design(n_seeds, n_cases, shift=0.0, noise=0.05)
        _, flat = write_experiment_report(tmp_path / "flat", rows, histories, {}, [], {})
        dice = next(d for d in flat["paired"] if d["metric"] == "dice")
        assert dice["ci_low"] < 0 < dice["ci_high"] and dice["verdict"] == "no difference detectable"


def test_the_thresholds_come_from_the_protocol_config(tmp_path):
    rows, histories = _design(1, 6, shift=0.1)
    config = {"protocol": {"min_seeds_for_verdict": 1, "min_cases_for_verdict": 6}}
    _, differences = write_experiment_report(tmp_path, rows, histories, {}, [], config)
    dice = next(d for d in differences["paired"] if d["metric"] == "dice")
    # 6 positive case differences: exact sign-flip p = 2/64, Holm over 2 comparisons 0.0625: no verdict
    assert (dice["min_seeds"], dice["min_cases"], dice["p_value"]) == (1, 6, pytest.approx(2 / 64))
    assert dice["p_holm"] == pytest.approx(0.0625) and dice["verdict"] == "no difference detectable"
    from kidneyssl.config import ConfigError, ProtocolConfig

    assert (ProtocolConfig().min_seeds_for_verdict, ProtocolConfig().min_cases_for_verdict) == (2, 10)
    with pytest.raises(ConfigError, match="min_cases_for_verdict"):
        ProtocolConfig(min_cases_for_verdict=0)


def test_a_combined_report_lists_every_seed_model_and_proxy_input(tmp_path):
    """Rows of three seeds and three models, with the config of one run (seed 0, region only), as
    ``benchmarks/science_demo.py --combine`` gives it: "What was run" says what the rows hold."""
    rows, histories = _design(3, 4)
    rows += [{**r, "model": "MwS-masked"} for r in rows if r["model"] == "MwS-region"]
    histories["MwS-masked"] = histories["MwS-region"]
    proxy = {v: {s: [{"epoch": 0, "val_accuracy": 0.7}] for s in range(3)} for v in ("region", "masked")}
    config = {"name": "demo", "protocol": {"seeds": [0], "proxy_variants": ["region"]}}
    report, differences = write_experiment_report(tmp_path, rows, histories, proxy, [], config)
    md = report.read_text()
    run = md.split("## What was run", 1)[1].split("##", 1)[0]
    assert "seeds in these results: `0, 1, 2`" in run
    assert "models compared: `MwS-region, MwoS, MwS-masked`" in run
    assert "pretraining methods: `side-region, side-masked`" in run
    assert "the configuration below is one run's (seeds `0`; methods `side-region`)" in run
    # each method against scratch and against the paper's MwS (the whole region)
    assert {(d["model"], d["reference"]) for d in differences["paired"]} == {
        ("MwS-region", "MwoS"), ("MwS-masked", "MwoS"), ("MwS-masked", "MwS-region")}
    assert differences["n_comparisons"] == {"test": 6}
    single = write_experiment_report(tmp_path / "one", rows, histories, proxy, [],
                                     {"protocol": {"seeds": [0, 1, 2], "proxy_variants": ["region", "masked"]}})
    assert "one run's" not in single[0].read_text()


def test_image_only_pretraining_gets_a_loss_figure_beside_the_proxy_accuracy(tmp_path):
    """MAE and Genesis histories have a validation loss and no pair accuracy: their curves get their
    own figure, the proxy's accuracy figure keeps the side proxy only."""
    rows, histories = _design(1, 3)
    proxy = {"side-region": {0: [{"epoch": e, "val_loss": 0.5, "val_accuracy": 0.6 + 0.1 * e} for e in range(2)]},
             "mae": {0: [{"epoch": e, "val_loss": 2.0 - 0.5 * e, "optimizer_steps": 4 * (e + 1)} for e in range(2)]},
             "genesis": {0: [{"epoch": e, "val_loss": 3.0 - 0.5 * e} for e in range(2)]}}
    report, _ = write_experiment_report(tmp_path, rows, histories, proxy, [], {})
    md = report.read_text()
    assert "](proxy_accuracy.png)" in md and "](pretraining_val_loss.png)" in md
    for name in ("proxy_accuracy.png", "pretraining_val_loss.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
