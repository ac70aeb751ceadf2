"""nnU-Net's networks behind our interface (``kidneyssl.models.nnunet``) and their export
(``kidneyssl.models.nnunet_export``). Tests that build networks need the ``nnunet`` extra and skip
without it; the registry's messages are tested always."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from kidneyssl.config import ConfigError, ModelConfig, config_to_dict, load_preset
from kidneyssl.errors import CheckpointError, KidneySSLError
from kidneyssl.models.registry import ARCHITECTURES, MissingExtraError, network_spec, require_extra

CLASSES = {"plain-unet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
           "resenc-unet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}


def tiny_plans(path: Path, architecture: str = "plain-unet", features=(4, 8, 16), strides=None) -> Path:
    """A plans file with one tiny 3-D configuration of the given nnU-Net network (the kwargs
    nnU-Net's planners write for that class)."""
    n = len(features)
    strides = strides or [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    kwargs = {"n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
              "kernel_sizes": [[3, 3, 3]] * n, "strides": strides, "n_conv_per_stage_decoder": [1] * (n - 1),
              "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
              "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    kwargs["n_blocks_per_stage" if architecture == "resenc-unet" else "n_conv_per_stage"] = [1] * n
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": [32, 64, 64], "spacing": [3.0, 1.5, 1.5],
              "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
              "architecture": {"network_class_name": CLASSES[architecture], "arch_kwargs": kwargs,
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
              "batch_dice": False}
    plans = {"dataset_name": "Dataset001_Tiny", "plans_name": path.stem, "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
             "original_median_spacing_after_transp": [3.0, 1.5, 1.5], "image_reader_writer": "SimpleITKIO",
             "label_manager": "LabelManager", "experiment_planner_used": "test",
             "original_median_shape_after_transp": [32, 64, 64],
             "foreground_intensity_properties_per_channel": {}}
    path.write_text(json.dumps(plans))
    return path


# -- always (no extra needed) --------------------------------------------------------------------
def test_registry_names_the_nnunet_networks():
    assert {"plain-unet", "resenc-unet"} <= set(ARCHITECTURES)


def test_a_missing_extra_is_one_line_naming_the_install():
    with pytest.raises(MissingExtraError) as err:
        require_extra(("kidneyssl_no_such_module",), "nnunet", "the plain-unet network")
    message = str(err.value)
    assert "\n" not in message and "pip install kidneyssl[nnunet]" in message and "plain-unet" in message
    assert isinstance(err.value, ImportError)


def test_an_nnunet_network_without_plans_says_what_to_set():
    with pytest.raises(ConfigError, match="model.nnunet_plans"):
        network_spec(ModelConfig(architecture="resenc-unet"))


# -- with the extra ------------------------------------------------------------------------------
@pytest.fixture
def nnunet():
    pytest.importorskip("dynamic_network_architectures")
    return pytest.importorskip("nnunetv2")


@pytest.mark.parametrize("name", ["plain-unet", "resenc-unet"])
def test_state_dict_keys_are_nnunets_own(nnunet, tmp_path, name):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from kidneyssl.models.registry import build_network

    plans = tiny_plans(tmp_path / "plans.json", name)
    spec = network_spec(ModelConfig(architecture=name, nnunet_plans=str(plans)))
    ours = build_network(spec)
    cm = PlansManager(str(plans)).get_configuration("3d_fullres")
    theirs = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                    cm.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)
    keys = list(ours.state_dict())
    assert keys == list(theirs.state_dict())
    assert any(k.startswith("decoder.encoder.") for k in keys)  # nnU-Net's decoder holds the encoder
    assert ours.size_multiple == 4 and ours.bottleneck_channels == 16
    json.dumps(spec.args)  # what checkpoints store is plain JSON
    x = torch.randn(1, 1, 10, 13, 16)  # not multiples: padded inside, cropped back
    out = ours.eval()(x)
    assert out.logits.shape == (1, 1, 10, 13, 16) and out.reconstruction is None
    feats = ours.encode(torch.randn(1, 1, 8, 8, 8))
    assert feats[-1].shape[1] == ours.bottleneck_channels
    assert ours.decode(feats).shape == (1, 1, 8, 8, 8)


def test_plans_of_another_network_are_refused_naming_the_right_one(nnunet, tmp_path):
    plans = tiny_plans(tmp_path / "plans.json", "resenc-unet")
    with pytest.raises(ConfigError, match="set model.architecture to resenc-unet"):
        network_spec(ModelConfig(architecture="plain-unet", nnunet_plans=str(plans)))


def test_encoder_transfer_sets_the_tensors_the_decoder_shares(nnunet, tmp_path):
    from kidneyssl.models.registry import build_network
    from kidneyssl.models.transfer import load_encoder

    spec = network_spec(ModelConfig(architecture="plain-unet", nnunet_plans=str(tiny_plans(tmp_path / "p.json"))))
    torch.manual_seed(0)
    source, target = build_network(spec), build_network(spec)
    report = load_encoder(target, {k: v for k, v in source.state_dict().items() if k.startswith("encoder.")})
    assert not report.missing and not report.unexpected
    state = target.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith("encoder."):
            assert torch.equal(state[key], value) and torch.equal(state["decoder." + key], value)


def test_the_experiment_pads_for_the_network(nnunet, tmp_path):
    from kidneyssl.workflows.experiment import with_network_pad_multiple

    plans = tiny_plans(tmp_path / "p.json", "resenc-unet", features=(2, 2, 2, 2, 2, 2))  # 5 downsamplings
    cfg = load_preset("demo")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, architecture="resenc-unet",
                                                             nnunet_plans=str(plans)))
    assert cfg.preprocess.pad_multiple == 16
    assert with_network_pad_multiple(cfg).preprocess.pad_multiple == 32
    assert with_network_pad_multiple(load_preset("demo")).preprocess.pad_multiple == 16


