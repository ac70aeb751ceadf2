"""The segmentation network's forward pass for CPU inference: the same function as the logits of
:meth:`DenseUNet3D.forward <kidneyssl.models.unet.DenseUNet3D.forward>`, with fewer passes over
memory. Only :meth:`DenseUNet3D.inference_forward <kidneyssl.models.unet.DenseUNet3D.inference_forward>`
calls it (inference chooses it explicitly; ``forward`` never switches to it).

On a CPU the network's convolutions run near the machine's matmul rate; around them, every dense
layer concatenated all earlier feature maps, GroupNorm read them twice more and wrote a
normalised copy, and ReLU rewrote that copy. Here:

- A feature map is kept as its parts (a dense block's input and each layer's new channels, or an
  upsampled map and its U-Net skip) and is never concatenated.
- Each part's per-channel sum and sum of squares are computed once, when the part is made (in
  float64, over chunks); a GroupNorm's group statistics then follow from them for every layer that
  reads the part, however the groups fall.
- GroupNorm + ReLU is a per-channel affine map: each part is written once, normalised, into its
  channel slice of the convolution's input (``torch.addcmul`` into the slice), then one in-place
  ReLU. The concatenation is this write.

PyTorch's own ``GroupNorm`` (channels-last kernel) computes its statistics in float32 from sums of
squares; these are float64 and at least as accurate (tests compare both paths). What it saves is
memory more than time (``benchmarks/results/predict_factor.json``). Applies to float32 and
bfloat16 CPU inference; autograd must be off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, cast

import torch
from torch import Tensor, nn

from kidneyssl.models.blocks import DenseBlock, NormActConv, Transition, UpBlock
from kidneyssl.models.encoder import check_spatial_size

if TYPE_CHECKING:
    from kidneyssl.models.unet import DenseUNet3D

__all__ = ["cpu_inference_forward"]

_CL = torch.channels_last_3d
# Rows (voxels) per chunk of the statistics: small enough that float32 partial sums stay exact
# to ~1e-7, large enough that the loop costs nothing.
_STAT_ROWS = 1 << 15


@dataclass(frozen=True)
class _Part:
    """One channel block of a feature map (B, C, Z, Y, X), channels-last, with its per-sample,
    per-channel sum and sum of squares over the voxels (float64, shape (B, C))."""

    data: Tensor
    total: Tensor
    squares: Tensor


def _part(x: Tensor) -> _Part:
    """Wrap ``x`` (made channels-last if it is not) with its channel statistics."""
    x = x.contiguous(memory_format=_CL)
    b, c = x.shape[:2]
    rows = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)  # a view for channels-last
    total = torch.zeros(b, c, dtype=torch.float64)
    squares = torch.zeros(b, c, dtype=torch.float64)
    for i in range(b):
        for chunk in rows[i].split(_STAT_ROWS):
            chunk = chunk.float()
            total[i] += chunk.sum(0)
            squares[i] += (chunk * chunk).sum(0)
    return _Part(x, total, squares)


def _norm_act(parts: Sequence[_Part], norm: nn.GroupNorm, relu: bool) -> Tensor:
    """``relu(norm(cat(parts, dim=1)))`` written in one pass per part into a fresh channels-last
    tensor (the input of the convolution that follows)."""
    first = parts[0].data
    b, spatial = first.shape[0], first.shape[2:]
    voxels = first[0, 0].numel()
    total = torch.cat([p.total for p in parts], dim=1)
    squares = torch.cat([p.squares for p in parts], dim=1)
    channels = total.shape[1]
    if channels != norm.num_channels:
        raise ValueError(f"GroupNorm expects {norm.num_channels} channels, the feature map has {channels}")
    groups = norm.num_groups
    count = voxels * (channels // groups)
    mean = total.view(b, groups, -1).sum(-1) / count
    var = (squares.view(b, groups, -1).sum(-1) / count - mean * mean).clamp_min(0.0)
    rstd = (var + norm.eps).rsqrt()
    scale = rstd.repeat_interleave(channels // groups, dim=1)
    shift = -mean.repeat_interleave(channels // groups, dim=1) * scale
    if norm.weight is not None:
        weight = norm.weight.detach().double()
        scale, shift = scale * weight, shift * weight
    if norm.bias is not None:
        shift = shift + norm.bias.detach().double()
    out = torch.empty((b, channels, *spatial), dtype=first.dtype, memory_format=_CL)
    start = 0
    for p in parts:
        stop = start + p.data.shape[1]
        # float32 scale and shift: computed in float32, rounded once when written (bfloat16 parts)
        torch.addcmul(shift[:, start:stop, None, None, None].float(), p.data,
                      scale[:, start:stop, None, None, None].float(), out=out[:, start:stop])
        start = stop
    if relu:
        out.relu_()
    return out


def _norm_act_conv(block: nn.Module, parts: Sequence[_Part]) -> Tensor:
    """A :class:`~kidneyssl.models.blocks.NormActConv` (GroupNorm [-> ReLU] -> Conv3d) on parts."""
    layers = list(cast(nn.Sequential, block))
    norm, conv = cast(nn.GroupNorm, layers[0]), layers[-1]
    relu = any(isinstance(m, nn.ReLU) for m in layers)
    return cast(Tensor, conv(_norm_act(parts, norm, relu)))


def cpu_inference_forward(model: DenseUNet3D, x: Tensor) -> Tensor:
    """Segmentation logits (B, out_channels, Z, Y, X), contiguous, of ``model`` for ``x``.

    Autograd must be off (``torch.no_grad``/``inference_mode``); ``x`` is on the CPU. Feature maps
    are freed as soon as the last layer that reads them has run.
    """
    if torch.is_grad_enabled():
        raise RuntimeError("cpu_inference_forward is for inference; run it under torch.no_grad()")
    enc, dec = model.encoder, model.decoder
    check_spatial_size(x.shape, enc.downsampling, enc.in_channels)
    current = [_part(_norm_act_conv(enc.stem, [_part(x)]))]
    skips: list[list[_Part]] = []
    for block, transition in zip(cast(Sequence[DenseBlock], enc.blocks),
                                 cast(Sequence[Transition], enc.transitions)):
        for layer in block.layers:
            current.append(_part(_norm_act_conv(layer, current)))
        skips.append(current)
        down = _norm_act_conv(transition.down, current)
        current = [_part(_norm_act_conv(transition.reduce, [_part(down)]))]
        del down
    for up in cast(Sequence[UpBlock], dec.ups):
        upsampled = up.up(_norm_act(current, up.norm, relu=True))
        current = [_part(upsampled)]
        del upsampled
        if dec.use_skips:
            current += skips.pop()
        for conv in cast(Sequence[NormActConv], up.block):
            current = [_part(_norm_act_conv(conv, current))]
    logits = _norm_act_conv(dec.head, current)
    return logits.contiguous()
