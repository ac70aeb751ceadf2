"""Training precision (issue 19, item 7): config values, per-device resolution (GPUs monkeypatched),
autocast, grad scaler, the log line and cuDNN's autotuner switch."""

from __future__ import annotations

import warnings

import pytest
import torch

from kidneyssl.config import ConfigError
from kidneyssl.errors import KidneySSLError
from kidneyssl.training.precision import (
    autocast_context,
    build_grad_scaler,
    configure_cuda,
    cuda_native_bf16,
    describe_training_precision,
    precision_setting,
    resolve_training_precision,
)


@pytest.mark.parametrize("precision, amp, expected", [
    (None, False, "fp32"), (None, True, "auto"),  # configs written before train.precision
    ("bf16", False, "bf16"), ("BF16", True, "bf16"), ("auto", False, "auto"), ("fp16", True, "fp16"),
    ("fp32", False, "fp32"),
])
def test_precision_setting(precision, amp: bool, expected: str) -> None:
    assert precision_setting(precision, amp) == expected


@pytest.mark.parametrize("precision, amp", [("half", False), ("fp32", True), ("", False)])
def test_precision_setting_refuses(precision, amp: bool) -> None:
    with pytest.raises(ConfigError, match="train"):
        precision_setting(precision, amp)


def test_resolution_on_the_cpu() -> None:
    assert resolve_training_precision("auto", "cpu") == "fp32"
    assert resolve_training_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_training_precision("fp32", "cpu") == "fp32"
    with pytest.raises(KidneySSLError, match="fp16 mixed precision needs a CUDA GPU"):
        resolve_training_precision("fp16", "cpu")
    with pytest.raises(ConfigError):
        resolve_training_precision("fp8", "cpu")


def _gpu(monkeypatch, capability: tuple[int, int], native: bool | None) -> None:
    """A CUDA machine whose GPU has ``capability``; ``native`` is what
    ``is_bf16_supported(including_emulation=False)`` says (None: a torch without that argument)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU sm_{capability[0]}{capability[1]}")
    if native is None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # counts emulation as support
    else:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: native or including_emulation)


@pytest.mark.parametrize("capability, native, expected", [
    ((9, 0), True, "bf16"),  # H100/H200
    ((8, 0), True, "bf16"),  # A100
    ((7, 0), False, "fp16"),  # V100: bfloat16 only emulated
    ((7, 5), None, "fp16"),  # T4 with a torch that cannot tell emulation apart: capability decides
    ((8, 6), None, "bf16"),
])
def test_auto_picks_bf16_only_where_the_gpu_computes_it(monkeypatch, capability, native, expected: str) -> None:
    _gpu(monkeypatch, capability, native)
    assert cuda_native_bf16("cuda:0") is (expected == "bf16")
    assert resolve_training_precision("auto", "cuda") == expected
    assert resolve_training_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_training_precision("fp16", "cuda") == "fp16"
    line = describe_training_precision("auto", expected, "cuda:0")
    assert f"training precision: {expected}" in line and f"sm_{capability[0]}{capability[1]}" in line
    assert "\n" not in line and ("natively" in line) is (expected == "bf16")


def test_an_explicit_bf16_on_an_emulating_gpu_says_so(monkeypatch) -> None:
    _gpu(monkeypatch, (7, 0), False)
    assert resolve_training_precision("bf16", "cuda") == "bf16"
    assert "only emulates bfloat16" in describe_training_precision("bf16", "bf16", "cuda")


def test_cuda_native_bf16_is_false_without_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not cuda_native_bf16("cuda") and not cuda_native_bf16("cpu")
    assert "cpu" in describe_training_precision("auto", "fp32", "cpu")


def test_autocast_context() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu") and (a @ b).dtype == torch.float32
    with autocast_context("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and (a @ b).dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... Disabling autocast" on a CPU machine
        cuda_ctx = autocast_context("fp16", "cuda:1")
    assert isinstance(cuda_ctx, torch.autocast) and cuda_ctx.device == "cuda" and cuda_ctx.fast_dtype == torch.float16
    with pytest.raises(ValueError, match="resolved"):
        autocast_context("auto", "cpu")


def test_grad_scaler_only_for_fp16_on_cuda() -> None:
    assert build_grad_scaler("bf16", "cuda") is None
    assert build_grad_scaler("fp32", "cuda") is None
    assert build_grad_scaler("fp16", "cpu") is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scaler disables itself on a machine without CUDA
        scaler = build_grad_scaler("fp16", "cuda:0")
    assert isinstance(scaler, torch.amp.GradScaler)
    with pytest.raises(ValueError):
        build_grad_scaler("auto", "cuda")


def test_configure_cuda_sets_the_autotuner_unless_deterministic(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_cuda("cpu", cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is False
    configure_cuda(torch.device("cuda", 0), cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is True
    configure_cuda("cuda", cudnn_benchmark=False)
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    configure_cuda("cuda", cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is False


def test_a_bf16_training_step_through_the_precision_functions() -> None:
    """What a trainer does with these functions, on the CPU: bfloat16 forward, no scaler."""
    from kidneyssl.config import ModelConfig, SegTrainConfig
    from kidneyssl.losses import segmentation_loss
    from kidneyssl.models import build_segmentation_model

    device = torch.device("cpu")
    precision = resolve_training_precision(precision_setting("bf16"), device)
    assert build_grad_scaler(precision, device) is None
    torch.manual_seed(0)
    model = build_segmentation_model(ModelConfig(init_features=4, growth_rate=4, norm_groups=2, embedding_dim=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(1, 1, 32, 32, 32)
    with autocast_context(precision, device):
        out = model(x)
        loss = segmentation_loss(out, x, (x > 0.5).float(), 0, 2, SegTrainConfig(pos_weight=1.0))["total"]
    assert out.logits.dtype == torch.bfloat16
    before = [p.detach().clone() for p in model.parameters()]
    loss.backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
