"""Building blocks of the paper's networks (section 3.1, Fig. 2-3): GroupNorm-preceded 3-D convs,
densely connected layers and blocks, the downsampling transition, plain decoder blocks.

Every convolution is preceded by a GroupNorm (the paper: "all convolutional layers are preceded by
a Group norm layer"), in pre-activation order GN -> ReLU -> conv as in DenseNet. Shapes are
(B, C, Z, Y, X); all blocks accept the default (contiguous) or ``torch.channels_last_3d`` layout
and keep it.

Under bfloat16 (or float16) autocast, PyTorch runs ``group_norm`` in float32: it stores a float32
copy of its input for backward and returns float32, so the ReLU stores float32 and the conv a
further low-precision copy (more bytes per value than a float32 run). :class:`GroupNorm` instead
normalises a low-precision input with float32 statistics and returns the input's dtype, storing
only that input and per-group mean/rstd (:func:`group_norm_low_precision`); float32 inputs (and
CPU inputs, which PyTorch already keeps in bfloat16) take PyTorch's own path, and the parameters
and state dict are ``nn.GroupNorm``'s.

MONAI has a 3-D DenseNet (``monai.networks.nets.DenseNet``) but its blocks use BatchNorm, a
bottleneck 1x1x1 conv and pooling transitions, and it cannot return the per-resolution skips a
U-Net needs; these few lines are simpler than bending it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

__all__ = [
    "group_count",
    "GroupNorm",
    "group_norm_low_precision",
    "Conv3d",
    "NormActConv",
    "DenseLayer",
    "DenseBlock",
    "Transition",
    "PlainBlock",
    "Upsample2x",
    "UpBlock",
]


def group_count(channels: int, max_groups: int) -> int:
    """The largest number of GroupNorm groups ``<= max_groups`` that divides ``channels``.

    ``group_count(87, 8) == 3``; a single channel (the CT input) gets one group.
    """
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _per_channel(values: Tensor, x: Tensor) -> Tensor:
    """(N, C) values shaped to broadcast against the (N, C, ...) tensor ``x``."""
    return values.reshape(*values.shape, *([1] * (x.dim() - 2)))


class _GroupNormLowPrecision(torch.autograd.Function):
    """GroupNorm that saves its (low-precision) input and the per-group mean and rstd, and
    recomputes the normalised values in backward. Statistics, scale and shift are computed in
    float32 (float64 for float64 inputs); the output and the input gradient have the input's dtype.

    Memory beyond the output: per-channel vectors in forward (``sum`` and ``vector_norm`` with a
    float32 ``dtype`` reduce a bfloat16 CUDA tensor without a float32 copy); one tensor of the
    input's dtype and size in backward, which becomes the input gradient. The backward pass is
    not itself differentiable (no double backward; ``torch.compile`` traces it as is).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int,
                eps: float) -> Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)
        n, c = x.shape[:2]
        per_group = c // groups
        dims = tuple(range(2, x.dim()))
        count = per_group * (x.numel() // max(n * c, 1))
        with torch.autocast(x.device.type, enabled=False):
            total = torch.sum(x, dims, dtype=acc).view(n, groups, per_group).sum(-1)
            squares = torch.linalg.vector_norm(x, 2, dims, dtype=acc).square().view(n, groups, per_group).sum(-1)
            mean = total / count
            # E[x^2] - E[x]^2 in float32 over bfloat16 values (as PyTorch's CPU GroupNorm does)
            var = (squares / count - mean * mean).clamp_min(0.0)
            rstd = torch.rsqrt(var + eps)
            scale = rstd.repeat_interleave(per_group, dim=1)
            shift = -mean.repeat_interleave(per_group, dim=1) * scale
            if weight is not None:
                scale = scale * weight.to(acc)
                shift = shift * weight.to(acc)
            if bias is not None:
                shift = shift + bias.to(acc)
            out = torch.empty_like(x)
            torch.addcmul(_per_channel(shift, x), x, _per_channel(scale, x), out=out)
        ctx.groups, ctx.count = groups, count
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.save_for_backward(x, weight, mean, rstd)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        groups, count = ctx.groups, ctx.count
        acc = mean.dtype
        n, c = x.shape[:2]
        per_group = c // groups
        dims = tuple(range(2, x.dim()))
        with torch.autocast(x.device.type, enabled=False):
            mean_c = mean.repeat_interleave(per_group, dim=1)
            rstd_c = rstd.repeat_interleave(per_group, dim=1)
            # x_hat = (x - mean) * rstd, then grad * x_hat, in one buffer of the input's dtype
            buffer = torch.empty_like(x)
            torch.addcmul(_per_channel(-mean_c * rstd_c, x), x, _per_channel(rstd_c, x), out=buffer)
            buffer.mul_(grad)
            grad_xhat = torch.sum(buffer, dims, dtype=acc)  # (N, C): sum of grad * x_hat
            grad_sum = torch.sum(grad, dims, dtype=acc)  # (N, C): sum of grad
            w = weight.to(acc).expand(n, c) if weight is not None else torch.ones_like(grad_sum)
            # dx = rstd * (w*g - mean_group(w*g) - x_hat * mean_group(w*g*x_hat))
            a = (w * grad_sum).view(n, groups, per_group).sum(-1) / count
            b = (w * grad_xhat).view(n, groups, per_group).sum(-1) / count
            a_c, b_c = a.repeat_interleave(per_group, dim=1), b.repeat_interleave(per_group, dim=1)
            alpha = rstd_c * w
            beta = -rstd_c * rstd_c * b_c
            gamma = rstd_c * (rstd_c * b_c * mean_c - a_c)
            torch.addcmul(_per_channel(gamma, x), x, _per_channel(beta, x), out=buffer)
            buffer.addcmul_(grad, _per_channel(alpha, x))
        grad_weight = grad_xhat.sum(0).to(weight.dtype) if ctx.has_weight and ctx.needs_input_grad[1] else None
        grad_bias = grad_sum.sum(0).to(weight.dtype if weight is not None else grad.dtype) \
            if ctx.has_bias and ctx.needs_input_grad[2] else None
        return buffer if ctx.needs_input_grad[0] else None, grad_weight, grad_bias, None, None


def group_norm_low_precision(x: Tensor, num_groups: int, weight: Tensor | None = None,
                             bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``F.group_norm`` for a bfloat16/float16 input that stays in the input's dtype.

    Statistics, scale and shift in float32 (float64 for float64 inputs); for backward only ``x``
    itself and the (N, groups) mean and rstd are kept. Any memory layout (``channels_last_3d``
    stays channels-last).

    Args:
        x: (N, C, ...) input, C divisible by ``num_groups``.
        weight, bias: (C,) affine parameters (any float dtype), or None.

    Returns:
        The normalised (N, C, ...) tensor, dtype and layout of ``x``.
    """
    if x.dim() < 3 or x.shape[1] % num_groups:
        raise ValueError(f"expected (N, C, ...) with C divisible by {num_groups} groups, got {tuple(x.shape)}")
    return _GroupNormLowPrecision.apply(x, weight, bias, int(num_groups), float(eps))


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict; float32 inputs take its path unchanged)
    that keeps a bfloat16/float16 input in its dtype (:func:`group_norm_low_precision`).

    Attributes:
        low_precision: None (default): the low-precision path for bfloat16/float16 inputs on
            devices other than the CPU (PyTorch's CPU GroupNorm already takes a bfloat16 input
            in one fused pass with float32 statistics and returns bfloat16, and CPU autocast
            leaves it so); True: for such inputs on every device; False: PyTorch's path always
            (float32 under CUDA autocast, for comparisons).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype)
        self.low_precision: bool | None = None

    def forward(self, x: Tensor) -> Tensor:
        use = self.low_precision if self.low_precision is not None else x.device.type != "cpu"
        if use and x.dtype in _LOW_PRECISION:
            return group_norm_low_precision(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def _use_onednn(x: Tensor) -> bool:
    """Autograd off, float32 on the CPU outside autocast (autocast's bfloat16 casts apply to
    ``conv3d`` only), with oneDNN built in and not turned off
    (``torch.backends.mkldnn.flags(enabled=False)``)."""
    return not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32 \
        and x.dim() == 5 \
        and torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled) \
        and not torch.is_autocast_enabled("cpu")


def _count_onednn_convolutions() -> None:
    """Register a FLOP formula for ``aten.mkldnn_convolution`` (called directly by
    :class:`Conv3d`), so that ``torch.utils.flop_counter.FlopCounterMode`` (used by the training
    and inference benchmarks) counts these convolutions like ``aten.convolution``."""
    from torch.utils import flop_counter

    op = torch.ops.aten.mkldnn_convolution
    if op in flop_counter.flop_registry:
        return

    def flops(x_shape: list[int], w_shape: list[int], *args: object, out_shape: list[int],
              **kwargs: object) -> int:
        return int(flop_counter.conv_flop_count(x_shape, w_shape, out_shape, transposed=False))

    flop_counter.register_flop_formula(op)(flops)


_count_onednn_convolutions()


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state dict) that runs float32 CPU inference convolutions
    on oneDNN whatever their shape.

    PyTorch's CPU dispatcher sends a batch-1 3-D convolution whose ``C x Z x Y`` is at most 20480
    to its reference im2col kernel (``slow_conv3d``), which is 4-20x slower than oneDNN on this
    network's low-resolution layers (e.g. 90 ms vs 6 ms for 32->32 channels at 16x32x32, 2
    threads; ``benchmarks/bench_infer_half.py``) and also for the one-channel input convolution.
    oneDNN computes the same convolution (differences at float32 rounding). With autograd on,
    PyTorch's own dispatch is kept: this path was measured for inference only, and oneDNN's
    backward has size-dependent fallbacks to its reference kernels (in channels-last, a paper-size
    training step fell to ~4 minutes; see ``training.finetune``).
    """

    def forward(self, x: Tensor) -> Tensor:
        if _use_onednn(x) and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding,
                                                     self.stride, self.dilation, self.groups)
        return super().forward(x)


class NormActConv(nn.Sequential):
    """GroupNorm -> ReLU -> Conv3d (pre-activation).

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: cubic kernel size (3 or 1; 2 for nothing else here).
        stride: convolution stride (2 halves every spatial size).
        norm_groups: maximum GroupNorm groups (clamped with :func:`group_count`).
        activation: put a ReLU between the norm and the conv. The network input (one CT channel)
            gets GroupNorm(1, 1) without ReLU so that negative (below-mean) intensities survive.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 norm_groups: int = 8, activation: bool = True) -> None:
        layers: list[nn.Module] = [GroupNorm(group_count(in_channels, norm_groups), in_channels)]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        layers.append(Conv3d(in_channels, out_channels, kernel_size, stride=stride,
                                padding=kernel_size // 2, bias=False))
        super().__init__(*layers)


class DenseLayer(NormActConv):
    """One densely connected layer: GN -> ReLU -> conv3x3x3 adding ``growth_rate`` channels.

    No 1x1x1 bottleneck (DenseNet-BC): with 16-channel growth and at most ~170 input channels the
    3x3x3 conv is cheap at the low resolutions where inputs are wide, and a bottleneck of 4 x growth
    channels would be wider than the input in the expensive full-resolution block.
    """

    def __init__(self, in_channels: int, growth_rate: int, norm_groups: int) -> None:
        super().__init__(in_channels, growth_rate, 3, 1, norm_groups)


class DenseBlock(nn.Module):
    """``num_layers`` densely connected layers; the output concatenates the input and every layer's
    new features: (B, C_in, Z, Y, X) -> (B, C_in + num_layers * growth_rate, Z, Y, X).

    Under ``torch.no_grad``/``inference_mode`` the features are written into one preallocated
    buffer (memory-efficient DenseNet: one allocation, no repeated concatenation). With autograd
    on, layer inputs are concatenated (in-place writes into a shared buffer would invalidate the
    tensors saved for backward); ``gradient_checkpointing`` then recomputes each layer in backward
    instead of storing its normalised input, trading ~30% more compute for memory.
    """

    def __init__(self, in_channels: int, num_layers: int, growth_rate: int, norm_groups: int,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.growth_rate = growth_rate
        self.out_channels = in_channels + num_layers * growth_rate
        self.gradient_checkpointing = gradient_checkpointing
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, norm_groups) for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self._forward_buffered(x)
        features = x
        for layer in self.layers:
            if self.gradient_checkpointing:
                new = cp.checkpoint(layer, features, use_reentrant=False)
            else:
                new = layer(features)
            features = torch.cat([features, new], dim=1)
        return features

    def _forward_buffered(self, x: Tensor) -> Tensor:
        batch, _, *spatial = x.shape
        channels_last = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) \
            and not x.is_contiguous()
        if channels_last:
            # Channel slices of a channels-last buffer are strided; the conv would copy them
            # anyway, so plain concatenation is as fast here.
            features = x
            for layer in self.layers:
                features = torch.cat([features, layer(features)], dim=1)
            return features
        buffer = x.new_empty((batch, self.out_channels, *spatial))
        buffer[:, : self.in_channels] = x
        end = self.in_channels
        for layer in self.layers:
            buffer[:, end: end + self.growth_rate] = layer(buffer[:, :end])
            end += self.growth_rate
        return buffer


class Transition(nn.Module):
    """The paper's downsampling after each dense block: a stride-2 3x3x3 conv, then a 1x1x1 conv
    that combines and reduces the feature maps (both preceded by GroupNorm).

    (B, C_in, Z, Y, X) -> (B, C_out, Z/2, Y/2, X/2).
    """

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.down = NormActConv(in_channels, in_channels, 3, 2, norm_groups)
        self.reduce = NormActConv(in_channels, out_channels, 1, 1, norm_groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(self.down(x))


class PlainBlock(nn.Sequential):
    """The decoder's plain block: two GN -> ReLU -> conv3x3x3, (B, C_in, ...) -> (B, C_out, ...)."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__(
            NormActConv(in_channels, out_channels, 3, 1, norm_groups),
            NormActConv(out_channels, out_channels, 3, 1, norm_groups),
        )


