"""Segmentation training (MwS/MwoS) on the tiny phantom cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyssl.errors import CheckpointError, KidneySSLError
from kidneyssl.io.checkpoint import load_checkpoint
from kidneyssl.training.split import Split, load_split


@pytest.fixture(scope="module")
def mwos_run(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path, tiny_cfg):
    from kidneyssl.reporting.figures import refresh_history_plot
    from kidneyssl.training.finetune import train_segmentation

    # the epoch hook is how history.png is refreshed (training never imports reporting)
    return train_segmentation(tiny_cache, tmp_path_factory.mktemp("mwos") / "run", tiny_cfg, device="cpu",
                              on_epoch=refresh_history_plot)


def test_training_writes_history_checkpoints_and_plot(mwos_run, tiny_cfg) -> None:
    run = mwos_run.run_dir
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        assert {"train_loss", "val_dice", "w_bce", "w_dice", "seconds", "val_dice_per_case", "pos_weight"} <= set(r)
        assert 0.0 <= r["val_dice"] <= 1.0 and len(r["val_dice_per_case"]) == 2
        assert r["val_dice"] == pytest.approx(np.mean(list(r["val_dice_per_case"].values())))
    # the paper's schedule: 0.6/0.4 at the first epoch, the configured end at the last
    assert (rows[0]["w_bce"], rows[0]["w_dice"]) == pytest.approx((0.6, 0.4))
    assert (rows[-1]["w_bce"], rows[-1]["w_dice"]) == pytest.approx((0.1, 0.9))
    last = load_checkpoint(run / "last.pt", kind="segmentation")
    best = load_checkpoint(run / "best.pt", kind="segmentation")
    assert last["epoch"] == 1 and best["metrics"]["val_dice"] == pytest.approx(max(r["val_dice"] for r in rows))
    assert last["config"]["preprocess"]["spacing_mm"] == [12.0, 6.0, 6.0]  # predict needs nothing else
    assert (run / "history.png").stat().st_size > 0 and (run / "config.yaml").is_file()
    split = json.loads((run / "split.json").read_text())
    assert split["val"] == list(rows[0]["val_dice_per_case"])
    assert mwos_run.best_dice == pytest.approx(best["metrics"]["val_dice"])


def test_mws_starts_from_the_siamese_encoder(pretrain_run: Path, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.training.tasks import SegmentationTask

    task = SegmentationTask(tiny_cache, pretrain_run / "split.json", init=str(pretrain_run / "best.pt"))
    task.setup(tiny_cfg, None, None, init_distributed("cpu"))
    model = task.build_model()
    report = task.initialize(model)
    assert report is not None and report["method"] == "side" and report["parts"] == "encoder"
    assert report["loaded"] > 0 and report["missing"] == [] and report["held_out_cases_touched"] == []
    assert set(report["touched_cases"]) == set(load_split(pretrain_run / "split.json").train)
    siamese = load_checkpoint(pretrain_run / "best.pt")["model_state"]
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, siamese[f"encoder.{key}"])


def test_init_from_another_architecture_fails_before_training(pretrain_run: Path, mwos_run, tiny_cache: Path,
                                                              tiny_cfg, tmp_path: Path) -> None:
    from kidneyssl.config import apply_overrides
    from kidneyssl.training.finetune import train_segmentation

    wider = apply_overrides(tiny_cfg, ["model.growth_rate=6"])
    with pytest.raises(CheckpointError, match="do not fit this network"):
        train_segmentation(tiny_cache, tmp_path / "run", wider, init=str(pretrain_run / "best.pt"), device="cpu")
    assert not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(CheckpointError, match="expected a pretrain checkpoint"):
        train_segmentation(tiny_cache, tmp_path / "run2", tiny_cfg, init=str(mwos_run.run_dir / "best.pt"),
                           device="cpu")


def test_too_few_validation_cases_fail_before_training(tiny_cache: Path, tiny_cfg, tmp_path: Path) -> None:
    from kidneyssl.config import apply_overrides
    from kidneyssl.training.finetune import train_segmentation

    with pytest.raises(KidneySSLError, match="at least 2 are needed"):
        train_segmentation(tiny_cache, tmp_path / "run", apply_overrides(tiny_cfg, ["train.val_fraction=0.1"]),
                           device="cpu")
    assert not (tmp_path / "run").exists()


def test_extend_epochs_continues_a_finished_run(mwos_run, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.training.finetune import train_segmentation

    result = train_segmentation(None, mwos_run.run_dir, tiny_cfg, extend_epochs=1, device="cpu")
    rows = result.history
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["w_bce"] == pytest.approx(0.1)  # schedule over the new total of 3 epochs
    assert load_checkpoint(mwos_run.run_dir / "last.pt")["epoch"] == 2


def test_pos_weight_auto_is_computed_from_the_training_halves_and_recorded(mwos_run, tiny_cache: Path,
                                                                         tiny_cfg) -> None:
    from kidneyssl.data.cache import open_cache
    from kidneyssl.data.segmentation import HalfVolumeDataset, foreground_fraction
    from kidneyssl.training.finetune import resolve_pos_weight

    info = json.loads((mwos_run.run_dir / "run.json").read_text())
    split = load_split(mwos_run.run_dir / "split.json")
    dataset = HalfVolumeDataset(open_cache(tiny_cache), list(split.train), context=3)
    f = foreground_fraction(dataset)
    assert tiny_cfg.train.pos_weight == "auto"
    assert info["pos_weight"] == pytest.approx(np.sqrt((1 - f) / f)) and info["pos_weight"] > 1
    assert load_checkpoint(mwos_run.run_dir / "last.pt")["pos_weight"] == pytest.approx(info["pos_weight"])
    from kidneyssl.config import apply_overrides

    assert resolve_pos_weight(apply_overrides(tiny_cfg, ["train.pos_weight=2.5"]), dataset) == 2.5


def test_init_refuses_a_checkpoint_that_touched_held_out_cases(pretrain_run: Path, tiny_cache: Path, tiny_cfg,
                                                               tmp_path: Path) -> None:
    from kidneyssl.training.finetune import train_segmentation
    from kidneyssl.training.split import check_touched_cases, save_split

    split = load_split(pretrain_run / "split.json")
    touched = sorted(load_checkpoint(pretrain_run / "best.pt")["touched_cases"])
    # a split whose validation cases are cases the siamese network was trained on
    leaky = Split(tuple(sorted(set(split.train) - set(touched[:2]) | set(split.val))), tuple(touched[:2]), 0, 0.34)
    save_split(leaky, tmp_path / "leaky.json")
    with pytest.raises(CheckpointError, match="holds out"):
        train_segmentation(tiny_cache, tmp_path / "run", tiny_cfg, init=str(pretrain_run / "best.pt"),
                           split_file=tmp_path / "leaky.json", device="cpu")
    assert not (tmp_path / "run" / "last.pt").exists()
    assert check_touched_cases("x.pt", touched, leaky, allow_overlap=True) == touched[:2]
    assert check_touched_cases("x.pt", touched, split) == []
    with pytest.raises(CheckpointError, match="does not record"):
        check_touched_cases("x.pt", None, split)


def test_a_config_asking_for_more_workers_than_cpus_runs_with_the_cpus_and_says_so(
        tiny_cache: Path, tiny_cfg, tmp_path: Path, monkeypatch, caplog) -> None:
    """train.num_workers=4 on a 2-CPU affinity mask: 2 reader processes each epoch, one log line."""
    import logging
    import os

    import torch.utils.data

    from kidneyssl.config import apply_overrides
    from kidneyssl.training.finetune import train_segmentation

    asked: list[int] = []

    class Loader(torch.utils.data.DataLoader):  # records the count, reads in-process (no processes here)
        def __init__(self, *args, num_workers=0, prefetch_factor=None, multiprocessing_context=None, **kwargs):
            asked.append(num_workers)
            super().__init__(*args, num_workers=0, **kwargs)

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(torch.utils.data, "DataLoader", Loader)
    cfg = apply_overrides(tiny_cfg, ["train.num_workers=4"])
    with caplog.at_level(logging.INFO, logger="kidneyssl"):
        train_segmentation(tiny_cache, tmp_path / "run", cfg, device="cpu")
    assert asked == [2] * cfg.train.epochs
    said = [r.getMessage() for r in caplog.records if "reader processes" in r.getMessage()]
    assert said == ["data loader: 2 reader processes instead of the 4 asked for (2 CPUs available to this process)"]


def test_resume_on_another_world_size_is_refused_unless_allowed(mwos_run, tmp_path: Path, tiny_cfg) -> None:
    """A run saved by 2 processes resumed by 1: the batch layout and data order would change, so
    it is refused (naming the remedy) unless asked; every checkpoint records its world size."""
    import shutil

    from kidneyssl.errors import RunFolderError
    from kidneyssl.training.finetune import train_segmentation

    assert load_checkpoint(mwos_run.run_dir / "last.pt")["world_size"] == 1
    run = tmp_path / "run"
    shutil.copytree(mwos_run.run_dir, run)
    payload = torch.load(run / "last.pt", weights_only=True)
    payload["epoch"], payload["world_size"] = 0, 2  # as if interrupted after epoch 1 of a 2-process run
    torch.save(payload, run / "last.pt")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    with pytest.raises(RunFolderError, match="saved by 2 process") as err:
        train_segmentation(None, run, tiny_cfg, resume=True, device="cpu")
    assert err.value.remedy == ("allow_world_size_change",)
    result = train_segmentation(None, run, tiny_cfg, resume=True, device="cpu", allow_world_size_change=True)
    # the fixture run may have been extended by an earlier test: resumed to the end of whatever it saved
    total = load_checkpoint(mwos_run.run_dir / "last.pt")["epoch"] + 1
    assert total >= 2 and [r["epoch"] for r in result.history] == list(range(total))
