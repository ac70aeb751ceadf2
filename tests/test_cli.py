"""The kidneyssl executable: verbs, --help, --version, --quiet/--verbose, error exit codes."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from kidneyssl import __version__
from kidneyssl.cli.main import COMMANDS, build_parser, main

VERBS = ["synth", "check", "prepare", "pretrain", "train", "experiment", "demo", "predict", "locate", "export", "evaluate"]


def test_every_contract_verb_is_registered():
    assert list(COMMANDS) == VERBS
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(VERBS)


def test_console_script_help_and_version():
    out = subprocess.run([sys.executable, "-m", "kidneyssl.cli.main", "--version"], capture_output=True,
                         text=True, check=True)
    assert __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "kidneyssl.cli.main", "--help"], capture_output=True,
                         text=True, check=True)
    for verb in VERBS:
        assert verb in out.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 1
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("flag, level", [("--quiet", logging.WARNING), ("--verbose", logging.DEBUG)])
def test_quiet_and_verbose_set_the_log_level(tmp_path, flag, level):
    main(["check", flag, "--data", str(tmp_path / "missing")])
    assert logging.getLogger("kidneyssl").level == level


def test_library_errors_become_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["prepare", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "cache")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("kidneyssl prepare: error:")
    assert "nowhere" in err
    assert "Traceback" not in err
