"""Run folders: seeded split, refuse/force/resume rules, history truncation."""

from __future__ import annotations

from pathlib import Path

import pytest

from kidneyssl.config import load_preset, save_config
from kidneyssl.errors import RunFolderError
from kidneyssl.training.runfolder import RunFolder, begin_run

IDS = [f"case_{i:05d}" for i in range(10)]


def _with_epochs(cfg, epochs):  # what a segmentation task does for --extend-epochs
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))


def test_claim_refuses_other_run_unless_resume_or_force(tmp_path: Path) -> None:
    cfg = load_preset("demo")
    folder = RunFolder(tmp_path / "run")
    assert begin_run(folder, "segmentation", cfg, extend=_with_epochs, epochs_of=lambda c: c.train.epochs, resume=False, force=False,
                     extend_epochs=0, is_main=True) == (cfg, None)
    folder.path.mkdir()
    folder.write_info({"kind": "segmentation", "status": "running"})
    save_config(cfg, folder.config_path)
    (folder.path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="continue it, start over") as info:
        folder.claim("segmentation", resume=False, force=False)
    assert info.value.remedy == ("resume", "force", "out")
    with pytest.raises(RunFolderError, match="nothing to resume"):
        folder.claim("segmentation", resume=True, force=False)  # no last.pt yet
    folder.last.write_bytes(b"x")
    with pytest.raises(RunFolderError, match="not a 'pretrain' run"):
        folder.claim("pretrain", resume=True, force=False)
    with pytest.raises(RunFolderError, match="has not finished"):
        begin_run(folder, "segmentation", cfg, extend=_with_epochs, epochs_of=lambda c: c.train.epochs, resume=False, force=False,
                  extend_epochs=3, is_main=True)
    folder.write_info({"kind": "segmentation", "status": "finished"})
    extended, info = begin_run(folder, "segmentation", cfg, extend=_with_epochs, epochs_of=lambda c: c.train.epochs, resume=False, force=False,
                               extend_epochs=3, is_main=True)
    assert extended.train.epochs == cfg.train.epochs + 3 and info["status"] == "finished"
    cfg2, info = begin_run(folder, "segmentation", cfg, extend=_with_epochs, epochs_of=lambda c: c.train.epochs, resume=False, force=True,
                           extend_epochs=0, is_main=True)
    assert info is None
    assert not folder.last.exists() and not (folder.path / "run.json").exists()
    assert (folder.path / "notes.txt").read_text() == "mine"  # --force removes only run files


def test_history_truncation_drops_rows_after_last_checkpoint(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write_history([{"epoch": e, "train_loss": 1.0 / (e + 1)} for e in range(4)])
    with folder.history_path.open("a") as fh:
        fh.write('{"epoch": 4, "train_lo')  # torn line from a killed run
    assert [r["epoch"] for r in folder.read_history()] == [0, 1, 2, 3]
    assert [r["epoch"] for r in folder.truncate_history(2)] == [0, 1]
    assert [r["epoch"] for r in folder.read_history()] == [0, 1]
