"""Issue 20, items 11 and 12: one trainer per run folder (a lock file naming the owner's PID and
host; a stale one is taken over with a message), and SIGTERM ends a command like SIGINT: a message
saying how to resume, exit status 130, and ``run.json`` no longer ``running``."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kidneyssl.errors import RunFolderError
from kidneyssl.training.lock import LOCK_NAME, RunLock, _process_start, lock_owner
from kidneyssl.training.runfolder import RunFolder

from .conftest import TRAIN_SETS, start_cli


@pytest.fixture
def other_process():
    """A live process that is not this one (a sleeping child)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child
    child.kill()
    child.wait()


def _write_lock(folder, pid: int, host: str | None = None, proc_start: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                "started": "2026-01-01 00:00:00",
                                                "proc_start": proc_start or _process_start(pid)}))


def test_a_second_owner_is_refused_and_the_lock_released_on_exit(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        assert lock.acquired
        owner = json.loads((run / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["started"]
        assert lock_owner(run) is None  # ours: not "another process"
        with pytest.raises(RunFolderError, match="another process is training in this folder .*this process"):
            RunLock(run).acquire()  # a second trainer in this very process is refused too
    assert not (run / LOCK_NAME).exists()
    RunLock(run).release()  # never acquired: a no-op


def test_a_live_owner_is_refused_whatever_the_options(tmp_path, other_process):
    run = tmp_path / "run"
    _write_lock(run, other_process.pid)
    with pytest.raises(RunFolderError) as err:
        RunLock(run).acquire()
    assert f"another process is training in this folder (PID {other_process.pid} on {socket.gethostname()}" \
        in str(err.value) and err.value.remedy == ("out",)
    assert lock_owner(run)["pid"] == other_process.pid
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == other_process.pid  # untouched


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, other_process, caplog):
    run = tmp_path / "run"
    _write_lock(run, other_process.pid)
    other_process.kill()
    other_process.wait()
    with caplog.at_level(logging.WARNING, logger="kidneyssl.training.lock"):
        with RunLock(run):
            assert json.loads((run / LOCK_NAME).read_text())["pid"] != other_process.pid
    assert f"taking over the lock of PID {other_process.pid}" in caplog.text and "which has ended" in caplog.text


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path, other_process):
    run = tmp_path / "run"
    _write_lock(run, other_process.pid, proc_start="1")  # the owner's PID, now another process's
    with RunLock(run):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_refused_naming_the_file(tmp_path):
    run = tmp_path / "run"
    _write_lock(run, 12345, host="elsewhere.example")
    with pytest.raises(RunFolderError, match=f"PID 12345 on elsewhere.example.*remove {run / LOCK_NAME}"):
        RunLock(run).acquire()


def test_the_lock_file_does_not_make_the_folder_look_taken(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        assert folder.claim("segmentation", resume=False, force=False) is None


def test_mark_interrupted(tmp_path, other_process):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    assert not folder.mark_interrupted("resume it")  # no run.json
    folder.write_info({"kind": "segmentation", "status": "running"})
    _write_lock(folder.path, other_process.pid)
    assert not folder.mark_interrupted("resume it")  # another live process owns the run
    (folder.path / LOCK_NAME).unlink()
    assert folder.mark_interrupted("resume it")
    info = folder.info()
    assert info["status"] == "interrupted" and info["resume"] == "resume it" and info["interrupted_at"]
    assert folder.mark_interrupted("resume it with its command line")  # a later, more specific hint wins
    info2 = folder.info()
    assert info2["resume"] == "resume it with its command line" and info2["interrupted_at"] == info["interrupted_at"]
    folder.write_info({**info2, "status": "finished"})
    assert not folder.mark_interrupted("again")  # never a finished run


@pytest.mark.slow
def test_train_force_is_refused_while_another_process_trains_there(tmp_path, tiny_cache, other_process,
                                                                  kidneyssl):
    run = tmp_path / "run"
    _write_lock(run, other_process.pid)
    proc = kidneyssl("train", "-q", "--cache", tiny_cache, "--out", run, "--force", "--no-probe", *TRAIN_SETS,
                     "--set", "train.epochs=1", "--device", "cpu")
    assert proc.returncode == 2
    assert f"another process is training in this folder (PID {other_process.pid}" in proc.stderr
    assert not (run / "run.json").exists()


@pytest.mark.slow
def test_sigterm_ends_train_like_sigint_and_says_how_to_resume(tmp_path, tiny_cache):
    run = tmp_path / "run"
    child = start_cli("train", "--cache", tiny_cache, "--out", run, "--no-probe", "--yes", *TRAIN_SETS,
                      "--set", "train.epochs=200", "--device", "cpu")
    deadline = time.time() + 180
    while child.poll() is None and time.time() < deadline:
        try:
            if json.loads((run / "run.json").read_text()).get("status") == "running":
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    assert child.poll() is None, child.stdout.read().decode()
    time.sleep(0.5)  # inside the first epoch
    child.send_signal(signal.SIGTERM)
    out = child.communicate(timeout=120)[0].decode()
    assert child.returncode == 130, out
    assert f"kidneyssl train: interrupted (SIGTERM); continue it with: kidneyssl train --out {run} --resume" in out
    assert "Traceback" not in out
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and "--resume" in info["resume"]
    assert not (run / LOCK_NAME).exists()


def test_sigterm_handler_is_restored_after_main(kidneyssl, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    kidneyssl("check", "--data", tmp_path / "missing")
    assert signal.getsignal(signal.SIGTERM) is before
