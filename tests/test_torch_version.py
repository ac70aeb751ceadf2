"""``import kidneyssl`` refuses a torch older than the floor in ``pyproject.toml`` (issue 19, item 9),
reading the installed version without importing torch."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path

import pytest

import kidneyssl


def _installed(monkeypatch, version: str | None) -> None:
    def fake(name: str) -> str:
        assert name == "torch"
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(importlib.metadata, "version", fake)


@pytest.mark.parametrize("version", ["2.4.1+cu121", "2.2.0", "1.13.1", "2.4.0a0+git1234"])
def test_an_older_torch_is_refused_in_one_line(monkeypatch, version: str) -> None:
    _installed(monkeypatch, version)
    with pytest.raises(ImportError) as err:
        kidneyssl._check_torch_version()
    message = str(err.value)
    assert f"torch {version} is installed" in message and "torch >= 2.5" in message and "\n" not in message


@pytest.mark.parametrize("version", ["2.5.0", "2.5.1+cu124", "2.13.0+cpu", "2.6.0.dev20241001", "3.0.0", None])
def test_the_floor_and_newer_are_accepted(monkeypatch, version: str | None) -> None:
    _installed(monkeypatch, version)
    kidneyssl._check_torch_version()


def test_import_kidneyssl_runs_the_check(monkeypatch) -> None:
    _installed(monkeypatch, "2.3.1")
    try:
        with pytest.raises(ImportError, match="torch 2.3.1 is installed"):
            importlib.reload(kidneyssl)
    finally:
        monkeypatch.undo()
        importlib.reload(kidneyssl)


def test_pyproject_pins_the_same_floor() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.findall(r'^\s*"(torch[^"]*)",', text, flags=re.M) == \
        ["torch>=" + ".".join(map(str, kidneyssl.TORCH_MIN_VERSION))]
