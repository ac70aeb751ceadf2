"""How a network runs inference: the backend choice (and its fallback without OpenVINO), the
explicit fused CPU pass, and the loaded model's single report."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from kidneyssl.errors import KidneySSLError
from kidneyssl.inference.engine import InferenceModel, resolve_backend, torch_logits


@pytest.fixture
def no_openvino(monkeypatch):
    """OpenVINO absent: importing it fails."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_auto_falls_back_to_torch_without_openvino(no_openvino, trained_toy_model):
    backend, why = resolve_backend("auto", "cpu")
    assert backend == "torch" and "pip install kidneyssl[openvino]" in why
    engine = InferenceModel(trained_toy_model, backend="auto", precision="fp32")
    assert engine.backend == "torch"
    assert engine.logits(torch.zeros(1, 1, 16, 32, 32)).shape == (1, 1, 16, 32, 32)


def test_asking_for_openvino_without_it_says_how_to_install(no_openvino):
    with pytest.raises(KidneySSLError, match=r"pip install kidneyssl\[openvino\]"):
        resolve_backend("openvino", "cpu")


def test_backend_rules():
    assert resolve_backend("torch", "cpu") == ("torch", "asked")
    assert resolve_backend("auto", "cuda")[0] == "torch"  # OpenVINO runs on the CPU only
    with pytest.raises(KidneySSLError, match="CPU"):
        resolve_backend("openvino", "cuda")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("tensorrt", "cpu")


def test_auto_picks_openvino_when_installed_and_torch_for_float32(trained_toy_model):
    pytest.importorskip("openvino")
    assert resolve_backend("auto", "cpu")[0] == "openvino"
    assert InferenceModel(trained_toy_model, backend="auto", precision="bf16").backend == "openvino"
    fp32 = InferenceModel(trained_toy_model, backend="auto", precision="fp32")
    assert fp32.backend == "torch" and fp32._xml is None  # nothing exported
    assert "float32" in fp32.backend_reason
    assert InferenceModel(trained_toy_model, backend="openvino", precision="fp32").backend == "openvino"


def test_a_network_openvino_cannot_export_falls_back_to_torch_when_auto(trained_toy_model, monkeypatch, caplog,
                                                                         tmp_path):
    pytest.importorskip("openvino")
    import kidneyssl.inference.ov_backend as ov_backend

    monkeypatch.setenv("KIDNEYSSL_CACHE_DIR", str(tmp_path))  # nothing exported yet

    def fail(module, folder):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(ov_backend, "export_openvino", fail)
    with caplog.at_level("WARNING", logger="kidneyssl"):
        engine = InferenceModel(trained_toy_model, backend="auto", precision="bf16")
    assert engine.backend == "torch" and "unsupported operator" in caplog.text
    with pytest.raises(RuntimeError, match="unsupported"):
        InferenceModel(trained_toy_model, backend="openvino", precision="bf16")


def test_torch_backend_runs_the_fused_cpu_pass_explicitly(trained_toy_model, monkeypatch):
    calls = []
    forward = trained_toy_model.inference_forward
    monkeypatch.setattr(trained_toy_model, "inference_forward", lambda x: calls.append(x.shape) or forward(x))
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        fused = torch_logits(trained_toy_model, x)
        module_path = trained_toy_model(x).logits  # forward itself never switches
    assert calls == [x.shape]
    assert torch.allclose(fused, module_path, atol=1e-4)
    # a network without inference_forward: its forward's logits
    assert torch_logits(lambda t: t * 2, torch.ones(1)).item() == 2.0


def test_loaded_model_announces_once(demo_checkpoint, caplog):
    from kidneyssl.inference.predict import load_model

    engine, _ = load_model(demo_checkpoint, backend="torch", precision="fp32")
    with caplog.at_level("INFO", logger="kidneyssl"):
        engine.announce("context")
        engine.announce("context")
    lines = [r.getMessage() for r in caplog.records if "backend torch" in r.getMessage()]
    assert lines == ["context; backend torch (asked), precision fp32 (asked)"]


