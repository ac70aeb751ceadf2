"""Precision ``auto`` by measurement: asked precisions pass through, CPUs without native bf16 run
float32 unprobed, and the probe's decision is cached per machine (and re-measured elsewhere)."""

from __future__ import annotations

import json

import pytest

import kidneyssl.inference.precision as precision
from kidneyssl.inference.cache import cache_dir


@pytest.fixture
def fake_probe(monkeypatch, tmp_path):
    """A CPU with native bf16, an empty cache folder, and probe timings set by the test
    (``times["fp32"]``, ``times["bf16"]``); ``calls`` counts the probes."""
    monkeypatch.setenv("KIDNEYSSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    times = {"fp32": 2.0, "bf16": 1.0}
    calls: list[tuple[str, ...]] = []

    def best_times(runs, rounds=3):
        calls.append(tuple(runs))
        return {name: times[name] for name in runs}

    monkeypatch.setattr(precision, "_best_times", best_times)
    return times, calls


def probe(_: str):
    return lambda: None


def test_asked_precision_is_kept_and_auto_without_native_bf16_is_fp32(monkeypatch):
    assert precision.choose_precision("fp32", "cpu", probe=probe).precision == "fp32"
    assert precision.choose_precision("bf16", "cpu", probe=probe).reason == "asked"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    choice = precision.choose_precision("auto", "cpu", probe=probe)
    assert (choice.precision, choice.reason, choice.speedup) == ("fp32", "no native bf16", None)
    with pytest.raises(ValueError, match="precision"):
        precision.choose_precision("fp16", "cpu")


def test_probe_decides_once_per_machine_and_the_decision_is_cached(fake_probe, monkeypatch, caplog):
    times, calls = fake_probe
    with caplog.at_level("DEBUG", logger="kidneyssl"):
        first = precision.choose_precision("auto", "cpu", backend="openvino", probe=probe, threads=2, model_key="net")
    assert (first.precision, first.reason) == ("bf16", "measured")
    assert first.speedup == pytest.approx(2.0) and "2.00x" in caplog.text  # the ratio is reported
    assert len(calls) == 1
    saved = json.loads(next((cache_dir("precision")).glob("openvino-*.json")).read_text())
    assert saved["precision"] == "bf16" and saved["key"]["threads"] == 2 and saved["key"]["cpu"]

    times.update(fp32=1.0, bf16=5.0)  # would now say fp32, but the cached decision stands
    again = precision.choose_precision("auto", "cpu", backend="openvino", probe=probe, threads=2, model_key="net")
    assert (again.precision, again.reason, again.speedup) == ("bf16", "cached", pytest.approx(2.0))
    assert len(calls) == 1

    # another machine, thread count, backend or network: measured again
    monkeypatch.setattr(precision, "cpu_model_name", lambda cpuinfo=None: "another CPU")
    other = precision.choose_precision("auto", "cpu", backend="openvino", probe=probe, threads=2, model_key="net")
    assert (other.precision, other.reason) == ("fp32", "measured") and len(calls) == 2
    precision.choose_precision("auto", "cpu", backend="torch", probe=probe, threads=2, model_key="net")
    precision.choose_precision("auto", "cpu", backend="torch", probe=probe, threads=1, model_key="net")
    assert len(calls) == 4


def test_bf16_must_be_clearly_faster(fake_probe):
    times, _ = fake_probe
    times.update(fp32=1.05, bf16=1.0)  # 5 % is within timing noise
    assert precision.choose_precision("auto", "cpu", probe=probe, model_key="a").precision == "fp32"
    times.update(fp32=1.2, bf16=1.0)
    assert precision.choose_precision("auto", "cpu", probe=probe, model_key="b").precision == "bf16"


def test_an_unreadable_cache_is_a_miss(fake_probe):
    _, calls = fake_probe
    precision.choose_precision("auto", "cpu", probe=probe, model_key="net")
    for path in cache_dir("precision").glob("*.json"):
        path.write_text("{not json")
    assert precision.choose_precision("auto", "cpu", probe=probe, model_key="net").reason == "measured"
    assert len(calls) == 2


def test_the_real_probe_times_both_precisions_interleaved():
    order: list[str] = []
    best = precision._best_times({"fp32": lambda: order.append("fp32"), "bf16": lambda: order.append("bf16")},
                                 rounds=2)
    assert order == ["fp32", "bf16"] * 3  # a warm-up each, then alternating rounds
    assert set(best) == {"fp32", "bf16"} and all(t >= 0 for t in best.values())


def test_mask_agreement_pools_scans_until_it_can_judge_and_is_cached_per_weights(fake_probe, monkeypatch):
    import numpy as np

    monkeypatch.setattr(precision, "KEEP_AGREEMENTS", 2)
    monkeypatch.setattr(precision, "CHECK_MIN_VOXELS", 3)
    mask = np.array([[0, 1, 1, 0]], dtype=np.uint8)  # 2 mask voxels
    other = np.array([[0, 1, 0, 0]], dtype=np.uint8)
    check = precision.AgreementCheck("openvino", 2, "weights-a")
    assert check.verdict is None
    assert check.add(np.zeros_like(mask), np.zeros_like(mask)) is None  # no mask voxels: nothing to judge
    assert check.add(mask, mask.astype(bool)) is None  # 2 of the 3 needed
    assert check.add(mask, mask * 2) is True and check.dice == 1.0 and check.scans == 3
    assert "measured on 3 scans" in check.describe()
    assert precision.AgreementCheck("openvino", 2, "weights-a").verdict is True  # cached
    assert precision.AgreementCheck("openvino", 1, "weights-a").verdict is None  # other threads
    failing = precision.AgreementCheck("openvino", 2, "weights-b")
    failing.add(mask, other)
    assert failing.add(mask, other) is False
    assert failing.dice == pytest.approx(2 * 2 / 6)  # pooled: 2 shared of 4 + 2 voxels
    assert precision.AgreementCheck("openvino", 2, "weights-b").verdict is False
    with pytest.raises(ValueError, match="differ in shape"):
        failing.add(mask, mask[:, :2])
    precision.AgreementCheck("openvino", 2, "weights-c").add(mask, mask)
    precision.AgreementCheck("openvino", 2, "weights-c").add(mask, mask)
    assert len(list(cache_dir("precision/agreement").iterdir())) == 2
