"""GroupNorm for bfloat16 training (issue 19, item 7): the low-precision Function against
``F.group_norm``, what it stores for backward, and that the networks' state dicts do not change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kidneyssl.config import ModelConfig
from kidneyssl.models import blocks, build_segmentation_model, build_siamese_model
from kidneyssl.models.blocks import GroupNorm, NormActConv, group_norm_low_precision

TINY = ModelConfig(init_features=4, growth_rate=4, norm_groups=2, embedding_dim=8)


def _inputs(dtype: torch.dtype, channels_last: bool = False, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 4, 6, 5, generator=gen, dtype=torch.float64) * 3 + 2
    w = torch.rand(8, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(8, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x.to(dtype).requires_grad_(), w.requires_grad_(), b.requires_grad_()


def test_gradcheck_in_float64() -> None:
    x, w, b = _inputs(torch.float64)
    x, w, b = x[:1, :4, :2, :3, :2].detach().requires_grad_(), w[:4].detach().requires_grad_(), \
        b[:4].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: group_norm_low_precision(x, 2, w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: group_norm_low_precision(x, 4), (x,))


def _forward_backward(fn, x, w, b, grad):
    y = fn(x, w, b)
    (y.double() * grad).sum().backward()
    return y, x.grad, w.grad, b.grad


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1.5e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_f_group_norm(dtype: torch.dtype, rtol: float, channels_last: bool) -> None:
    """Output and the three gradients against ``F.group_norm`` in float64 on the same
    (rounded) input, relative to the largest value."""
    x, w, b = _inputs(dtype, channels_last)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = _forward_backward(lambda x, w, b: group_norm_low_precision(x, 4, w.float(), b.float()), x, w, b, grad)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = _forward_backward(lambda x, w, b: F.group_norm(x, 4, w, b), xr, wr, br, grad)
    assert ours[0].dtype == ours[1].dtype == dtype
    assert ours[0].is_contiguous(memory_format=torch.channels_last_3d) == channels_last
    for got, want in zip(ours, ref):
        err = float((got.detach().double() - want.detach()).abs().max() / want.detach().abs().max())
        assert err < rtol, (err, rtol)


def test_module_keeps_float32_on_pytorchs_path_and_bf16_in_bf16() -> None:
    gen = torch.Generator().manual_seed(0)
    ours, plain = GroupNorm(2, 8), nn.GroupNorm(2, 8)
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.copy_(torch.randn(8, generator=gen))
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 8, 4, 4, 4, generator=gen)
    assert torch.equal(ours(x), plain(x))
    # CPU default: PyTorch's path (its CPU GroupNorm keeps bfloat16 already); True: ours
    assert torch.equal(ours(x.bfloat16()), plain(x.bfloat16()))
    ours.low_precision = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.grad_fn is not None and "GroupNormLowPrecision" in y.grad_fn.name()
    ours.low_precision = False
    assert torch.equal(ours(x.bfloat16()), plain(x.bfloat16()))


def test_the_function_saves_only_its_input_and_group_statistics() -> None:
    x, w, b = _inputs(torch.bfloat16)
    saved, out = _saved_during(lambda: group_norm_low_precision(x, 4, w.float(), b.float()))
    assert out.dtype == torch.bfloat16
    assert saved == [(torch.bfloat16, x.numel()), (torch.float32, 8), (torch.float32, 8), (torch.float32, 8)]


class _AsUnderCudaAutocast(nn.GroupNorm):
    """PyTorch's GroupNorm as CUDA autocast runs it (``group_norm`` is on its float32 list: the
    input is cast to float32, which GroupNorm saves, and the output is float32). CPU autocast
    leaves ``group_norm`` alone, so the comparison is made with this stand-in."""

    def forward(self, x):
        return super().forward(x.float())


def _saved_during(fn):
    """(dtype, numel) of every tensor autograd saves while ``fn`` runs, and its result."""
    saved: list[tuple[torch.dtype, int]] = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return saved, out


def test_gn_relu_conv_stores_bfloat16_activations_under_autocast() -> None:
    """The chain the networks are made of: everything stored at activation size is bfloat16,
    and it stores fewer bytes than PyTorch's GroupNorm under autocast (and than float32)."""
    torch.manual_seed(0)
    layer = NormActConv(16, 8, 3, 1, norm_groups=4)
    layer[0].low_precision = True  # the path CUDA takes by default
    x = torch.randn(1, 16, 8, 8, 8).bfloat16().requires_grad_()
    size = x.numel()

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(x)

    saved, out = _saved_during(run)
    assert out.dtype == torch.bfloat16
    big = [(dtype, n) for dtype, n in saved if n >= size]
    assert big and all(dtype == torch.bfloat16 for dtype, _ in big), big
    ours_bytes = sum(n * (torch.finfo(d).bits // 8) for d, n in big)
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()

    stock = _AsUnderCudaAutocast(4, 16)
    stock.load_state_dict(layer[0].state_dict())
    layer[0] = stock
    saved_stock, out_stock = _saved_during(run)
    assert out_stock.dtype == torch.bfloat16
    stock_bytes = sum(n * (torch.finfo(d).bits // 8) for d, n in saved_stock if n >= size)
    assert ours_bytes < stock_bytes
    saved_fp32, _ = _saved_during(lambda: layer(x.detach().float().requires_grad_()))
    assert ours_bytes < sum(n * 4 for d, n in saved_fp32 if n >= size)


def test_state_dict_keys_unchanged_and_old_checkpoints_load(monkeypatch) -> None:
    monkeypatch.setattr(blocks, "GroupNorm", nn.GroupNorm)  # the networks as built before
    old_seg, old_sia = build_segmentation_model(TINY), build_siamese_model(TINY)
    monkeypatch.undo()
    new_seg, new_sia = build_segmentation_model(TINY), build_siamese_model(TINY)
    assert any(isinstance(m, GroupNorm) for m in new_seg.modules())
    assert not any(isinstance(m, GroupNorm) for m in old_seg.modules())
    for old, new in ((old_seg, new_seg), (old_sia, new_sia)):
        assert list(old.state_dict()) == list(new.state_dict())
        new.load_state_dict(old.state_dict(), strict=True)


@pytest.mark.parametrize("low_precision", [True, None])
def test_bfloat16_autocast_training_step_of_the_network(low_precision) -> None:
    """One CPU bfloat16-autocast step: bfloat16 logits, finite loss, a gradient on every parameter.

    32^3, not 16^3: PyTorch's CPU bfloat16 conv3d backward now and then gave a NaN weight gradient
    at the 2^3 voxels of the deepest level, with PyTorch's own GroupNorm as well (torch 2.13).
    """
    from kidneyssl.config import SegTrainConfig
    from kidneyssl.losses import segmentation_loss

    torch.manual_seed(0)
    model = build_segmentation_model(TINY)
    for m in model.modules():
        if isinstance(m, GroupNorm):
            m.low_precision = low_precision
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = segmentation_loss(out, x, (x > 0.5).float(), 0, 2, SegTrainConfig(pos_weight=1.0))["total"]
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == []
