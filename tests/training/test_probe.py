"""The frozen-encoder probe: its Dice rises on a toy problem, it leaves the encoder and every RNG
as they were, and a pretraining run's probe reads only its own held-out training cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def _toy_crops(n: int, seed: int, shape=(16, 32, 32)):
    """Noisy images with one bright ellipsoid each (the 'kidney'), at a random place."""
    from kidneyssl.training.tasks.probe import ProbeCrop

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    crops = []
    for i in range(n):
        c = [rng.uniform(s * 0.3, s * 0.7) for s in shape]
        target = ((z - c[0]) / 4) ** 2 + ((y - c[1]) / 7) ** 2 + ((x - c[2]) / 5) ** 2 <= 1
        image = (rng.standard_normal(shape) * 0.5 + 1.5 * target).astype(np.float32)
        crops.append(ProbeCrop(f"toy_{i}", image, target))
    return crops


def test_probe_dice_rises_on_a_toy_problem_and_leaves_no_trace(tiny_cfg) -> None:
    import torch

    from kidneyssl.models.registry import build_network, network_spec
    from kidneyssl.training.tasks.probe import probe_encoder

    torch.manual_seed(0)
    encoder = build_network(network_spec(tiny_cfg.model)).encoder  # random weights: a fixed feature map
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fit, held_out = _toy_crops(4, seed=1), _toy_crops(2, seed=2)
    rng_state = torch.random.get_rng_state()
    short = probe_encoder(encoder, fit, held_out, steps=1, seed=[0, 0])
    long = probe_encoder(encoder, fit, held_out, steps=40, seed=[0, 0])
    assert long["probe_dice"] > max(short["probe_dice"] + 0.2, 0.6), (short, long)
    assert long["probe_held_out"] == 1.0 and np.isfinite(long["probe_loss"])
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # training's RNG stream is untouched
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # frozen
    assert encoder.training  # its mode restored
    assert probe_encoder(encoder, fit, held_out, steps=40, seed=[0, 0]) == long  # seeded
    single = probe_encoder(encoder, fit[:1], [], steps=5, seed=1)
    assert single["probe_held_out"] == 0.0  # measured on the crops it was fitted on, and says so


class _Spy:
    """A cache that records which cases were loaded."""

    def __init__(self, cache) -> None:
        self.cache, self.loaded = cache, []

    def load(self, case_id, mmap=True):
        self.loaded.append(case_id)
        return self.cache.load(case_id, mmap=mmap)

    def __contains__(self, case_id) -> bool:
        return case_id in self.cache


def test_the_probe_reads_only_held_out_training_cases(tiny_cache, tiny_cfg) -> None:
    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.training.tasks.side import SideTask

    cfg = dataclasses.replace(tiny_cfg, pretrain=dataclasses.replace(tiny_cfg.pretrain, probe_steps=3))
    ctx = init_distributed("cpu")
    task = SideTask(tiny_cache)
    task.setup(cfg, None, None, ctx)
    assert task.split is not None
    assert set(task.probe_cases) == set(task.proxy.val) and set(task.proxy.val) <= set(task.split.train)
    task.cache = spy = _Spy(task.cache)
    out = task.monitor(task.build_model(), 0, ctx)
    assert 0.0 <= out["probe_dice"] <= 1.0
    assert spy.loaded and set(spy.loaded) <= set(task.proxy.val)  # never a validation or test case
    assert not set(spy.loaded) & task.split.held_out
    # it informs: best.pt is chosen on the validation loss and reads no probe label ...
    assert task.selection == ("val_loss", False)
    # ... unless asked, and then the probe's cases count as read by best.pt (not by last.pt)
    chosen = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, select_by="probe_dice"))
    task.cfg = chosen
    assert task.selection == ("probe_dice", True) and task.run_info()["selected_by"] == "probe_dice"
    assert set(task.probe_cases) <= set(task.labels_read(best=True))


def test_probe_settings_are_checked() -> None:
    from kidneyssl.config import ConfigError, PretrainConfig

    with pytest.raises(ConfigError, match="probe_steps > 0"):
        PretrainConfig(select_by="probe_dice")
    with pytest.raises(ConfigError, match="select_by"):
        PretrainConfig(select_by="accuracy", probe_steps=10)
    assert PretrainConfig(select_by="probe_dice", probe_steps=10).probe_steps == 10
