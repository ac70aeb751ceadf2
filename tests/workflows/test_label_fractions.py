"""``experiment`` with label budgets (issue 22): the stages each budget adds, the plan, the rule
that no label outside a budget reaches a model of that budget, device-seconds per stage, the
report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

TINY = ["preprocess.spacing_mm=[12.0,6.0,6.0]", "pretrain.crop_size=[16,32,32]", "train.crop_size=null", "model.init_features=4",
        "model.growth_rate=4", "model.norm_groups=2", "model.embedding_dim=8", "train.val_fraction=0.25",
        "protocol.test_fraction=0.25", "inference.half_context_mm=16", "pretrain.epochs=1",
        "pretrain.pairs_per_epoch=8", "pretrain.val_pairs=4", "pretrain.batch_size=2", "train.epochs=1",
        "protocol.seeds=[0]", "protocol.methods=[side-region]"]


class _ImageOnly:
    """A stand-in for an image-only method (MAE, Models Genesis): it reads no label."""

    reads_labels = False
    display_name = "Toy"


def test_stages_of_each_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.errors import KidneySSLError
    from kidneyssl.training import label_budget
    from kidneyssl.training.tasks import registry
    from kidneyssl.training.tasks.side import SideTask
    from kidneyssl.workflows.experiment import build_stages, check_budgets

    monkeypatch.setattr(registry, "PRETRAINING_METHODS", {"side": "", "toy": ""})
    monkeypatch.setattr(registry, "pretraining_class", lambda name: SideTask if name == "side" else _ImageOnly)
    cfg = apply_overrides(load_preset("demo"), ["protocol.methods=[side-region, toy]", "protocol.seeds=[0, 1]"])
    budgets = label_budget.resolve_budgets((0.25, 1.0), (2,), n_train=16)
    stages = build_stages(cfg, tmp_path, budgets=budgets)
    keys = [s.key for s in stages]
    # the full training set keeps the keys and folders of an experiment without budgets
    assert keys[:9] == ["seed_0/pretrain_region", "seed_0/pretrain_toy", "seed_0/train_MwS-region",
                        "seed_0/train_Toy", "seed_0/train_MwoS", "seed_0/eval_MwS-region", "seed_0/eval_Toy",
                        "seed_0/eval_MwoS", "seed_0/n002/train_MwoS"]
    assert next(s for s in stages if s.key == "seed_0/train_MwoS").folder == tmp_path / "seed_0" / "mwos"
    budget = [s for s in stages if s.seed == 0 and s.budget is not None and s.budget.cases == 4]
    assert [s.key for s in budget] == ["seed_0/f025/train_MwoS", "seed_0/f025/pretrain_region",
                                       "seed_0/f025/train_MwS-region", "seed_0/f025/train_Toy",
                                       "seed_0/f025/eval_MwoS", "seed_0/f025/eval_MwS-region",
                                       "seed_0/f025/eval_Toy"]
    scratch, side_pre, side, toy = budget[:4]
    assert side_pre.locator == scratch.folder == tmp_path / "seed_0" / "f025" / "mwos"  # its own scratch locates
    assert side.init == side_pre.folder == tmp_path / "seed_0" / "f025" / "pretrain_region"
    assert toy.init == tmp_path / "seed_0" / "pretrain_toy"  # image-only: the seed's one pretraining
    assert not any(s.kind == "pretrain" and s.name == "toy" and s.budget is not None for s in stages)
    assert len({s.key for s in stages}) == len(stages) == 2 * (8 + 2 * 7)
    check_budgets(cfg, budgets)
    with pytest.raises(KidneySSLError, match="needs at least 2 annotated cases"):
        check_budgets(cfg, label_budget.resolve_budgets((), (1,), n_train=16))
    probe_choice = apply_overrides(cfg, ["pretrain.probe_steps=5", "pretrain.select_by=probe_dice"])
    with pytest.raises(KidneySSLError, match="probe_dice with label budgets"):
        check_budgets(probe_choice, budgets)


def _boxes_for_kidneys(real: Any) -> Any:
    """``predict_volume`` whose mask is two boxes, one each side of the volume's lateral middle,
    placed from the image's grid alone (no label anywhere): a one-epoch tiny locator finds no
    kidney, and the located path needs some to be taken."""
    import dataclasses

    import numpy as np

    def predict_volume(model: Any, volume: Any, cfg: Any, **options: Any) -> Any:
        result = real(model, volume, cfg, **options)
        shape = result.mask.shape
        lateral = next(i for i, code in enumerate(volume.geometry.axcodes) if code in "LR")
        mask = np.zeros(shape, np.uint8)
        for where in (0.3, 0.7):
            box = [slice(s // 2 - s // 8, s // 2 + s // 8 + 1) for s in shape]
            at, half = int(shape[lateral] * where), max(1, shape[lateral] // 10)
            box[lateral] = slice(at - half, at + half + 1)
            mask[tuple(box)] = 1
        return dataclasses.replace(result, mask=mask, probabilities=mask.astype(np.float32) * 0.9)

    return predict_volume


@pytest.mark.slow
def test_no_label_outside_a_budget_reaches_its_models(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-budget (2 cases, all 4), 2-model (scratch, side-region) run, with the frozen-encoder
    probe on. The locator's masks are replaced by boxes (:func:`_boxes_for_kidneys`) so that the
    budget's other training images do join the side proxy's pairs; the numbers mean nothing, the
    records are what is checked."""
    import torch

    import kidneyssl.inference
    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.phantoms import write_dataset
    from kidneyssl.workflows.experiment import run_experiment

    monkeypatch.setattr(kidneyssl.inference, "predict_volume", _boxes_for_kidneys(kidneyssl.inference.predict_volume))
    write_dataset(tmp_path / "data", 8, seed=2, resolution="demo", workers=2)
    cfg = apply_overrides(load_preset("demo"), TINY + ["protocol.label_counts=[2]", "pretrain.probe_steps=2"])
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="kidneyssl"):
        result = run_experiment(tmp_path / "data", run, cfg, device="cpu")
    assert result is not None
    split = json.loads((run / "split.json").read_text())
    subset = set(split["label_budgets"]["subsets"]["0"]["n002"])
    assert len(subset) == 2 and subset < set(split["train"]) and len(split["train"]) == 4

    # the plan listed every stage with its own cases and iterations (2 halves per case)
    text = caplog.text
    assert "  seed_0/train_MwoS (segmentation): 4 training / 2 validation cases" in text
    assert "  seed_0/n002/train_MwoS (segmentation): 2 training / 2 validation cases" in text
    assert "per epoch: 4 iterations of 1 half volume" in text and "per epoch: 8 iterations of 1 half volume" in text
    assert "  seed_0/n002/pretrain_region (side)" in text

    # every checkpoint of the budget, the locator and the side pretraining included
    budget_dir = run / "seed_0" / "n002"
    checkpoints = sorted(budget_dir.glob("*/*.pt"))
    assert {p.parent.name for p in checkpoints} == {"mwos", "pretrain_region", "mws_region"}
    for path in checkpoints:
        ckpt = torch.load(path, weights_only=False, map_location="cpu")
        labels, touched = set(ckpt["labels_read"]), set(ckpt["touched_cases"])
        allowed = subset | set(split["val"]) if ckpt["kind"] == "segmentation" and path.name == "best.pt" else subset
        assert labels <= allowed, path  # best.pt of a segmentation run was chosen on validation labels
        assert touched <= set(split["train"]) | set(split["val"]) and not touched & set(split["test"]), path
    locate = json.loads((budget_dir / "pretrain_region" / "located" / "locate.json").read_text())
    assert set(locate["touched_cases"]) <= subset and locate["model"].endswith("n002/mwos/last.pt")
    info = json.loads((budget_dir / "pretrain_region" / "run.json").read_text())
    assert info["unlabeled"]["used"] == 2 and "fallback" not in info["unlabeled"]  # the located path was taken
    assert set(info["proxy_val_cases"]) | set(info["proxy_train_cases"]) <= subset
    links = sorted((budget_dir / "training_scans").iterdir())
    assert {p.name.split(".")[0] for p in links} == set(split["train"]) - subset
    assert all(p.is_symlink() and p.resolve().name == "imaging.nii.gz" for p in links)  # images, never masks
    mws = json.loads((budget_dir / "mws_region" / "run.json").read_text())
    assert set(mws["train_cases"]) == subset and mws["init"].endswith("n002/pretrain_region/best.pt")
    history = [json.loads(line) for line in (budget_dir / "pretrain_region" / "history.jsonl").read_text().splitlines()]
    assert all(0.0 <= row["probe_dice"] <= 1.0 for row in history)

    # device-seconds of every stage, scoring and the report included
    state = json.loads((run / "experiment.json").read_text())
    assert set(state["stages"]) == set(state["compute"]) >= {
        "prepare", "seed_0/train_MwoS", "seed_0/n002/train_MwoS", "seed_0/n002/pretrain_region",
        "seed_0/n002/eval_MwS-region", "seed_0/eval_MwoS", "report"}
    for key, c in state["compute"].items():
        assert c["device_seconds"] > 0 and c["devices"] == 1 and c["device"] == "cpu", key

    report = run / "report"
    assert "device-seconds" in (report / "report.md").read_text()
    fractions = (report / "label_fractions.md").read_text()
    assert "MwS-region − MwoS" in fractions and "2 cases" in fractions and "all (4 cases)" in fractions
    assert {(e["model"], e["annotated_cases"]) for e in result.label_fractions["cases_saved"]} == {
        ("MwS-region", 2), ("MwS-region", 4)}
    rows = json.loads((run / "eval" / "seed_0" / "n002" / "MwoS.json").read_text())
    assert {r["annotated_cases"] for r in rows} == {2} and {r["part"] for r in rows} == {"val", "test"}
