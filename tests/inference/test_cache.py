"""The user's cache folder: where it is, atomic JSON and folder publishing, pruning."""

from __future__ import annotations

import os
import time

from kidneyssl.inference import cache


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine" and cache.cache_dir("openvino") == tmp_path / "mine" / "openvino"
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "kidneyssl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir().parts[-2:] == (".cache", "kidneyssl")


def test_json_round_trip_and_misses(tmp_path):
    path = tmp_path / "a" / "b.json"
    assert cache.read_json(path) is None
    cache.write_json(path, {"x": 1})
    assert cache.read_json(path) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temporary file left
    path.write_text("[1, 2]")
    assert cache.read_json(path) is None


def test_publish_folder_is_all_or_nothing_and_first_writer_wins(tmp_path):
    target = tmp_path / "entry"

    def fill(folder):
        (folder / "model.xml").write_text("one")

    cache.publish_folder(target, fill)
    assert (target / "model.xml").read_text() == "one"
    cache.publish_folder(target, lambda folder: (folder / "model.xml").write_text("two"))  # lost race
    assert (target / "model.xml").read_text() == "one"

    def broken(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("export failed")

    try:
        cache.publish_folder(tmp_path / "broken", broken)
    except RuntimeError:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_prune_keeps_the_most_recently_used(tmp_path):
    for i in range(4):
        (tmp_path / f"e{i}").mkdir()
        os.utime(tmp_path / f"e{i}", (time.time() - 100 + i, time.time() - 100 + i))
    os.utime(tmp_path / "e0")  # used just now
    cache.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0", "e3"]
