"""CUDA paths of training and prediction (mixed precision, GPU windows). Skipped without CUDA;
run on a GPU machine with ``bash benchmarks/gpu_checks.sh``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_amp_segmentation_training_on_cuda(tmp_path: Path, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.config import apply_overrides
    from kidneyssl.io.checkpoint import load_checkpoint
    from kidneyssl.training.finetune import train_segmentation

    cfg = apply_overrides(tiny_cfg, ["train.precision=fp16"])  # the precision with a grad scaler
    result = train_segmentation(tiny_cache, tmp_path / "run", cfg, device="cuda")
    rows = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert len(rows) == cfg.train.epochs
    assert all(math.isfinite(r["train_loss"]) and 0.0 <= r["val_dice"] <= 1.0 for r in rows)
    last = load_checkpoint(result.run_dir / "last.pt", kind="segmentation")
    assert all(t.device.type == "cpu" for t in last["model_state"].values())
    assert last.get("scaler") is not None


def test_amp_pretraining_and_mws_on_cuda(tmp_path: Path, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.config import apply_overrides
    from kidneyssl.training.finetune import train_segmentation
    from kidneyssl.training.pretrain import pretrain_siamese

    cfg = apply_overrides(tiny_cfg, ["train.amp=true"])
    pre = pretrain_siamese(tiny_cache, tmp_path / "pre", cfg, device="cuda")
    assert math.isfinite(pre.best_val_loss)
    mws = train_segmentation(tiny_cache, tmp_path / "mws", cfg, init=str(tmp_path / "pre" / "best.pt"),
                             device="cuda")
    assert (mws.run_dir / "best.pt").is_file()


def test_predict_on_cuda_matches_cpu(tmp_path: Path, phantom_data: Path, tiny_cache: Path, tiny_cfg) -> None:
    from kidneyssl.inference.predict import load_model, predict_volume
    from kidneyssl.io.volumes import read_volume
    from kidneyssl.training.finetune import train_segmentation

    run = train_segmentation(tiny_cache, tmp_path / "run", tiny_cfg, device="cpu").run_dir
    volume = read_volume(phantom_data / "case_00000" / "imaging.nii.gz")
    masks = {}
    for device in ("cpu", "cuda"):
        model, cfg = load_model(run / "last.pt", device)
        masks[device] = predict_volume(model, volume, cfg, device=device, sw_device=device).mask
    a, b = masks["cpu"].astype(bool), masks["cuda"].astype(bool)
    assert a.shape == b.shape == volume.array.shape
    inter = np.logical_and(a, b).sum()
    denom = a.sum() + b.sum()
    assert denom == 0 or 2 * inter / denom > 0.99


# --- issue 19: resume on CUDA, bf16 training, GroupNorm memory (items 1 and 7) -------------------

def _tiny_model_cfg():
    from kidneyssl.config import ModelConfig

    return ModelConfig(init_features=8, growth_rate=8, norm_groups=4, embedding_dim=8)


def test_rng_state_from_a_checkpoint_loaded_onto_the_gpu_restores(tmp_path: Path) -> None:
    from kidneyssl.training.seeding import capture_rng_state, restore_rng_state, seed_everything

    device = torch.device("cuda", 0)
    seed_everything(3)
    torch.rand(3, device=device)
    torch.save({"rng": capture_rng_state(device)}, tmp_path / "ckpt.pt")
    expected = (float(np.random.rand()), torch.rand(4).tolist(), torch.rand(4, device=device).tolist())
    on_gpu = torch.load(tmp_path / "ckpt.pt", map_location="cuda", weights_only=True)["rng"]  # what broke
    restore_rng_state(on_gpu, device)
    assert (float(np.random.rand()), torch.rand(4).tolist(), torch.rand(4, device=device).tolist()) == expected
    legacy = dict(on_gpu, cuda=[on_gpu["cuda_device"]] * (torch.cuda.device_count() + 3))  # saved with more GPUs
    del legacy["cuda_device"]
    restore_rng_state(legacy, device)


def test_resume_rule_cpu_checkpoint_then_load_state_dict_continues_exactly(tmp_path: Path, monkeypatch) -> None:
    """Load to the CPU, load_state_dict onto the GPU model and optimizer: the next step equals the
    uninterrupted run's (Adam's state lands on the GPU by itself)."""
    from kidneyssl.models import build_segmentation_model

    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32, 32, device=device)

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        model(x).logits.square().mean().backward()
        opt.step()

    model = build_segmentation_model(_tiny_model_cfg()).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step(model, opt)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "last.pt")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    step(model, opt)
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    resumed = build_segmentation_model(_tiny_model_cfg()).to(device)
    resumed.load_state_dict(ckpt["model"])
    ropt = torch.optim.Adam(resumed.parameters(), lr=1e-3)
    ropt.load_state_dict(ckpt["opt"])
    assert all(s["exp_avg"].device == device for s in ropt.state.values())
    step(resumed, ropt)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("requested", ["auto", "bf16", "fp16"])
def test_mixed_precision_training_step_on_cuda(requested: str) -> None:
    from kidneyssl.config import SegTrainConfig
    from kidneyssl.losses import segmentation_loss
    from kidneyssl.models import build_segmentation_model
    from kidneyssl.training.precision import (
        autocast_context,
        build_grad_scaler,
        describe_training_precision,
        resolve_training_precision,
    )

    device = torch.device("cuda", 0)
    precision = resolve_training_precision(requested, device)
    if requested == "auto":
        native = torch.cuda.get_device_capability(device) >= (8, 0)
        assert precision == ("bf16" if native else "fp16"), describe_training_precision(requested, precision, device)
    scaler = build_grad_scaler(precision, device)
    assert (scaler is not None) is (precision == "fp16")
    torch.manual_seed(0)
    model = build_segmentation_model(_tiny_model_cfg()).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(1, 1, 32, 64, 48, device=device)
    y = (x > 1).float()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with autocast_context(precision, device):
            out = model(x)
            loss = segmentation_loss(out, x, y, 0, 2, SegTrainConfig(pos_weight=1.0))["total"]
        assert out.logits.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
        (scaler.scale(loss) if scaler else loss).backward()
        bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert bad == [] or scaler is not None  # fp16: the scaler skips a step with inf gradients
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        assert math.isfinite(float(loss))


def test_low_precision_group_norm_matches_pytorch_on_cuda() -> None:
    import torch.nn.functional as F

    from kidneyssl.models.blocks import group_norm_low_precision

    gen = torch.Generator(device="cuda").manual_seed(0)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        x = (torch.randn(1, 48, 32, 64, 48, device="cuda", generator=gen) * 2 + 1).contiguous(memory_format=layout)
        w, b = torch.rand(48, device="cuda") + 0.5, torch.randn(48, device="cuda")
        g = torch.randn(x.shape, device="cuda", generator=gen)
        xb = x.bfloat16().requires_grad_()
        wb, bb = w.clone().requires_grad_(), b.clone().requires_grad_()
        out = group_norm_low_precision(xb, 8, wb, bb)
        (out.float() * g).sum().backward()
        xr, wr, br = (t.detach().double().requires_grad_() for t in (xb, w, b))
        ref = F.group_norm(xr, 8, wr, br)
        (ref * g.double()).sum().backward()
        assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=layout)
        for got, want in ((out, ref), (xb.grad, xr.grad), (wb.grad, wr.grad), (bb.grad, br.grad)):
            err = float((got.detach().double() - want.detach()).abs().max() / want.detach().abs().max())
            assert err < 2e-2, err


def _activation_bytes(model, x, precision: str) -> int:
    """Memory held after the forward pass (what autograd stores for backward, plus the output)."""
    from kidneyssl.training.precision import autocast_context

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with autocast_context(precision, x.device):
        out = model(x)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before
    del out
    return held


def test_bf16_with_our_group_norm_stores_less_than_fp32_and_than_pytorchs_group_norm() -> None:
    from kidneyssl.config import load_preset
    from kidneyssl.models import build_segmentation_model
    from kidneyssl.models.blocks import GroupNorm

    device = torch.device("cuda", 0)
    model = build_segmentation_model(load_preset("paper").model).to(device).train()
    x = torch.randn(1, 1, 64, 128, 80, device=device)
    fp32 = _activation_bytes(model, x, "fp32")
    ours = _activation_bytes(model, x, "bf16")
    for m in model.modules():
        if isinstance(m, GroupNorm):
            m.low_precision = False
    stock = _activation_bytes(model, x, "bf16")
    print(f"activations held after forward: fp32 {fp32 / 2**20:.0f} MiB, bf16 with PyTorch's GroupNorm "
          f"{stock / 2**20:.0f} MiB, bf16 with ours {ours / 2**20:.0f} MiB")
    assert ours < 0.7 * fp32 and ours < 0.7 * stock


def test_init_distributed_single_process_on_cuda(monkeypatch) -> None:
    from kidneyssl.training.distributed import init_distributed

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cuda")
    assert ctx.device.type == "cuda" and not ctx.initialized
