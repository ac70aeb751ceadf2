"""Seeding and RNG-state capture: restoring a captured state replays the same random numbers."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from kidneyssl.training.seeding import (
    capture_rng_state,
    epoch_generator,
    restore_rng_state,
    seed_everything,
)


def _draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_capture_restore_replays_python_numpy_torch() -> None:
    seed_everything(123)
    _draw()
    state = capture_rng_state()
    expected = _draw()
    _draw()
    restore_rng_state(state)
    assert _draw() == expected


def test_seed_everything_is_deterministic() -> None:
    seed_everything(7)
    a = _draw()
    seed_everything(7)
    assert _draw() == a
    seed_everything(8)
    assert _draw() != a


def test_epoch_generator_depends_only_on_seed_epoch_salt() -> None:
    a = epoch_generator(3, 5).integers(0, 10**9, 4)
    np.random.seed(0)  # global state must not matter
    b = epoch_generator(3, 5).integers(0, 10**9, 4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, epoch_generator(3, 6).integers(0, 10**9, 4))
    assert not np.array_equal(a, epoch_generator(3, 5, salt=1).integers(0, 10**9, 4))


# --- resuming on another device layout (issue 19, item 1) ---------------------------------------

class _LoadedOnGpu(torch.Tensor):
    """Stands in for a tensor that ``torch.load(map_location="cuda")`` returned: it reports a CUDA
    device, refuses ``numpy()`` as a CUDA tensor does, and only ``cpu()``/``to("cpu")`` give a
    plain CPU tensor back."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy "
                            "the tensor to host memory first.")
        if func is torch.Tensor.device.__get__:
            return torch.device("cuda", 0)
        to_cpu = func is torch.Tensor.cpu or (func is torch.Tensor.to and "cpu" in (
            str(kwargs.get("device")), *(str(a) for a in args[1:])))
        out = super().__torch_function__(func, types, args, kwargs)
        if to_cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return torch.Tensor.as_subclass(out, torch.Tensor)
        return out


def _on_gpu(value):
    """``value`` with every tensor as :class:`_LoadedOnGpu` (the checkpoint loaded to a GPU)."""
    if isinstance(value, torch.Tensor):
        return value.as_subclass(_LoadedOnGpu)
    if isinstance(value, dict):
        return {k: _on_gpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_on_gpu(v) for v in value]
    return value


def test_restore_accepts_a_state_loaded_onto_a_gpu(monkeypatch) -> None:
    seed_everything(5)
    state = _on_gpu(capture_rng_state("cpu"))
    with pytest.raises(TypeError, match="cuda"):  # what broke `--resume` on CUDA
        state["numpy"]["key"].numpy()
    expected = _draw()
    _draw()
    real_set = torch.set_rng_state

    def set_state(new_state):
        assert type(new_state) is torch.Tensor and new_state.dtype == torch.uint8  # a plain CPU byte tensor
        real_set(new_state)

    monkeypatch.setattr(torch, "set_rng_state", set_state)
    restore_rng_state(state)
    assert _draw() == expected


class _FakeCuda:
    """``torch.cuda`` of a machine with ``count`` GPUs, as far as the RNG functions go."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.set: dict[int, torch.Tensor] = {}

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((16,), int(device),
                                                                                        dtype=torch.uint8))

    def set_rng_state(self, new_state, device="cuda") -> None:
        index = int(device)
        if index >= self.count:  # what torch does for a device that is not there
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        assert type(new_state) is torch.Tensor and new_state.device.type == "cpu"
        assert new_state.dtype == torch.uint8
        self.set[index] = new_state


def test_states_saved_for_four_gpus_resume_on_one(monkeypatch, caplog) -> None:
    state = capture_rng_state("cpu")
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # format written before
    cuda = _FakeCuda(1)
    cuda.install(monkeypatch)
    with caplog.at_level(logging.INFO, logger="kidneyssl.training.seeding"):
        restore_rng_state(_on_gpu(state), torch.device("cuda", 0))
    assert list(cuda.set) == [0] and int(cuda.set[0][0]) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "1 GPU" in lines[0] and "holds 4" in lines[0]


def test_only_this_process_gpu_state_is_saved_and_restored_on_its_gpu(monkeypatch) -> None:
    cuda = _FakeCuda(4)
    cuda.install(monkeypatch)
    state = capture_rng_state(torch.device("cuda", 3))
    assert "cuda" not in state and int(state["cuda_device"][0]) == 3
    restore_rng_state(state, torch.device("cuda", 1))  # resumed on another GPU
    assert list(cuda.set) == [1] and int(cuda.set[1][0]) == 3
    assert "cuda_device" not in capture_rng_state("cpu")


def test_a_gpu_state_resumed_without_cuda_is_skipped_with_one_line(monkeypatch, caplog) -> None:
    cuda = _FakeCuda(0)
    cuda.install(monkeypatch)
    state = capture_rng_state("cpu")
    state["cuda_device"] = torch.zeros(16, dtype=torch.uint8)
    with caplog.at_level(logging.INFO, logger="kidneyssl.training.seeding"):
        restore_rng_state(state, "cpu")
    assert cuda.set == {} and len(caplog.records) == 1


def test_optimizer_load_state_dict_moves_state_to_the_parameters_device() -> None:
    """The resume rule: a checkpoint loaded to the CPU needs no ``optimizer_to(device)``; Adam's
    ``load_state_dict`` puts each state tensor on its parameter's device and dtype (``meta``
    stands in for a GPU)."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    on_device = torch.nn.Linear(3, 2, device="meta")
    resumed = torch.optim.Adam(on_device.parameters())
    resumed.load_state_dict(saved)
    for state in resumed.state.values():
        assert state["exp_avg"].device.type == "meta" and state["exp_avg_sq"].device.type == "meta"
        assert state["step"].device.type == "cpu"
