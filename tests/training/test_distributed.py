"""DDP on CPU (gloo, 2 processes under torchrun) matches 1 process with the same global batch.

Tolerance: per-epoch mean training loss rtol 1e-4 and final weights atol 1e-4. The two runs take
identical steps mathematically (GroupNorm makes items independent; DDP averages gradients over 2
ranks where 1 process averages over 2 accumulated items); only float summation order differs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyssl.config import ModelConfig, SegTrainConfig
from kidneyssl.errors import KidneySSLError
from kidneyssl.losses import segmentation_loss
from kidneyssl.models import build_segmentation_model
from kidneyssl.training.distributed import (
    DEFAULT_TIMEOUT_MINUTES,
    TIMEOUT_ENV,
    DistContext,
    collective_timeout_minutes,
    gather_objects,
    init_distributed,
    shard,
)
from kidneyssl.training.loop import epoch_order

WORKER = Path(__file__).with_name("ddp_worker.py")
SLURM_WORKER = Path(__file__).with_name("slurm_worker.py")
EPOCHS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", KIDNEYSSL_NO_PROGRESS="1")
    return env


def test_ddp_two_processes_match_one_process_with_accumulation(tmp_path: Path) -> None:
    single, ddp = tmp_path / "single.json", tmp_path / "ddp.json"
    subprocess.run([sys.executable, str(WORKER), str(single), "2", str(EPOCHS)], check=True, env=_env(),
                   timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(ddp), "1",
                    str(EPOCHS)], check=True, env=_env(), timeout=300)
    a, b = json.loads(single.read_text()), json.loads(ddp.read_text())
    assert a["world"] == 1 and b["world"] == 2
    assert len(a["losses"]) == len(b["losses"]) == EPOCHS
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-4)
    assert a["losses"][-1] < a["losses"][0]  # it trained
    np.testing.assert_allclose(b["params"], a["params"], atol=1e-4)
    # uneven validation shards gathered in rank order: rank 0 has 0, 2, 4; rank 1 has 1, 3
    assert b["gathered"] == [[0, 20, 40], [10, 30]]
    assert a["gathered"] == [[0, 10, 20, 30, 40]]


def test_epoch_order_shards_one_permutation_seeded_by_epoch() -> None:
    one = DistContext(0, 1, 0, torch.device("cpu"))
    r0, r1 = (DistContext(r, 2, r, torch.device("cpu")) for r in (0, 1))
    full = epoch_order(7, epoch=3, seed=5, ctx=one)
    assert sorted(full) == list(range(7))
    assert epoch_order(7, 3, 5, one) == full and epoch_order(7, 4, 5, one) != full
    a, b = epoch_order(7, 3, 5, r0), epoch_order(7, 3, 5, r1)
    assert len(a) == len(b) == 4  # padded so both ranks take the same number of steps
    assert a[:4] == full[0::2][:4] and b[:3] == full[1::2]
    assert shard(list("abcde"), r1) == ["b", "d"] and gather_objects("x", one) == ["x"]


@pytest.mark.parametrize("recon_weight", [0.1, 0.0])
def test_every_parameter_gets_a_gradient(recon_weight: float) -> None:
    from kidneyssl.config import ExperimentConfig
    from kidneyssl.training.finetune import effective_config

    cfg = effective_config(ExperimentConfig(
        model=ModelConfig(init_features=4, growth_rate=4, norm_groups=2, embedding_dim=8),
        train=SegTrainConfig(recon_weight=recon_weight, pos_weight=1.0)))
    assert cfg.model.reconstruction is (recon_weight > 0)
    torch.manual_seed(0)
    model = build_segmentation_model(cfg.model)
    x = torch.randn(1, 1, 16, 16, 16)
    loss = segmentation_loss(model(x), x, (x > 0.5).float(), 0, 2, cfg.train)["total"]
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# --- launchers, devices and the collective timeout (issue 19, items 3 and 5) ----------------------

_LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", TIMEOUT_ENV)


def _slurm_env(rank: int, tasks: int = 2, **extra: str) -> dict[str, str]:
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks),
           "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_STEP_ID": "0",
           "SLURM_JOB_NODELIST": "gpu[01-04,07],cpu3"}
    env.update(extra)
    return env


def test_collective_timeout_default_env_and_argument() -> None:
    assert collective_timeout_minutes(None, {}) == DEFAULT_TIMEOUT_MINUTES == 60
    assert collective_timeout_minutes(None, {TIMEOUT_ENV: "90"}) == 90
    assert collective_timeout_minutes(5, {TIMEOUT_ENV: "90"}) == 5
    for bad in ("soon", "0", "-3", "inf"):
        with pytest.raises(KidneySSLError, match=TIMEOUT_ENV):
            collective_timeout_minutes(None, {TIMEOUT_ENV: bad})


class _FakeGroup:
    """``torch.distributed`` init as far as :func:`init_distributed` goes; records its arguments."""

    def __init__(self, monkeypatch) -> None:
        import torch.distributed as dist

        self.kwargs: dict = {}
        monkeypatch.setattr(dist, "is_initialized", lambda: bool(self.kwargs))
        monkeypatch.setattr(dist, "init_process_group", lambda **kw: self.kwargs.update(kw))


def _clean_launch_env(monkeypatch) -> None:
    for name in (*_LAUNCH_VARS, *_slurm_env(0), "SLURM_STEPID", "SLURM_NODELIST", "SLURM_STEP_NODELIST"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("rank", [0, 1])
def test_init_distributed_sets_the_timeout_and_logs_it_once_on_rank_0(monkeypatch, caplog, rank: int) -> None:
    from datetime import timedelta

    _clean_launch_env(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    group = _FakeGroup(monkeypatch)
    with caplog.at_level(logging.INFO, logger="kidneyssl.training.distributed"):
        ctx = init_distributed("cpu")
    assert group.kwargs["timeout"] == timedelta(minutes=60) and group.kwargs["backend"] == "gloo"
    assert ctx.rank == rank and ctx.launcher == "torchrun"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == (1 if rank == 0 else 0)
    assert rank or "60 min" in lines[0]
    monkeypatch.setenv(TIMEOUT_ENV, "7.5")
    group.kwargs.clear()
    init_distributed("cpu")
    assert group.kwargs["timeout"] == timedelta(minutes=7.5)


def _fake_gpus(monkeypatch, count: int) -> list[int]:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_one_named_gpu_for_several_processes_is_refused(monkeypatch, launcher: str) -> None:
    _clean_launch_env(monkeypatch)
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"} if launcher == "torchrun" else _slurm_env(1)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _fake_gpus(monkeypatch, 2)
    group = _FakeGroup(monkeypatch)
    with pytest.raises(KidneySSLError, match="'cuda:1' names one GPU") as err:
        init_distributed("cuda:1")
    assert err.value.remedy == ("device=cuda",) and not group.kwargs


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch) -> None:
    _clean_launch_env(monkeypatch)
    for key, value in _slurm_env(1, SLURM_LOCALID="1", MASTER_PORT="29999").items():
        monkeypatch.setenv(key, value)
    chosen = _fake_gpus(monkeypatch, 2)
    group = _FakeGroup(monkeypatch)
    ctx = init_distributed("cuda")
    assert chosen == [1] and ctx.device == torch.device("cuda", 1) and ctx.launcher == "slurm"
    assert group.kwargs["backend"] == "nccl" and group.kwargs["init_method"] == "tcp://gpu01:29999"
    assert (group.kwargs["rank"], group.kwargs["world_size"]) == (1, 2)
    monkeypatch.setenv("SLURM_LOCALID", "2")  # a third process on a node with 2 GPUs
    with pytest.raises(KidneySSLError, match="local rank 2"):
        init_distributed("auto")
    _fake_gpus(monkeypatch, 1)  # srun --gpus-per-task 1: each process sees its own GPU only
    assert init_distributed("cuda").device == torch.device("cuda", 0)


def test_two_srun_tasks_form_a_group_of_two(tmp_path: Path) -> None:
    """Two processes started as ``srun -n 2`` would start them (no torchrun) meet on 127.0.0.1."""
    port = _free_port()
    base = {k: v for k, v in _env().items() if k not in _LAUNCH_VARS and not k.startswith("SLURM")}
    procs = [subprocess.Popen([sys.executable, str(SLURM_WORKER), str(tmp_path)],
                              env={**base, **_slurm_env(rank, SLURM_JOB_NODELIST="127.0.0.1",
                                                        MASTER_PORT=str(port))})
             for rank in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    found = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(f["rank"], f["world"], f["local_rank"], f["launcher"]) for f in found] == \
        [(0, 2, 0, "slurm"), (1, 2, 1, "slurm")]
    assert [f["sum"] for f in found] == [3.0, 3.0]


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_before_the_step(tmp_path: Path) -> None:
    """Rank 1's first loss is NaN: both ranks raise the same error (no rank hangs in the next
    collective) and no optimiser step changed the weights of either."""
    import json

    out = tmp_path / "nan.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(out), "1", "1",
                    "1"], check=True, env=_env(), timeout=300, capture_output=True)
    results = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    assert all("non-finite" in r["error"] and r["unchanged"] for r in results), results
    assert "another process" in results[0]["error"] and "this process" in results[1]["error"]


def test_a_non_finite_loss_is_refused_before_the_optimiser_step() -> None:
    """One process, 2 items per step: the step holding the NaN is never taken, the one before is."""
    import torch

    from kidneyssl.errors import KidneySSLError
    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.training.loop import train_one_epoch

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    values = [1.0, 1.0, float("nan"), 1.0]

    def compute(model, value):
        return (weight * value).sum(), {}, 1

    model = torch.nn.Module()
    with pytest.raises(KidneySSLError, match="non-finite at item 2 of this process"):
        train_one_epoch(model, values, compute, optimizer, init_distributed("cpu"), accumulate=2)
    torch.testing.assert_close(weight.detach(), torch.full((3,), 0.9))  # the first step only (mean gradient 1)