def _segmentation_checkpoint(path: Path, plans: Path, name: str) -> Path:
    from kidneyssl.config import PreprocessConfig
    from kidneyssl.io.checkpoint import save_checkpoint
    from kidneyssl.models.registry import build_network

    cfg = load_preset("demo")
    cfg = dataclasses.replace(cfg, preprocess=PreprocessConfig(spacing_mm=(8.0, 6.0, 6.0)),
                              model=dataclasses.replace(cfg.model, architecture=name, nnunet_plans=str(plans)))
    spec = network_spec(cfg.model)
    torch.manual_seed(0)
    model = build_network(spec)
    save_checkpoint(path, kind="segmentation", config=config_to_dict(cfg), model_state=model.state_dict(),
                    architecture=spec.to_dict(), epoch=0)
    return path


@pytest.mark.parametrize("name", ["plain-unet", "resenc-unet"])
def test_a_checkpoint_predicts_with_no_other_input(nnunet, tmp_path, name):
    from kidneyssl.cli.main import main

    plans = tiny_plans(tmp_path / "plans.json", name)
    ckpt = _segmentation_checkpoint(tmp_path / "seg.pt", plans, name)
    plans.unlink()  # predict rebuilds the network from the checkpoint alone
    scan = tmp_path / "scans" / "a.nii.gz"
    scan.parent.mkdir()
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(0, 50, size=(24, 40, 48)).astype(np.int16),
                             np.diag([-2.0, -2.5, 3.0, 1.0])), str(scan))
    assert main(["predict", "--model", str(ckpt), "--input", str(scan.parent), "--out", str(tmp_path / "out"),
                 "--threads", "1"]) == 0
    pred = nib.load(str(tmp_path / "out" / "prediction_a.nii.gz"))
    assert pred.shape == (24, 40, 48)


def test_export_checks_shapes_against_the_plans_in_one_line(nnunet, tmp_path):
    from kidneyssl.models.nnunet_export import export_nnunet_weights

    ckpt = _segmentation_checkpoint(tmp_path / "seg.pt", tiny_plans(tmp_path / "plans.json"), "plain-unet")
    report = export_nnunet_weights(ckpt, tmp_path / "w.pth")
    assert report.checked_against and report.fresh == ()
    payload = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(payload["network_weights"]) == set(torch.load(ckpt, weights_only=False)["model_state"])
    wider = tiny_plans(tmp_path / "wider.json", features=(8, 8, 16))
    with pytest.raises(CheckpointError) as err:
        export_nnunet_weights(ckpt, tmp_path / "w2.pth", plans=wider)
    message = str(err.value)
    assert "\n" not in message and "encoder.stages.0.0.convs.0" in message
    assert "(4, 1, 3, 3, 3)" in message and "(8, 1, 3, 3, 3)" in message and str(wider) in message
    assert not (tmp_path / "w2.pth").exists()
    with pytest.raises(KidneySSLError, match="existing file"):
        export_nnunet_weights(ckpt, tmp_path / "w.pth")
    assert export_nnunet_weights(ckpt, tmp_path / "w.pth", force=True).tensors == report.tensors