class Upsample2x(nn.ConvTranspose3d):
    """``ConvTranspose3d(kernel_size=2, stride=2, bias=False)`` computed as one matrix product and
    a depth-to-space shuffle: (B, C_in, Z, Y, X) -> (B, C_out, 2Z, 2Y, 2X).

    With kernel = stride = 2 the output blocks do not overlap, so each input voxel maps to its
    2x2x2 output block by a (C_in -> 8 C_out) linear map. PyTorch's CPU backend runs 3-D transposed
    convolutions on a slow reference path for many shapes and returns the default layout; this
    is exact (same weights and state dict), several times faster, and keeps
    ``channels_last_3d`` (channels-last input gives channels-last output).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        b, _, z, y, w = x.shape
        c_out = self.out_channels
        # weight (C_in, C_out, 2, 2, 2) -> (C_in, 2, 2, 2, C_out): the output is laid out as
        # (B, Z, 2, Y, 2, X, 2, C_out), i.e. channels-last of (B, C_out, 2Z, 2Y, 2X).
        weight = self.weight.permute(0, 2, 3, 4, 1).reshape(self.in_channels, 8 * c_out)
        cols = torch.matmul(x.permute(0, 2, 3, 4, 1), weight)  # (B, Z, Y, X, 8 C_out)
        out = cols.view(b, z, y, w, 2, 2, 2, c_out).permute(0, 1, 4, 2, 5, 3, 6, 7)
        out = out.reshape(b, 2 * z, 2 * y, 2 * w, c_out).permute(0, 4, 1, 2, 3)
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            return out
        return out.contiguous()


class UpBlock(nn.Module):
    """Transpose-conv upsampling (kernel 2, stride 2, preceded by GN -> ReLU), optional U-Net skip
    concatenation, then a :class:`PlainBlock`.

    Args:
        in_channels: channels of the coarse input.
        skip_channels: channels of the skip feature map (0: no skip, as in the reconstruction branch).
        out_channels: channels after upsampling and after the plain block.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.skip_channels = skip_channels
        self.norm = GroupNorm(group_count(in_channels, norm_groups), in_channels)
        self.up = Upsample2x(in_channels, out_channels)
        self.block = PlainBlock(out_channels + skip_channels, out_channels, norm_groups)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(F.relu(self.norm(x)))
        if self.skip_channels:
            if skip is None:
                raise ValueError("this UpBlock was built with a skip connection; pass `skip`")
            x = torch.cat([x, skip], dim=1)
        return self.block(x)
