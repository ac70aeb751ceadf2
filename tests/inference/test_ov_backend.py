"""The OpenVINO backend: export cached per weights and OpenVINO version, static-shape compilation,
and masks that agree with the torch backend's on a trained toy model (skipped without OpenVINO)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kidneyssl.config import config_to_dict, load_preset
from kidneyssl.inference.engine import InferenceModel

ov = pytest.importorskip("openvino")


def dice(a, b) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture
def exports(monkeypatch, tmp_path):
    """An empty cache folder; returns a list that records every export."""
    import kidneyssl.inference.ov_backend as ov_backend

    monkeypatch.setenv("KIDNEYSSL_CACHE_DIR", str(tmp_path / "cache"))
    made = []
    real = ov_backend.export_openvino

    def counting(module, folder):
        made.append(folder)
        return real(module, folder)

    monkeypatch.setattr(ov_backend, "export_openvino", counting)
    return made


def _checkpoint(path, cfg, model):
    from kidneyssl.io.checkpoint import save_checkpoint

    save_checkpoint(path, kind="segmentation", config=config_to_dict(cfg), model_state=model.state_dict(), epoch=0)
    return path


def test_a_changed_checkpoint_is_exported_again(exports, tmp_path, monkeypatch):
    import kidneyssl.inference.ov_backend as ov_backend
    from kidneyssl.inference.cache import cache_dir
    from kidneyssl.inference.predict import load_model
    from kidneyssl.models import build_segmentation_model

    cfg = load_preset("demo")
    torch.manual_seed(0)
    model = build_segmentation_model(cfg.model)
    ckpt = _checkpoint(tmp_path / "a.pt", cfg, model)
    first, _ = load_model(ckpt, backend="openvino", precision="fp32")
    load_model(ckpt, backend="openvino", precision="fp32")  # the same weights: reused
    assert len(exports) == 1 and len(list(cache_dir("openvino").iterdir())) == 1
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    _checkpoint(tmp_path / "a.pt", cfg, model)  # the same file, new weights
    second, _ = load_model(ckpt, backend="openvino", precision="fp32")
    assert len(exports) == 2 and second._xml != first._xml
    # another OpenVINO version: exported again
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: "9999.0.0-test")
    load_model(ckpt, backend="openvino", precision="fp32")
    assert len(exports) == 3


def test_openvino_logits_equal_torch_logits_at_any_shape(trained_toy_model, exports):
    engine = InferenceModel(trained_toy_model, backend="openvino", precision="fp32")
    for shape in ((16, 32, 48), (32, 16, 64)):  # neither is the export's example shape
        x = torch.randn(1, 1, *shape)
        with torch.inference_mode():
            expected = trained_toy_model(x).logits
        got = engine.logits(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()))
    assert len(exports) == 1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_backends_give_the_same_masks_on_a_trained_toy_model(trained_toy_model, make_blob_image, small_cfg,
                                                                  precision, exports):
    """segment_image through OpenVINO (float32, and its bf16 hint where the CPU has bf16) against
    the torch float32 masks: Dice >= 0.99."""
    import dataclasses

    from kidneyssl.inference.segment import segment_image

    cfg = dataclasses.replace(small_cfg, model=trained_toy_model.cfg)
    masks = {}
    for backend, prec in (("torch", "fp32"), ("openvino", precision)):
        engine = InferenceModel(trained_toy_model, backend=backend, precision=prec)
        masks[backend] = [segment_image(engine, make_blob_image(shape=(16, 32, 48), seed=s), cfg,
                                        spacing_mm=(1.0, 1.0, 1.0)).mask for s in (7, 8)]
    for torch_mask, ov_mask in zip(masks["torch"], masks["openvino"]):
        assert torch_mask.sum() > 100  # the blobs are found
        assert dice(ov_mask, torch_mask) >= 0.99


def test_networks_in_one_process_share_one_openvino_core(tmp_path, monkeypatch):
    """Every network compiles through the process's one ``Core``: a ``Core`` per network crashed
    long-lived processes (SIGSEGV after some tens of networks)."""
    import kidneyssl.inference.ov_backend as ov_backend
    from kidneyssl.models import build_segmentation_model

    made = []
    real_core = ov.Core

    def counting_core(*args, **kwargs):
        made.append(1)
        return real_core(*args, **kwargs)

    monkeypatch.setattr(ov, "Core", counting_core)
    ov_backend._core.cache_clear()  # the Core made next (a real one) stays the process's Core
    cfg = load_preset("demo")
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        xml = ov_backend.exported_model(build_segmentation_model(cfg.model).eval(), tmp_path / "exports")
        net = ov_backend.OpenVINONetwork(xml, "fp32", 1)
        outputs.append(net(torch.zeros(1, 1, 16, 32, 32)))
    assert len(made) == 1
    assert outputs[0].shape == outputs[1].shape == (1, 1, 16, 32, 32)


def test_float32_openvino_keeps_float32_accuracy_on_a_large_input(tmp_path):
    """GroupNorm statistics over many voxels after a concatenation (a dense block): the export's
    float32 output matches a float64 run to float32 accuracy. With OpenVINO's merged multi-axis
    mean (exports before version 3) the error here was ~5e-4, masks of half volumes drifted."""
    import copy

    from kidneyssl.inference.ov_backend import OpenVINONetwork, export_openvino
    from kidneyssl.models.blocks import DenseBlock

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), DenseBlock(8, 2, 8, 4)).eval()
    x = torch.randn(1, 1, 64, 128, 128) * 2 + 1
    with torch.no_grad():
        expected = copy.deepcopy(net).double()(x.double())
    got = OpenVINONetwork(export_openvino(net, tmp_path), "fp32", 2)(x).double()
    assert float((got - expected).abs().max()) < 1e-5 * float(expected.abs().max())


def test_compiled_models_are_kept_on_disk_loaded_and_pruned(tmp_path, monkeypatch):
    import kidneyssl.inference.ov_backend as ov_backend
    from kidneyssl.inference.cache import cache_dir
    from kidneyssl.models import build_segmentation_model

    monkeypatch.setenv("KIDNEYSSL_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    xml = ov_backend.exported_model(build_segmentation_model(load_preset("demo").model).eval())
    x = torch.randn(1, 1, 16, 32, 32)
    first = ov_backend.OpenVINONetwork(xml, "fp32", 1)
    expected = first(x)
    assert first.loaded_from_cache is False
    again = ov_backend.OpenVINONetwork(xml, "fp32", 1)
    assert torch.equal(again(x), expected) and again.loaded_from_cache is True
    assert len(list(cache_dir("openvino-compiled").iterdir())) == 1
    other = ov_backend.OpenVINONetwork(xml, "fp32", 2)  # other settings: compiled for them
    other(x)
    assert other.loaded_from_cache is False
    monkeypatch.setattr(ov_backend, "KEEP_COMPILED", 1)
    again(torch.zeros(1, 1, 16, 32, 48))  # another shape: compiled, the older entries pruned
    assert len([p for p in cache_dir("openvino-compiled").iterdir() if not p.name.startswith(".")]) == 1


def test_a_damaged_compiled_model_is_compiled_again(tmp_path, monkeypatch):
    import kidneyssl.inference.ov_backend as ov_backend
    from kidneyssl.inference.cache import cache_dir
    from kidneyssl.models import build_segmentation_model

    monkeypatch.setenv("KIDNEYSSL_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    xml = ov_backend.exported_model(build_segmentation_model(load_preset("demo").model).eval())
    x = torch.randn(1, 1, 16, 32, 32)
    expected = ov_backend.OpenVINONetwork(xml, "fp32", 1)(x)
    (blob,) = cache_dir("openvino-compiled").iterdir()
    for damaged in (blob.read_bytes()[:1000], b"not a compiled model"):
        blob.write_bytes(damaged)
        net = ov_backend.OpenVINONetwork(xml, "fp32", 1)
        assert torch.equal(net(x), expected) and net.loaded_from_cache is False
        assert blob.stat().st_size > 1000  # replaced by a complete one


_CONCURRENT_CHILD = """
import random, sys, time, torch
from kidneyssl.inference.ov_backend import OpenVINONetwork
random.seed()
time.sleep(random.random() * 0.3)
net = OpenVINONetwork(sys.argv[1], "fp32", 1)
for _ in range(8):
    net(torch.randn(1, 1, 32, 64, 64))
    net.release()