@pytest.fixture
def bf16_faster(monkeypatch, tmp_path):
    """A CPU where the probe finds bf16 twice as fast, and an empty cache folder."""
    import kidneyssl.inference.precision as precision

    monkeypatch.setenv("KIDNEYSSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(precision, "_best_times", lambda runs, rounds=3: {"fp32": 2.0, "bf16": 1.0})
    monkeypatch.setattr(precision, "CHECK_MIN_VOXELS", 100)


def _with_bf16_output(engine, monkeypatch, change):
    """Record the precisions ``engine`` runs; its bf16 logits are ``change(fp32 logits)``."""
    runs = []
    real = engine._torch_run

    def run(x, precision):
        runs.append(precision)
        out = real(x, "fp32")
        return change(out) if precision == "bf16" else out

    monkeypatch.setattr(engine, "_torch_run", run)
    return runs


def _scan(x):
    """What segment_image gives InferenceModel.segment: a scan run with the logits it is handed,
    returning (logits, final mask)."""
    def scan(logits):
        out = logits(x)
        return out, (out > 0).numpy()[0, 0]
    return scan


@pytest.mark.parametrize("agrees", [True, False])
def test_auto_keeps_bf16_only_where_its_masks_agree_on_the_first_scan(bf16_faster, trained_toy_model,
                                                                      make_blob_image, monkeypatch, caplog, agrees):
    x = torch.from_numpy(make_blob_image(shape=(16, 32, 48), seed=7))[None, None]
    with torch.inference_mode():
        expected = trained_toy_model(x).logits
    assert int((expected > 0).sum()) >= 100  # enough mask voxels to judge on this scan
    change = (lambda t: t * 1.5) if agrees else (lambda t: -t)  # the same mask, or its complement
    engine = InferenceModel(trained_toy_model, backend="torch", precision="auto")
    runs = _with_bf16_output(engine, monkeypatch, change)
    assert engine.precision == "bf16" and engine.agreement_pending
    with caplog.at_level("INFO", logger="kidneyssl"):
        first, _ = engine.segment(_scan(x))
    assert runs == ["fp32", "bf16"]  # the first scan runs in both precisions...
    # ...and its answer is the kept precision's, as for every later scan
    assert torch.allclose(first, expected * 1.5 if agrees else expected, atol=1e-4)
    assert not engine.agreement_pending
    assert engine.precision == ("bf16" if agrees else "fp32")
    if agrees:  # confirmed quietly; the start already said bf16
        assert "from here on" not in caplog.text and "mask Dice 1.0000" in engine.describe()
    else:
        assert "precision fp32 from here on (not bf16: bf16 mask Dice 0.0000" in caplog.text
        assert "measured on 1 scan;" in caplog.text
    engine.segment(_scan(x))
    assert runs[2:] == ["bf16" if agrees else "fp32"]

    # the verdict is kept for this checkpoint on this machine: no second check
    again = InferenceModel(trained_toy_model, backend="torch", precision="auto")
    assert not again.agreement_pending and again.precision == engine.precision
    assert "cached for this checkpoint" in again.describe()
    # other weights are checked anew
    with torch.no_grad():
        next(trained_toy_model.parameters()).add_(0.01)
    try:
        assert InferenceModel(trained_toy_model, backend="torch", precision="auto").agreement_pending
    finally:
        with torch.no_grad():
            next(trained_toy_model.parameters()).sub_(0.01)


def test_the_check_judges_final_masks(bf16_faster, trained_toy_model, monkeypatch):
    """What the check compares is the mask the scan returns (post-processed), not the raw logits:
    bf16 logits that differ everywhere but give the same final mask pass."""
    engine = InferenceModel(trained_toy_model, backend="torch", precision="auto")
    _with_bf16_output(engine, monkeypatch, lambda t: -t)  # raw bf16 masks: the complement
    final = np.zeros((16, 32, 32), dtype=np.uint8)
    final[4:12, 8:24, 8:24] = 1  # the same post-processed mask from both
    engine.segment(lambda logits: (logits(torch.randn(1, 1, 16, 32, 32)), final))
    assert engine.precision == "bf16" and "mask Dice 1.0000" in engine.describe()


def test_an_asked_precision_is_not_checked(bf16_faster, trained_toy_model, monkeypatch):
    engine = InferenceModel(trained_toy_model, backend="torch", precision="bf16")
    runs = _with_bf16_output(engine, monkeypatch, lambda t: -t)
    engine.segment(_scan(torch.randn(1, 1, 16, 32, 32)))
    assert runs == ["bf16"] and not engine.agreement_pending


def test_scans_without_mask_voxels_cannot_show_agreement(bf16_faster, trained_toy_model, monkeypatch, caplog):
    import kidneyssl.inference.engine as engine_module

    monkeypatch.setattr(engine_module, "CHECK_MAX_SCANS", 3)
    engine = InferenceModel(trained_toy_model, backend="torch", precision="auto")
    runs = _with_bf16_output(engine, monkeypatch, lambda t: t)
    background = lambda x, precision: runs.append(precision) or -torch.ones_like(x)  # noqa: E731
    monkeypatch.setattr(engine, "_torch_run", background)
    x = torch.randn(1, 1, 16, 32, 32)
    with caplog.at_level("INFO", logger="kidneyssl"):
        for _ in range(4):
            engine.segment(_scan(x))
    assert runs == ["fp32", "bf16"] * 3 + ["fp32"]  # checked 3 times, then float32
    assert engine.precision == "fp32" and not engine.agreement_pending
    assert "from here on (bf16 masks not checked against fp32: fewer than 100 mask voxels in 3 scans)" in caplog.text
    assert InferenceModel(trained_toy_model, backend="torch", precision="auto").agreement_pending  # not cached


def test_auto_backend_leaves_openvino_when_the_check_settles_on_float32(bf16_faster, trained_toy_model,
                                                                        make_blob_image, monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    engine = InferenceModel(trained_toy_model, backend="auto", precision="auto")
    assert engine.backend == "openvino" and engine.precision == "bf16"
    real = engine._run
    monkeypatch.setattr(engine, "_run", lambda x, precision: -real(x, precision))  # bf16 masks disagree
    x = torch.from_numpy(make_blob_image(shape=(16, 32, 48), seed=7))[None, None]
    with torch.inference_mode():
        expected = trained_toy_model(x).logits
    assert torch.allclose(engine.segment(_scan(x))[0], expected, atol=1e-4)  # PyTorch's float32 answer
    assert engine.precision == "fp32" and engine.backend == "torch" and "float32" in engine.backend_reason


def test_the_check_frees_a_compiled_model_before_the_float32_pass(bf16_faster, trained_toy_model, monkeypatch):
    """While the check runs, a compiled OpenVINO model kept from the scan before (windows keep
    theirs) is dropped before PyTorch's float32 pass, so the two do not hold memory at once."""
    pytest.importorskip("openvino")
    import kidneyssl.inference.precision as precision

    monkeypatch.setattr(precision, "CHECK_MIN_VOXELS", 10**9)  # undecided: every scan runs both
    engine = InferenceModel(trained_toy_model, backend="openvino", precision="auto")
    assert engine.agreement_pending
    held = []
    real = engine._torch_run

    def run(x, precision):
        held.append(engine._openvino.compiled_shape if engine._openvino is not None else None)
        return real(x, precision)

    monkeypatch.setattr(engine, "_torch_run", run)
    x = torch.randn(1, 1, 16, 32, 32)
    for _ in range(2):
        engine.segment(_scan(x))
        assert engine._openvino.compiled_shape == tuple(x.shape)  # the bf16 pass compiled it
    assert held == [None, None]


def test_segment_image_checks_the_masks_it_writes_on_the_original_grid(bf16_faster, trained_toy_model, small_cfg,
                                                                        make_blob_image, monkeypatch):
    """With a preprocessing record, the masks the check compares are the restored ones (what
    ``predict`` writes and Table 1 scores), on the original file's grid."""
    import dataclasses

    import kidneyssl.inference.precision as precision
    from kidneyssl.inference.segment import segment_image
    from kidneyssl.io.geometry import Geometry, Volume
    from kidneyssl.preprocessing.pipeline import preprocess_image

    hu = (make_blob_image(shape=(24, 40, 56), seed=7) * 200.0).astype(np.int16)
    image, record = preprocess_image(Volume(hu, Geometry(np.diag([2.5, 2.0, 2.0, 1.0]), hu.shape)),
                                     small_cfg.preprocess)
    compared = []
    real_add = precision.AgreementCheck.add
    monkeypatch.setattr(precision.AgreementCheck, "add",
                        lambda self, a, b: compared.append((a.shape, b.shape)) or real_add(self, a, b))
    engine = InferenceModel(trained_toy_model, backend="torch", precision="auto")
    assert engine.agreement_pending
    seg = segment_image(engine, image, dataclasses.replace(small_cfg, model=trained_toy_model.cfg), record=record)
    assert compared == [(hu.shape, hu.shape)] and seg.original_mask.shape == hu.shape
