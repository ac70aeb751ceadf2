"""The plan before a run (issue 13): estimate printed first, dry run, over-limit advice, and a probe
that leaves no trace."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyssl.cli.main import main
from kidneyssl.training.plan import (
    PlanDeclined,
    PlanOptions,
    StagePlan,
    announce_plan,
    format_duration,
    format_plan,
    probe_training,
    remaining_after,
)


def _stage(name: str = "train", seconds: float | None = 60.0, epochs: int = 200, **kw) -> StagePlan:
    base = dict(name=name, kind="segmentation", train_cases=168, val_cases=42, epochs=epochs, start_epoch=0,
                iterations_per_epoch=336, steps_per_epoch=336, batch="1 half volume", val_units=42,
                val_unit="case", device="cpu", precision="float32", strategy="whole volumes on halves",
                epochs_key="train.epochs", seconds_per_iteration=seconds, data_seconds_per_iteration=0.0,
                seconds_per_val_unit=0.0)
    return StagePlan(**{**base, **kw})


@pytest.mark.parametrize("seconds, text", [(None, "unknown"), (5.0, "5.0 s"), (45.0, "45 s"), (600.0, "10 min"),
                                           (3 * 3600.0, "3.0 h"), (3 * 86400 + 5 * 3600, "3 d 5 h")])
def test_format_duration(seconds, text) -> None:
    assert format_duration(seconds) == text


def test_stage_estimate_counts_remaining_epochs_only() -> None:
    stage = _stage(seconds=1.0, epochs=10, start_epoch=4, iterations_per_epoch=3, val_units=2,
                   seconds_per_val_unit=0.5, data_seconds_per_iteration=0.5)
    assert stage.seconds_per_epoch == pytest.approx(3 * 1.5 + 2 * 0.5)
    assert stage.remaining_seconds == pytest.approx(6 * 5.5)
    stages = [_stage("pretrain", seconds=1.0, epochs=2), stage, _stage("MwoS", seconds=None)]
    assert remaining_after(stages, "pretrain") == pytest.approx(33.0)
    assert remaining_after(stages, "MwoS") == 0.0
    text = format_plan(stages)
    assert "epochs 5-10 of 10 (4 done)" in text and "total: unknown" in text


def test_a_plan_over_the_limit_says_so_and_suggests_what_fits(caplog, monkeypatch) -> None:
    from kidneyssl.config import load_preset

    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("asked without a terminal"))
    stage = _stage(seconds=30.0)  # 336 x 30 s = 2.8 h per epoch, 200 epochs
    with caplog.at_level("INFO", logger="kidneyssl"):
        assert announce_plan([stage], PlanOptions(max_hours=12), cfg=load_preset("paper")) is True
    text = caplog.text
    assert text.index("plan: 1 stage") < text.index("more than the 12 h limit")
    assert "a GPU" in text and "the demo preset" in text
    assert "fewer epochs: train.epochs=4" in text  # 4 x 2.8 h fits in 12 h
    # --dry-run prints and stops; the demo preset is not suggested to itself
    caplog.clear()
    with caplog.at_level("INFO", logger="kidneyssl"):
        assert announce_plan([stage], PlanOptions(dry_run=True), cfg=load_preset("demo")) is False
    assert "the demo preset" not in caplog.text and "dry run" in caplog.text


def test_over_the_limit_asks_on_a_terminal_unless_yes(monkeypatch) -> None:
    stage = _stage(seconds=30.0)
    asked = []
    monkeypatch.setattr("builtins.input", lambda q: asked.append(q) or "n")
    with pytest.raises(PlanDeclined, match="over the 12 h limit") as info:
        announce_plan([stage], PlanOptions(interactive=True))
    assert info.value.remedy == ("assume_yes", "max_hours")  # the CLI names --yes, --max-hours
    assert len(asked) == 1
    assert announce_plan([stage], PlanOptions(interactive=True, assume_yes=True)) is True
    monkeypatch.setattr("builtins.input", lambda q: "y")
    assert announce_plan([stage], PlanOptions(interactive=True)) is True
    assert announce_plan([_stage(seconds=0.01)], PlanOptions(interactive=True)) is True  # under: no question


def test_probe_touches_neither_model_optimizer_nor_rng() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    item = torch.randn(3, 4)
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())

    def compute(m, item):  # draws from every global generator, as augmentation would
        random.random(), np.random.rand()
        return (m(item + torch.rand(1)) ** 2).mean(), {}, 1

    seconds, val_seconds = probe_training(model, optimizer, compute, item, device="cpu", steps=2,
                                          validate=lambda m: m(torch.zeros(1, 4)))
    assert seconds > 0 and val_seconds is not None and val_seconds > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, opt_before[k]) for k, v in optimizer.state_dict()["state"][0].items())
    assert random.getstate() == rng[0] and np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])


def test_plan_and_estimate_are_printed_before_training(cli_pretrain_run) -> None:
    _, err = cli_pretrain_run
    plan_at = err.index("plan: 1 stage")
    assert "pretrain (side): 2 training / 2 validation cases, epochs 1-2" in err
    assert "device cpu, float32" in err and "s per iteration" in err and "ends ~" in err
    first_epoch = err.index("pretrain epoch 1/2")
    assert plan_at < first_epoch
    # ETA per epoch, then the run summary at the end
    assert "pretrain epoch 1/2: elapsed" in err and "stage ends ~" in err
    summary = err[err.index("run summary:"):]
    assert "last.pt" in summary and "history.csv" in summary and "wall time: pretrain" in summary
    assert "peak memory: RSS" in summary and "best val loss" in summary


@pytest.mark.slow
def test_the_probe_does_not_change_the_trained_weights(cli_pretrain_run, tiny_cache: Path, tiny_cfg,
                                                       tmp_path: Path) -> None:
    from kidneyssl.training.pretrain import pretrain_siamese

    probed, _ = cli_pretrain_run  # the same config, with the probe
    pretrain_siamese(tiny_cache, tmp_path / "plain", tiny_cfg, device="cpu", plan=PlanOptions(announce=False))
    a = torch.load(probed / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "plain" / "last.pt", map_location="cpu", weights_only=False)
    assert a["epoch"] == b["epoch"] == tiny_cfg.pretrain.epochs - 1
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key


@pytest.mark.slow
def test_dry_run_writes_nothing(tiny_cache: Path, tiny_overrides: list[str], tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    sets = [arg for item in tiny_overrides for arg in ("--set", item)]
    out = tmp_path / "new"
    rc = main(["train", "--cache", str(tiny_cache), "--out", str(out), "--preset", "demo", *sets, "--device", "cpu",
               "--dry-run", "--no-probe"])
    err = capsys.readouterr().err
    assert rc == 0 and not out.exists()
    assert "train (segmentation)" in err and "validation: 2 x case" in err and "dry run" in err
    assert "run summary" not in err
    # a folder holding a run: --dry-run --force neither removes nor writes anything
    held = tmp_path / "held"
    held.mkdir()
    (held / "run.json").write_text('{"kind": "siamese", "status": "finished"}')
    before = {p.name: p.read_bytes() for p in held.iterdir()}
    rc = main(["pretrain", "--cache", str(tiny_cache), "--out", str(held), "--preset", "demo", *sets,
               "--device", "cpu", "--dry-run", "--force", "--no-probe"])
    assert rc == 0 and {p.name: p.read_bytes() for p in held.iterdir()} == before
    assert "estimate: none" in capsys.readouterr().err


@pytest.mark.slow
def test_experiment_wide_plan_from_fresh_models(tiny_cache: Path, tiny_cfg) -> None:
    """What ``run_experiment`` does: estimate each stage before any exists, print one plan."""
    import dataclasses

    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.training.plan import estimate_stage
    from kidneyssl.training.tasks import SegmentationTask
    from kidneyssl.training.tasks.side import SideTask

    ctx = init_distributed("cpu")
    side, seg = SideTask(tiny_cache), SegmentationTask(tiny_cache)
    for task in (side, seg):
        task.setup(tiny_cfg, None, None, ctx)
    split = seg.split
    rng = torch.get_rng_state().clone()
    pre = estimate_stage(side, ctx, name="pretrain")  # probed on a fresh model
    assert torch.equal(torch.get_rng_state(), rng)
    assert pre.seconds_per_epoch and pre.seconds_per_epoch > 0
    # (the segmentation probe runs in every train_segmentation test; here it is only planned)
    mws = estimate_stage(seg, ctx, name="MwS", probe=False)
    mws = dataclasses.replace(mws, seconds_per_iteration=2.0, seconds_per_val_unit=1.0)
    stages = [pre, mws, dataclasses.replace(mws, name="MwoS")]
    assert mws.iterations_per_epoch == 2 * len(split.train) and mws.val_units == len(split.val)
    assert pre.steps_per_epoch == tiny_cfg.pretrain.pairs_per_epoch // tiny_cfg.pretrain.batch_size
    assert remaining_after(stages, "pretrain") == pytest.approx(2 * mws.remaining_seconds)
    text = format_plan(stages)
    assert text.count("(segmentation)") == 2 and "pretrain (side)" in text and "total: ~" in text