"""


@pytest.mark.slow
def test_processes_sharing_the_compiled_model_cache_do_not_crash(tmp_path):
    """Three processes compile and load one shape over and over into one empty cache folder: each
    must finish. With OpenVINO's own model cache (CACHE_DIR), which rewrites a blob that another
    process is reading through a memory map, 4 of 10 such rounds lost a process to SIGBUS."""
    import os
    import subprocess
    import sys

    from kidneyssl.inference.ov_backend import exported_model
    from kidneyssl.models import build_segmentation_model

    torch.manual_seed(0)
    xml = exported_model(build_segmentation_model(load_preset("demo").model).eval(), tmp_path / "export")
    for round_ in range(3):
        env = dict(os.environ, KIDNEYSSL_CACHE_DIR=str(tmp_path / f"cache{round_}"), OMP_NUM_THREADS="1")
        procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_CHILD, str(xml)], env=env,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        assert all(rc == 0 for rc, _ in results), [(rc, err[-500:]) for rc, err in results]


def test_a_scan_frees_its_compiled_model_unless_every_scan_has_its_window_shape(trained_toy_model, make_blob_image,
                                                                                small_cfg, exports):
    """After a scan, the compiled model for its halves is freed (the next scan's halves have their
    own shapes); one for windows of the configured size (a crop-trained network) is kept for the
    next scan, which runs the same shape."""
    import dataclasses

    from kidneyssl.inference.segment import segment_image

    cfg = dataclasses.replace(small_cfg, model=trained_toy_model.cfg)
    cropped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, crop_size=(16, 16, 16)))
    for config, kept in ((cfg, None), (cropped, (1, 1, 16, 16, 16))):
        engine = InferenceModel(trained_toy_model, backend="openvino", precision="fp32")
        for seed in (7, 8):
            segment_image(engine, make_blob_image(shape=(16, 32, 48), seed=seed), config, spacing_mm=(1.0, 1.0, 1.0))
            assert engine._openvino.compiled_shape == kept
