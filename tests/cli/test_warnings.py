"""Third-party warnings checked to be harmless never reach the terminal of a ``kidneyssl`` run
(``kidneyssl.cli._common.silence_known_warnings``); any other warning still does."""

from __future__ import annotations

import os
import subprocess
import sys

# A verb whose run raises torch's DataLoader warning (verbatim, torch 2.13) and an unrelated one,
# run through the real entry point in a fresh interpreter (pytest would record warnings itself).
SCRIPT = """
import sys, warnings
import kidneyssl.cli.check as check

def run(args):
    warnings.warn("This DataLoader will create 4 worker processes in total. Our suggested max number of worker "
                  "in current system is 2, which is smaller than what this DataLoader is going to create.",
                  UserWarning)
    warnings.warn("something else is off", UserWarning)
    return 0

check.run = run
from kidneyssl.cli.main import main
sys.exit(main(["check", "--data", "."]))
"""


def _run(*python_flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, *python_flags, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)


def test_known_harmless_warnings_are_silenced_and_others_are_not():
    done = _run()
    assert done.returncode == 0, done.stderr
    assert "This DataLoader will create" not in done.stderr
    assert "UserWarning: something else is off" in done.stderr


def test_a_user_who_asks_for_warnings_sees_them_all():
    done = _run("-W", "default")
    assert done.returncode == 0, done.stderr
    assert "This DataLoader will create" in done.stderr and "something else is off" in done.stderr


def test_every_known_warning_says_why_it_is_harmless():
    import inspect

    from kidneyssl.cli import _common

    source = inspect.getsource(_common)
    block = source[source.index("KNOWN_WARNINGS: tuple"):source.index("def silence_known_warnings")]
    lines = block.splitlines()
    for message, category in _common.KNOWN_WARNINGS:
        assert issubclass(category, Warning)
        at = next(i for i, line in enumerate(lines) if message[:20] in line)
        assert lines[at - 1].strip().startswith("#"), f"no comment above {message!r}"
