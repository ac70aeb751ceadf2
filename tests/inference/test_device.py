"""Device facts: activation estimates per voxel, available memory (CPU and CUDA allocator),
the CPU's bf16 support and name."""

from __future__ import annotations

import pytest

from kidneyssl.config import InferenceConfig, ModelConfig
from kidneyssl.inference.device import (
    BF16_FACTOR,
    MODULE_PATH_BF16_FACTOR,
    MODULE_PATH_BYTES_PER_VOXEL,
    OPENVINO_BYTES_PER_VOXEL,
    PAPER_BYTES_PER_VOXEL,
    estimate_bytes_per_voxel,
)


def test_estimate_bytes_per_voxel_scales_with_width():
    paper = estimate_bytes_per_voxel(ModelConfig())
    demo = estimate_bytes_per_voxel(ModelConfig(init_features=8, growth_rate=8))
    assert paper == PAPER_BYTES_PER_VOXEL
    assert demo == pytest.approx(paper / 2)
    assert estimate_bytes_per_voxel(None, bf16=True) == pytest.approx(BF16_FACTOR * paper)
    assert BF16_FACTOR < 1.0
    # GPUs run the module path, which keeps its own (larger) figure
    assert estimate_bytes_per_voxel(None, device="cuda") == MODULE_PATH_BYTES_PER_VOXEL > paper
    assert estimate_bytes_per_voxel(None, backend="openvino") == OPENVINO_BYTES_PER_VOXEL


def test_gpu_bf16_factor_is_at_least_what_a_gpu_measured():
    # issue 19: bf16 autocast on a GPU peaked at 0.74 of float32 (the CPU's 0.52 does not carry over)
    assert MODULE_PATH_BF16_FACTOR >= 0.74
    assert estimate_bytes_per_voxel(None, bf16=True, device="cuda") >= 0.74 * MODULE_PATH_BYTES_PER_VOXEL


def test_available_memory_is_known_on_this_cpu():
    from kidneyssl.inference.device import available_memory_mb, resolve_memory_budget_mb

    avail = available_memory_mb("cpu")
    assert avail is None or avail > 0
    assert resolve_memory_budget_mb(InferenceConfig()) >= 1
    assert resolve_memory_budget_mb(InferenceConfig(memory_budget_mb=1234)) == 1234


def test_cuda_budget_counts_what_the_caching_allocator_holds_free(monkeypatch):
    """On a GPU the budget is free device memory plus reserved-but-unallocated memory of PyTorch's
    caching allocator, so it does not depend on what an earlier epoch left cached."""
    import torch

    from kidneyssl.inference.device import AVAILABLE_MEMORY_SHARE, available_memory_mb, resolve_memory_budget_mb

    mb = 2**20
    state = {"free": 3000 * mb, "reserved": 5000 * mb, "allocated": 1000 * mb}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 16000 * mb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    assert available_memory_mb("cuda:0") == pytest.approx(3000 + 4000)
    before = resolve_memory_budget_mb(InferenceConfig(), "cuda:0")
    # the allocator releases its cache to the device: the same memory, the same budget
    state.update(free=7000 * mb, reserved=1000 * mb)
    assert available_memory_mb("cuda:0") == pytest.approx(7000)
    assert resolve_memory_budget_mb(InferenceConfig(), "cuda:0") == before == int(7000 * AVAILABLE_MEMORY_SHARE)


def test_cpu_has_native_bf16_reads_the_flags():
    from kidneyssl.inference.device import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16("flags : avx512_bf16 avx512f\n")
    assert not cpu_has_native_bf16("flags : fpu avx avx2 fma\n")
    assert not cpu_has_native_bf16("")


def test_cpu_model_name_names_the_vector_extensions():
    from kidneyssl.inference.device import cpu_count, cpu_model_name

    info = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    assert cpu_model_name(info) == "AMD EPYC (avx2 avx512f avx512_bf16)"
    assert cpu_model_name("model name : Some CPU\n") == "Some CPU"
    assert cpu_model_name()  # this machine's
    assert cpu_count() >= 1
