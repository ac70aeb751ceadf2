"""Run folders: what a training run writes, how it refuses to clobber another run, and the split.

A run folder holds::

    run.json        {"kind", "status": "running"|"finished"|"interrupted", "cache", "init", ...}
    run.lock        the PID/host of the process training in the folder (while it runs;
                    :mod:`kidneyssl.training.lock`)
    config.yaml     the resolved ExperimentConfig of the run
    split.json      {"seed", "val_fraction", "test_fraction", "train", "val", "test"} (case ids)
    history.jsonl   one JSON object per finished epoch
    history.png     the history plot, refreshed every epoch
    history.csv, steps.csv, tb/   scalars per epoch / per step, TensorBoard events
                    (:mod:`kidneyssl.training.logs`)
    last.pt         checkpoint after every epoch (atomic), used by --resume
    best.pt         checkpoint of the best validation epoch

The split itself lives in :mod:`kidneyssl.training.split`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from kidneyssl.errors import RunFolderError
from kidneyssl.io.atomic import atomic_write_json, atomic_write_text
from kidneyssl.io.paths import remove_stale_temp_files
from kidneyssl.training.lock import LOCK_NAME, RunLock, lock_owner
from kidneyssl.training.split import Split, save_split

__all__ = ["RunFolder", "RUN_FILES"]

log = logging.getLogger(__name__)

#: Files a training run writes; ``--force`` removes exactly these (never anything else).
RUN_FILES = ("run.json", "config.yaml", "split.json", "history.jsonl", "history.png", "last.pt",
             "best.pt", "history.csv", "steps.csv")
#: Folders a training run writes (TensorBoard events; a pretraining run's located scans and their
#: cache, :mod:`kidneyssl.unlabeled.located`); ``--force`` removes these too.
RUN_DIRS = ("tb", "located", "unlabeled_cache")


class RunFolder:
    """One training run's folder (see the module docstring for its files)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).absolute()  # messages name absolute paths

    # -- paths --------------------------------------------------------------------------------
    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def history_path(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def split_path(self) -> Path:
        return self.path / "split.json"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    # -- state --------------------------------------------------------------------------------
    def info(self) -> dict[str, Any] | None:
        """``run.json`` as a dict, or None when the folder holds no run."""
        marker = self.path / "run.json"
        if not marker.is_file():
            return None
        try:
            return json.loads(marker.read_text())
        except ValueError as err:
            raise RunFolderError(f"{marker}: unreadable run marker ({err}); start over", remedy=("force",)) from err

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.path / "run.json", info)

    def begin(self, cfg: Any, split: "Split", info: dict[str, Any]) -> None:
        """Create the folder and write the resolved config, the split and ``run.json``."""
        from kidneyssl.config import save_config

        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_path)
        save_split(split, self.split_path)
        self.write_info(info)

    def is_finished(self, kind: str) -> bool:
        info = self.info()
        return bool(info and run_kind(info) == kind and info.get("status") == "finished"
                    and self.last.is_file())

    def claim(self, kind: str, *, resume: bool, force: bool) -> dict[str, Any] | None:
        """Check the folder may be used for a run of ``kind``; returns the existing ``run.json``
        when resuming. Call on every rank (read-only); only rank 0 should then write.

        Raises:
            RunFolderError: the folder holds another run (and neither ``resume`` nor ``force``),
                or ``resume`` finds no resumable run of this kind.
        """
        info = self.info()
        if resume:
            if info is None or not self.last.is_file():
                raise RunFolderError(f"{self.path}: nothing to resume (no run.json/last.pt); start a new run instead")
            if run_kind(info) != kind:
                raise RunFolderError(f"{self.path}: holds a {info.get('kind')!r} run, not a {kind!r} run")
            return info
        if force or not self.path.exists():
            return None
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path}: exists and is not a folder")
        if any(p.name != LOCK_NAME for p in self.path.iterdir()):  # our own lock, taken first
            what = f"a {info.get('kind')!r} run ({info.get('status')})" if info else "other files"
            raise RunFolderError(
                f"{self.path}: output folder already holds {what}; continue it, start over, or choose "
                "another output folder", remedy=("resume", "force", "out"))
        return None

    def lock(self) -> RunLock:
        """The folder's :class:`~kidneyssl.training.lock.RunLock` (``with folder.lock(): ...``)."""
        return RunLock(self.path)

    def mark_interrupted(self, resume_hint: str) -> bool:
        """Record in ``run.json`` that the run was interrupted (SIGINT/SIGTERM) and how to
        continue it, so that it never stays ``running``. Call on rank 0 from the trainer's
        ``except KeyboardInterrupt`` (then re-raise).

        Nothing is written when ``run.json`` is absent or neither ``running`` nor already
        ``interrupted`` (a later, more specific hint replaces an earlier one: the CLI's names its
        command line), or when another live process holds the folder's lock (its run is not ours
        to mark).

        Returns:
            True when ``run.json`` was updated.
        """
        info = self.info() if (self.path / "run.json").is_file() else None
        if not info or info.get("status") not in ("running", "interrupted") or lock_owner(self.path) is not None:
            return False
        when = info.get("interrupted_at") or time.strftime("%Y-%m-%d %H:%M:%S")
        self.write_info({**info, "status": "interrupted", "interrupted_at": when, "resume": resume_hint})
        return True

    def unstarted_inputs(self, kind: str) -> dict[str, Any] | None:
        """For a ``kind`` run stopped before its first checkpoint (``run.json``, no ``last.pt``):
        what it was started with (``cache``, ``init``, ``split`` file), so that ``--resume`` can
        start it again from the beginning; ``None`` for any other folder."""
        info = self.info()
        if info is None or run_kind(info) != kind or self.last.is_file():
            return None
        return {"cache": info.get("cache"), "init": info.get("init", "scratch"),
                "split": str(self.split_path) if self.split_path.is_file() else None}

    def reset(self) -> None:
        """Remove the files a run writes (``--force``); other files in the folder are kept."""
        for name in RUN_FILES:
            target = self.path / name
            if target.is_file():
                target.unlink()
        remove_stale_temp_files(self.path)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    # -- history ------------------------------------------------------------------------------
    def read_history(self) -> list[dict[str, Any]]:
        if not self.history_path.is_file():
            return []
        rows = []
        for line in self.history_path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a torn last line from a killed run
                    break
        return rows

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``history.jsonl`` (atomic) with ``rows``."""
        atomic_write_text(self.history_path, "".join(json.dumps(r) + "\n" for r in rows))

    def truncate_history(self, epochs_done: int) -> list[dict[str, Any]]:
        """Keep rows of epochs ``< epochs_done`` (rows written after the last checkpoint go)."""
        rows = [r for r in self.read_history() if int(r.get("epoch", -1)) < epochs_done]
        self.write_history(rows)
        return rows


def run_kind(info: dict[str, Any] | None) -> str | None:
    """The kind of a ``run.json`` (``siamese`` runs of earlier versions are ``pretrain`` runs)."""
    if not info:
        return None
    from kidneyssl.io.checkpoint import LEGACY_KINDS

    kind = str(info.get("kind"))
    return LEGACY_KINDS.get(kind, kind)


def begin_run(folder: RunFolder, kind: str, cfg: Any, *, extend: Callable[[Any, int], Any],
              epochs_of: Callable[[Any], int], resume: bool, force: bool, extend_epochs: int,
              is_main: bool) -> tuple[Any, dict[str, Any] | None]:
    """Decide the config of a run about to start, resume or be extended.

    Args:
        folder: the run folder.
        kind: ``"pretrain"`` or ``"segmentation"``.
        cfg: the ExperimentConfig resolved from the command line (used for a new run).
        extend: ``(config, epochs) -> config`` with the method's epoch count set; epochs_of:
            the method's epoch count of a config.
        resume: continue an interrupted run exactly, with the run's saved ``config.yaml``.
        force: start over in a folder that holds a run (its run files are removed).
        extend_epochs: continue a run with this many more epochs (the loss-weight schedule is
            stretched over the new total from the next epoch on); 0 for no extension.
        is_main: whether this process may remove files (rank 0, not a dry run).

    Returns:
        ``(config to use, run.json of the existing run or None for a new run)``.

    A ``resume`` of a run stopped before its first checkpoint (no ``last.pt``) returns its saved
    config and ``None``: the run starts again from the beginning.

    Raises:
        RunFolderError: see :meth:`RunFolder.claim`; also ``extend_epochs`` on an unfinished run.
    """
    from kidneyssl.config import load_config

    if resume and extend_epochs:
        raise RunFolderError("resuming and extending a run are separate modes; use one",
                             remedy=("resume", "extend_epochs"))
    if extend_epochs < 0:
        raise RunFolderError(f"the number of epochs to extend by must be positive, got {extend_epochs}",
                             remedy=("extend_epochs",))
    if resume and not force and folder.unstarted_inputs(kind) is not None:
        # Stopped in its first epoch: nothing to restore, so start again with the saved config
        # (the caller passes the run's cache, init and split: RunFolder.unstarted_inputs).
        saved = load_config(folder.config_path)
        log.warning("%s: the run stopped before its first checkpoint; starting it again from "
                    "epoch 1 with its saved config.yaml", folder.path)
        if is_main:
            remove_stale_temp_files(folder.path)
            for name in ("history.jsonl", "history.png", "best.pt"):
                (folder.path / name).unlink(missing_ok=True)
        return saved, None
    info = folder.claim(kind, resume=resume or extend_epochs > 0, force=force)
    if info is None:
        if force and is_main and folder.path.is_dir():
            folder.reset()
        return cfg, None
    if is_main:
        remove_stale_temp_files(folder.path)  # left by the killed run
    saved = load_config(folder.config_path)
    if extend_epochs:
        if info.get("status") != "finished":
            raise RunFolderError(f"{folder.path}: the run has not finished; resume it first",
                                 remedy=("resume",))
        saved = extend(saved, epochs_of(saved) + extend_epochs)
        log.info("extending %s by %d epochs to %d (loss schedule recomputed over the new total)",
                 folder.path, extend_epochs, epochs_of(saved))
    else:
        log.info("resuming %s with its saved config.yaml", folder.path)
    return saved, info


__all__ += ["begin_run", "run_kind"]
