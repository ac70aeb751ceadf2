"""Training logs the field's tools read, the ETA line per epoch, and the run summary.

A training stage writes, beside ``history.jsonl`` in its run folder:

    history.csv   one row per epoch: the history row's scalars (losses, Dice or pair accuracy,
                  loss weights, seconds) plus ``lr``, ``step_seconds`` and ``data_seconds`` (mean
                  wall and data-loading time per optimiser step on rank 0)
    steps.csv     one row per optimiser step: ``epoch``, ``step``, ``global_step``, ``loss``, the
                  loss parts (e.g. ``train_accuracy`` for pretraining), ``lr``, ``step_seconds``,
                  ``data_seconds``
    tb/           TensorBoard event files (only when ``tensorboard`` is installed): the same
                  scalars as ``step/<name>`` and ``epoch/<name>``, against the global optimiser
                  step (``tensorboard --logdir RUN``; an experiment's folder shows one run per stage)

On resume both CSVs drop the rows of epochs not covered by ``last.pt`` (as ``history.jsonl``
does), and TensorBoard purges events from the resumed global step on.

:class:`RunLogger` is the one object a training loop holds (rank 0 writes; other ranks get a
no-op). :func:`format_run_summary` is what every command prints at its end.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from kidneyssl.io.atomic import atomic_write_text
from kidneyssl.progress import format_clock, format_duration
from kidneyssl.training.loop import EpochResult, StepStats

__all__ = ["RunLogger", "EpochClock", "CsvLog", "peak_memory", "format_run_summary", "LOG_FILES",
           "TENSORBOARD_DIR"]

log = logging.getLogger(__name__)

#: Files the logger writes in a run folder (``--force`` removes them).
LOG_FILES = ("history.csv", "steps.csv")
#: Sub-folder of the TensorBoard event files.
TENSORBOARD_DIR = "tb"


def _scalars(row: Mapping[str, Any]) -> dict[str, float | int]:
    """The numeric, finite-or-not scalar entries of a row (dicts, lists and strings left out)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class CsvLog:
    """An append-only CSV whose columns are fixed by its first row (later extra keys are ignored,
    missing ones left empty). Opening keeps only the rows with ``epoch < keep_below_epoch``."""

    def __init__(self, path: str | Path, keep_below_epoch: int = 0) -> None:
        self.path = Path(path)
        self.fields: list[str] | None = None
        if self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                fields = list(reader.fieldnames or [])
                kept = [r for r in reader if _epoch(r) < keep_below_epoch]
            if kept and fields:
                self.fields = fields
                atomic_write_text(self.path, self._render(kept, header=True))
            else:
                self.path.unlink()

    def _render(self, rows: Sequence[Mapping[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields or [], extrasaction="ignore", restval="",
                                lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def append(self, row: Mapping[str, Any]) -> None:
        header = self.fields is None
        if header:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            f.write(self._render([row], header=header))


def _epoch(row: Mapping[str, Any]) -> int:
    try:
        return int(float(row.get("epoch", "")))
    except ValueError:
        return sys.maxsize


def _open_tensorboard(path: Path, purge_step: int | None) -> Any:
    """A ``SummaryWriter`` in ``path``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard is not installed: CSV logs only (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(path), purge_step=purge_step)


class EpochClock:
    """The per-epoch ETA line: elapsed time, estimated end of the stage and of the experiment.

    The remaining time of the stage is the mean measured epoch time (the first epoch, which
    carries warm-up, is dropped once later ones exist) times the epochs left; the experiment's
    end adds ``later_seconds``, the caller's estimate of the stages after this one.

    Args:
        name: the stage's name as shown; epochs: its total epochs.
    """

    def __init__(self, name: str, epochs: int, later_seconds: float = 0.0,
                 now: Callable[[], float] = time.perf_counter) -> None:
        self.name = name
        self.epochs = int(epochs)
        self.later_seconds = float(later_seconds)
        self._now = now
        self._t0 = now()
        self._epoch_seconds: list[float] = []

    def line(self, epoch: int, seconds: float) -> str:
        """The line after epoch ``epoch`` (0-based) took ``seconds``."""
        self._epoch_seconds.append(float(seconds))
        measured = self._epoch_seconds[1:] or self._epoch_seconds
        left_epochs = max(self.epochs - (epoch + 1), 0)
        stage_left = sum(measured) / len(measured) * left_epochs
        text = (f"{self.name} epoch {epoch + 1}/{self.epochs}: elapsed "
                f"{format_duration(self._now() - self._t0)}; ")
        text += (f"stage ends ~{format_clock(stage_left)} ({format_duration(stage_left)} left)" if left_epochs
                 else "stage done")
        if self.later_seconds > 0:
            text += (f"; experiment ends ~{format_clock(stage_left + self.later_seconds)} "
                     f"({format_duration(stage_left + self.later_seconds)} left)")
        return text


class RunLogger:
    """Per-step and per-epoch scalars of one stage (CSV, TensorBoard) and the ETA line.

    Args:
        run_dir: the stage's run folder (must exist).
        name: the stage's name as shown; epochs: its total epochs; start_epoch: epochs already
            done (resume); steps_per_epoch: optimiser steps per epoch on one rank (the global
            step of a resumed run).
        enabled: False on non-zero ranks: nothing is written or logged.
        later_seconds: remaining work of later stages, for the experiment's ETA.
        tensorboard: write event files when tensorboard is installed.

    Use::

        logger = RunLogger(folder.path, name="train", epochs=200, start_epoch=0, steps_per_epoch=336,
                           enabled=ctx.is_main)
        result = train_one_epoch(..., on_step=logger.on_step(epoch))
        logger.end_epoch(row, result, optimizer)    # history.csv, TensorBoard, ETA line
        logger.close()
    """

    def __init__(self, run_dir: str | Path, *, name: str, epochs: int, start_epoch: int = 0,
                 steps_per_epoch: int = 0, enabled: bool = True, later_seconds: float = 0.0,
                 tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.clock = EpochClock(name, epochs, later_seconds)
        self.global_step = int(start_epoch) * int(steps_per_epoch)
        self._epoch = int(start_epoch)
        self._tb = None
        if not enabled:
            return
        self._steps = CsvLog(self.run_dir / "steps.csv", keep_below_epoch=start_epoch)
        self._epochs = CsvLog(self.run_dir / "history.csv", keep_below_epoch=start_epoch)
        if tensorboard:
            self._tb = _open_tensorboard(self.run_dir / TENSORBOARD_DIR,
                                         purge_step=self.global_step if start_epoch else None)

    @property
    def tensorboard(self) -> bool:
        """True when event files are being written."""
        return self._tb is not None

    def on_step(self, epoch: int) -> Callable[[StepStats], None]:
        """The ``on_step`` callback for ``train_one_epoch`` of epoch ``epoch``."""
        self._epoch = epoch

        def record(stats: StepStats) -> None:
            self.global_step += 1
            if not self.enabled:
                return
            row = {"epoch": epoch, "step": stats.step, "global_step": self.global_step, "loss": stats.loss,
                   **stats.parts, "lr": stats.lr, "step_seconds": stats.seconds,
                   "data_seconds": stats.data_seconds}
            self._steps.append(row)
            if self._tb is not None:
                for key, value in row.items():
                    if key not in ("epoch", "step", "global_step"):
                        self._tb.add_scalar(f"step/{key}", value, self.global_step)

        return record

    def end_epoch(self, row: Mapping[str, Any], result: EpochResult | None = None, optimizer: Any = None) -> None:
        """Append the epoch's scalars to history.csv and TensorBoard, and log the ETA line.

        Args:
            row: the epoch's history row (``epoch`` and ``seconds`` are used for the ETA).
            result: the epoch's :class:`EpochResult` (for per-step wall and loading times).
            optimizer: for the learning rate.
        """
        if not self.enabled:
            return
        scalars = _scalars(row)
        if optimizer is not None:
            scalars["lr"] = float(optimizer.param_groups[0]["lr"])
        if result is not None and result.steps:
            scalars["step_seconds"] = result.seconds / result.steps
            scalars["data_seconds"] = result.data_seconds / result.steps
        self._epochs.append(scalars)
        if self._tb is not None:
            for key, value in scalars.items():
                if key != "epoch":
                    self._tb.add_scalar(f"epoch/{key}", value, self.global_step)
            self._tb.flush()
        epoch = int(row.get("epoch", self._epoch))
        seconds = float(row.get("seconds", result.seconds if result is not None else 0.0))
        log.info("%s", self.clock.line(epoch, seconds))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def peak_memory(device: Any = None) -> dict[str, float]:
    """Peak memory of this process in MiB: ``rss_mib`` (``resource.getrusage``) and, when CUDA
    is in use, ``cuda_mib`` (``torch.cuda.max_memory_allocated``)."""
    out: dict[str, float] = {}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["rss_mib"] = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    except (ImportError, OSError):  # pragma: no cover - Windows
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        dev = device if device is not None and str(device).startswith("cuda") else None
        out["cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def format_run_summary(run_dir: str | Path, stage_seconds: Mapping[str, float],
                       metrics: Mapping[str, Any], device: Any = None) -> str:
    """What a command wrote where, its best/last metrics, wall time per stage and peak memory.

    Args:
        run_dir: the run (or experiment) folder; its files are listed (TensorBoard folders as one
            entry).
        stage_seconds: wall seconds per stage name.
        metrics: headline numbers, e.g. ``{"best val Dice": 0.91, "best epoch": 12}``.
        device: the training device (for CUDA peak memory).
    """
    run_dir = Path(run_dir)
    lines = [f"run summary: {run_dir}"]
    if run_dir.is_dir():
        files = []
        for path in sorted(run_dir.rglob("*")):
            rel = path.relative_to(run_dir)
            if path.is_file() and TENSORBOARD_DIR not in rel.parts[:-1] and not path.name.startswith("."):
                files.append(f"{rel} ({_size(path.stat().st_size)})")
        tb = [p for p in run_dir.rglob(TENSORBOARD_DIR) if p.is_dir()]
        files += [f"{p.relative_to(run_dir)}/ (TensorBoard: tensorboard --logdir {run_dir})" for p in tb]
        lines.append("  wrote: " + ", ".join(files))
    if metrics:
        lines.append("  metrics: " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
    if stage_seconds:
        lines.append("  wall time: " + ", ".join(f"{k} {format_duration(v)}" for k, v in stage_seconds.items()))
    mem = peak_memory(device)
    if mem:
        parts = [f"RSS {mem['rss_mib']:.0f} MiB"] if "rss_mib" in mem else []
        if "cuda_mib" in mem:
            parts.append(f"CUDA allocated {mem['cuda_mib']:.0f} MiB")
        lines.append("  peak memory: " + ", ".join(parts))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def is_main_process() -> bool:
    """Rank 0 (or no launcher): the process that prints summaries."""
    return int(os.environ.get("RANK", "0")) == 0


__all__.append("is_main_process")
