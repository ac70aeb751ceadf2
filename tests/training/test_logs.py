"""Training logs (issue 13): history.csv one row per epoch, steps.csv, TensorBoard events read back
with TensorBoard's own reader, CSV-only without tensorboard, resume truncation, ETA, run summary."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from kidneyssl.training.logs import CsvLog, EpochClock, RunLogger, format_run_summary, peak_memory
from kidneyssl.training.loop import EpochResult, StepStats


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _stage(epochs: int = 3, start_epoch: int = 0, steps: int = 2) -> dict:
    """The numbers a logger takes: a stage's name, epochs, start epoch and steps per epoch."""
    return {"name": "train", "epochs": epochs, "start_epoch": start_epoch, "steps_per_epoch": steps}


def _fake_epoch(logger: RunLogger, epoch: int, steps: int = 2) -> None:
    record = logger.on_step(epoch)
    for s in range(steps):
        record(StepStats(s, 0.5, {"dice_loss": 0.4}, 1e-3, 0.2, 0.01))
    logger.end_epoch({"epoch": epoch, "train_loss": 0.5, "val_dice": 0.7, "seconds": 1.0,
                      "val_dice_per_case": {"a": 0.7}}, EpochResult(0.5, {}, steps, steps, 0.4, 0.02))


def test_history_csv_has_one_row_per_epoch(cli_pretrain_run) -> None:
    run, _ = cli_pretrain_run
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    rows = _rows(run / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history] == [0, 1]
    for row, h in zip(rows, history):
        assert float(row["val_accuracy"]) == pytest.approx(h["val_accuracy"])
        assert float(row["lr"]) == pytest.approx(1e-3)
        assert float(row["step_seconds"]) > 0 and 0 <= float(row["data_seconds"]) <= float(row["step_seconds"])
    steps = _rows(run / "steps.csv")
    assert len(steps) == 2 * 4  # 8 pairs, batch 2: 4 optimiser steps per epoch
    assert [int(r["global_step"]) for r in steps] == list(range(1, 9))
    assert {"loss", "train_accuracy", "lr", "step_seconds", "data_seconds"} <= set(steps[0])


def test_tensorboard_events_read_back_with_its_own_reader(cli_pretrain_run) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = cli_pretrain_run
    assert list((run / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"epoch/val_loss", "epoch/val_accuracy", "epoch/lr", "step/loss", "step/data_seconds"} <= set(tags)
    assert [e.step for e in acc.Scalars("epoch/val_loss")] == [4, 8]
    assert len(acc.Scalars("step/loss")) == 8
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("epoch/val_accuracy")] == pytest.approx([h["val_accuracy"] for h in history])


def test_without_tensorboard_only_csv_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    logger = RunLogger(tmp_path, **_stage())
    assert not logger.tensorboard
    _fake_epoch(logger, 0)
    logger.close()
    assert not (tmp_path / "tb").exists()
    assert len(_rows(tmp_path / "history.csv")) == 1 and len(_rows(tmp_path / "steps.csv")) == 2
    assert "val_dice_per_case" not in _rows(tmp_path / "history.csv")[0]


def test_resume_drops_rows_of_epochs_not_in_the_checkpoint(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, **_stage(), tensorboard=False)
    for epoch in range(3):
        _fake_epoch(logger, epoch)
    logger.close()
    resumed = RunLogger(tmp_path, **_stage(start_epoch=1), tensorboard=False)  # last.pt after epoch 0
    assert [r["epoch"] for r in _rows(tmp_path / "history.csv")] == ["0"]
    assert [r["global_step"] for r in _rows(tmp_path / "steps.csv")] == ["1", "2"]
    _fake_epoch(resumed, 1)
    assert [r["epoch"] for r in _rows(tmp_path / "history.csv")] == ["0", "1"]
    assert [r["global_step"] for r in _rows(tmp_path / "steps.csv")] == ["1", "2", "3", "4"]
    # a fresh start (epoch 0) drops everything
    CsvLog(tmp_path / "history.csv", keep_below_epoch=0)
    assert not (tmp_path / "history.csv").exists()


def test_eta_line_gives_stage_and_experiment_end() -> None:
    clock = EpochClock("train", 3, later_seconds=7200.0)
    line = clock.line(0, 60.0)
    assert line.startswith("train epoch 1/3: elapsed") and "stage ends ~" in line and "2 min left" in line
    assert "experiment ends ~" in line and "2.0 h left" in line
    assert "stage done" in clock.line(2, 60.0)


def test_run_summary_lists_files_metrics_time_and_memory(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"x" * 2048)
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.1").write_bytes(b"")
    text = format_run_summary(tmp_path, {"train": 3700.0}, {"best val Dice": 0.9123, "best epoch": 4})
    assert "last.pt (2.0 KiB)" in text and "tensorboard --logdir" in text and "events.out" not in text
    assert "best val Dice 0.9123" in text and "train 62 min" in text and "peak memory: RSS" in text
    assert peak_memory()["rss_mib"] > 10
