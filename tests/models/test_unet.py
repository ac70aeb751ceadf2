"""DenseUNet3D / DenseEncoder / SiameseNet: shapes, parameter counts, gradients, modes, sizes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from kidneyssl.config import ModelConfig
from kidneyssl.models import (
    DenseEncoder,
    DenseUNet3D,
    SegmentationOutput,
    SiameseNet,
    build_segmentation_model,
    build_siamese_model,
    count_parameters,
)
from kidneyssl.models.blocks import Upsample2x, group_count


def _encoder_params_by_hand(cfg: ModelConfig) -> int:
    """Encoder parameter count from the architecture's definition (GN: 2 per channel; bias-free
    convs; transition = GN + 3x3x3 stride-2 conv keeping C + GN + 1x1x1 conv to ceil8(C/2))."""
    g = cfg.growth_rate
    total = 2 * cfg.in_channels + 27 * cfg.in_channels * cfg.init_features
    c = cfg.init_features
    for n in cfg.block_layers:
        for i in range(n):
            cin = c + i * g
            total += 2 * cin + 27 * cin * g
        c_out = c + n * g
        reduced = int(math.ceil(c_out / 2 / 8) * 8)
        total += 2 * c_out + 27 * c_out * c_out + 2 * c_out + c_out * reduced
        c = reduced
    return total


def test_paper_channels_and_parameter_counts(paper_cfg: ModelConfig) -> None:
    model = build_segmentation_model(paper_cfg)
    assert model.encoder.skip_channels == (48, 56, 96, 176)
    assert model.encoder.bottleneck_channels == 88
    assert count_parameters(model.encoder) == _encoder_params_by_hand(paper_cfg) == 1_763_954
    assert count_parameters(model.decoder) == 805_425
    assert count_parameters(model.reconstruction) == 372_673
    assert count_parameters(model) == 2_942_052
    siamese = build_siamese_model(paper_cfg)
    # encoder + Linear(88, 88) + Linear(88, 128)
    assert count_parameters(siamese) == 1_763_954 + 88 * 88 + 88 + 88 * 128 + 128


def test_small_config_parameter_counts(demo_cfg: ModelConfig) -> None:
    small = ModelConfig(init_features=8, growth_rate=8, norm_groups=4, embedding_dim=64)
    model = build_segmentation_model(small)
    assert count_parameters(model.encoder) == _encoder_params_by_hand(small) == 450_810
    assert count_parameters(model) == 748_940
    # whatever the shipped demo preset is, the hand count holds
    assert count_parameters(DenseEncoder(demo_cfg)) == _encoder_params_by_hand(demo_cfg)


def test_no_reconstruction_branch_builds_no_params(paper_cfg: ModelConfig) -> None:
    cfg = dataclasses.replace(paper_cfg, reconstruction=False)
    model = build_segmentation_model(cfg)
    assert model.reconstruction is None
    assert not any(name.startswith("reconstruction.") for name, _ in model.named_parameters())
    assert count_parameters(model) == 1_763_954 + 805_425
    # the keyword override wins over the config
    assert build_segmentation_model(paper_cfg, reconstruction=False).reconstruction is None
    model.train()
    out = model(torch.randn(1, 1, 16, 16, 16))
    assert out.reconstruction is None


@pytest.mark.parametrize("shape", [(32, 64, 32), (64, 112, 112)])
def test_output_shapes(demo_cfg: ModelConfig, paper_cfg: ModelConfig, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    # the paper config on the small input, the demo config on the paper's crop size (speed)
    small = shape == (32, 64, 32)
    cfg = paper_cfg if small else demo_cfg
    batch = 2 if small else 1
    model = DenseUNet3D(cfg).train()
    x = torch.randn(batch, 1, *shape)
    with torch.no_grad():
        feats = model.encode(x)
        logits = model.decode(feats)
        recon = model.reconstruct(feats)
    assert logits.shape == (batch, 1, *shape)
    assert recon.shape == (batch, 1, *shape)
    assert [f.shape[1] for f in feats] == [*model.encoder.skip_channels, model.encoder.bottleneck_channels]
    for level, f in enumerate(feats):
        assert tuple(f.shape[2:]) == tuple(s // 2**level for s in shape)
    if small:
        with torch.no_grad():
            out = model(x)
        assert isinstance(out, SegmentationOutput)
        assert torch.allclose(out.logits, logits, atol=1e-5)
        assert out.reconstruction is not None and out.reconstruction.shape == (batch, 1, *shape)
        siamese = SiameseNet(cfg)
        with torch.no_grad():
            emb_a, emb_b = siamese(x, x.flip(0))
        assert emb_a.shape == emb_b.shape == (batch, cfg.embedding_dim)
        assert torch.allclose(emb_a, emb_b.flip(0), atol=1e-5)  # shared weights, per-sample norm


def test_eval_mode_returns_no_reconstruction_and_is_deterministic(demo_cfg: ModelConfig) -> None:
    model = DenseUNet3D(demo_cfg).eval()
    x = torch.randn(1, 1, 16, 32, 16)
    with torch.inference_mode():
        a = model(x)
        b = model(x)
    assert a.reconstruction is None
    assert torch.equal(a.logits, b.logits)


def test_buffered_inference_matches_autograd_path(paper_cfg: ModelConfig) -> None:
    torch.manual_seed(1)
    model = DenseUNet3D(paper_cfg).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with_grad = model(x).logits  # grad enabled: concatenation path
    with torch.inference_mode():
        buffered = model.decode(model.encode(x))  # contiguous: preallocated dense-block buffer
        fast = model.inference_forward(x)  # CPU inference path (models.cpu_forward)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        cl = model_cl(x.to(memory_format=torch.channels_last_3d)).logits
    assert fast.is_contiguous() and fast.shape == with_grad.shape
    # without autograd every conv runs on oneDNN (blocks.Conv3d): float32 rounding differs
    assert torch.allclose(with_grad, buffered, atol=1e-4)
    assert torch.allclose(with_grad, fast, atol=1e-4)
    assert torch.allclose(with_grad, cl, atol=1e-4)


def _randomise_norms(model: torch.nn.Module) -> None:
    """GroupNorm scales and shifts away from 1/0, so that a wrong per-channel affine shows."""
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("cfg_name", ["paper_cfg", "demo_cfg"])
def test_cpu_inference_forward_matches_the_module_path(cfg_name: str, request: pytest.FixtureRequest) -> None:
    """The fused CPU inference pass (parts never concatenated, GroupNorm from cached channel
    sums) computes the same logits as the blocks' own forward, in float32 and under bfloat16
    autocast, per sample of a batch whose samples differ in scale."""
    cfg: ModelConfig = request.getfixturevalue(cfg_name)
    torch.manual_seed(3)
    model = DenseUNet3D(cfg).eval()
    _randomise_norms(model)
    x = torch.randn(2, 1, 32, 48, 16)
    x[1] = 3.0 * x[1] + 2.0
    small = x[:1, :, :16, :32]  # bfloat16 is emulated (slow) on CPUs without it
    with torch.inference_mode():
        reference = model.decode(model.encode(x))
        fused = model.inference_forward(x)
        module_path = model(x).logits  # forward never switches to the fused pass
        reference_small = model.decode(model.encode(small))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference_bf16 = model.decode(model.encode(small)).float()
            fused_bf16 = model.inference_forward(small).float()
    scale = reference.abs().max()
    assert fused.is_contiguous() and fused.shape == reference.shape == (2, 1, 32, 48, 16)
    assert (fused - reference).abs().max() <= 1e-5 * scale
    assert torch.equal(module_path, reference)
    # bfloat16 rounds differently along the two paths; both stay as close to float32
    bf16_error = (reference_bf16 - reference_small).abs().max()
    assert (fused_bf16 - reference_small).abs().max() <= 2 * bf16_error + 1e-3 * scale
    with pytest.raises(RuntimeError, match="no_grad"):
        from kidneyssl.models.cpu_forward import cpu_inference_forward

        cpu_inference_forward(model, x)


@pytest.mark.parametrize("shape", [(1, 1, 16, 32, 32), (1, 32, 8, 16, 16), (2, 24, 4, 8, 8)])
def test_conv3d_runs_every_float32_cpu_shape_on_onednn(shape: tuple[int, ...]) -> None:
    """blocks.Conv3d: same state dict and values as nn.Conv3d, forward and backward, also for the
    small and one-channel inputs that PyTorch's dispatcher would send to its slow reference kernel."""
    from kidneyssl.models.blocks import Conv3d

    torch.manual_seed(0)
    c_in = shape[1]
    ours = Conv3d(c_in, 16, 3, stride=2, padding=1, bias=True)
    plain = torch.nn.Conv3d(c_in, 16, 3, stride=2, padding=1, bias=True)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(*shape, requires_grad=True)
    y_ours, y_plain = ours(x), plain(x)
    assert torch.allclose(y_ours, y_plain, atol=1e-5)
    g_ours = torch.autograd.grad(y_ours.square().sum(), [x, ours.weight, ours.bias])
    g_plain = torch.autograd.grad(y_plain.square().sum(), [x, plain.weight, plain.bias])
    for a, b in zip(g_ours, g_plain):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    # FlopCounterMode (the benchmarks' FLOP counts) counts the direct oneDNN call as a convolution
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for conv in (ours, plain):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            conv(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("net", ["unet", "siamese"])
def test_every_parameter_gets_a_finite_gradient(demo_cfg: ModelConfig, net: str) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(demo_cfg, gradient_checkpointing=(net == "unet"))
    x = torch.randn(2, 1, 16, 32, 16)
    if net == "unet":
        model = DenseUNet3D(cfg).train()
        out = model(x)
        loss = out.logits.mean() + out.reconstruction.pow(2).mean()
    else:
        model = SiameseNet(cfg).train()
        a, b = model(x, torch.randn_like(x))
        loss = (a - b).pow(2).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_gradient_checkpointing_gives_the_same_gradients(demo_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    plain = DenseEncoder(demo_cfg)
    ckpt = DenseEncoder(dataclasses.replace(demo_cfg, gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    for enc in (plain, ckpt):
        sum(f.mean() for f in enc(x)).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


@pytest.mark.parametrize("shape", [(1, 1, 24, 32, 32), (1, 1, 32, 32, 8), (1, 2, 16, 16, 16), (1, 16, 16, 16)])
def test_invalid_input_sizes_raise(demo_cfg: ModelConfig, shape: tuple[int, ...]) -> None:
    model = DenseUNet3D(demo_cfg)
    with pytest.raises(ValueError, match=r"multiple of 16|5-D|channel"):
        model(torch.zeros(shape))
    with pytest.raises(ValueError):
        SiameseNet(demo_cfg).embed(torch.zeros(shape))


def test_invalid_constructor_arguments(demo_cfg: ModelConfig) -> None:
    with pytest.raises(ValueError, match="decoder_channels"):
        DenseUNet3D(demo_cfg, decoder_channels=(8, 8, 8))
    with pytest.raises(ValueError, match="compression"):
        DenseEncoder(demo_cfg, compression=0.0)


def test_upsample_matches_transposed_convolution() -> None:
    torch.manual_seed(0)
    up = Upsample2x(5, 3).double()
    x = torch.randn(2, 5, 3, 4, 5, dtype=torch.double)
    expected = F.conv_transpose3d(x, up.weight, stride=2)
    assert torch.allclose(up(x), expected, atol=1e-12)
    out_cl = up(x.contiguous(memory_format=torch.channels_last_3d))
    assert out_cl.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(out_cl, expected, atol=1e-12)
    xg = x[:1, :, :2, :2, :2].clone().requires_grad_()
    assert torch.autograd.gradcheck(up, (xg,))


@pytest.mark.parametrize("channels, groups, expected", [(1, 8, 1), (48, 8, 8), (88, 8, 8), (87, 8, 3), (174, 8, 6), (7, 8, 7)])
def test_group_count(channels: int, groups: int, expected: int) -> None:
    assert group_count(channels, groups) == expected
