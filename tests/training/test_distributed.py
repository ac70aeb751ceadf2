"""DDP on CPU (gloo, 2 processes under torchrun) matches 1 process with the same global batch.

Tolerance: per-epoch mean training loss rtol 1e-4 and final weights atol 1e-4. The two runs take
identical steps mathematically (GroupNorm makes items independent; DDP averages gradients over 2
ranks where 1 process averages over 2 accumulated items); only float summation order differs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyssl.config import ModelConfig, SegTrainConfig
from kidneyssl.losses import segmentation_loss
from kidneyssl.models import build_segmentation_model
from kidneyssl.training.distributed import DistContext, gather_objects, shard
from kidneyssl.training.loop import epoch_order

WORKER = Path(__file__).with_name("ddp_worker.py")
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
