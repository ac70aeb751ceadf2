"""Config dataclasses, presets, overrides and YAML round trip."""

from __future__ import annotations

import dataclasses

import pytest

from kidneyssl.config import (
    ConfigError,
    ExperimentConfig,
    InferenceConfig,
    PreprocessConfig,
    PretrainConfig,
    ProtocolConfig,
    SegTrainConfig,
    apply_overrides,
    available_presets,
    config_from_dict,
    config_to_dict,
    load_config,
    load_preset,
    save_config,
)


def test_paper_defaults_match_the_paper():
    cfg = ExperimentConfig()
    assert cfg.preprocess.spacing_mm == (3.22, 1.62, 1.62)
    assert cfg.preprocess.window_hu == (-80.0, 300.0)
    assert cfg.preprocess.pad_multiple == 16
    assert cfg.pretrain.crop_size == (64, 112, 112)
    assert cfg.pretrain.proxy_input == "region"
    assert cfg.train.pos_weight == "auto"
    assert cfg.model.block_layers == (2, 2, 4, 8)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size) == (1e-3, 1e-2, 1)
    assert (cfg.train.bce_weight_start, cfg.train.dice_weight_start) == (0.6, 0.4)
    assert cfg.pretrain.margin == 1.0


def test_presets_load_and_paper_preset_equals_defaults():
    assert {"demo", "paper"} <= set(available_presets())
    paper = load_preset("paper")
    assert paper.preprocess == PreprocessConfig()
    assert dataclasses.replace(paper.train, num_workers=0) == SegTrainConfig()  # the paper preset reads ahead on GPUs
    demo = load_preset("demo")
    assert demo.name == "demo"
    assert demo.preprocess.spacing_mm == (8.0, 4.0, 4.0)
    assert all(c % 16 == 0 for c in demo.pretrain.crop_size)


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="available: .*demo"):
        load_preset("nope")


def test_overrides_parse_yaml_values():
    cfg = apply_overrides(ExperimentConfig(), ["train.epochs=5", "preprocess.spacing_mm=[4, 2, 2]",
                                               "model.reconstruction=false"])
    assert cfg.train.epochs == 5
    assert cfg.preprocess.spacing_mm == (4.0, 2.0, 2.0)
    assert cfg.model.reconstruction is False


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.epoch=5", "unknown key 'epoch'"),
        ("trian.epochs=5", "no config section 'trian'"),
        ("train.epochs", "section.key=value"),
        ("train.epochs=five", "expected an integer"),
        ("preprocess.spacing_mm=[1, 2]", "expected 3 values"),
        ("train.bce_weight_end=0.2", "equal and opposite"),
    ],
)
def test_bad_overrides_are_rejected_with_the_reason(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(ExperimentConfig(), [override])


def test_validation_in_constructors():
    with pytest.raises(ConfigError, match="window_hu"):
        PreprocessConfig(window_hu=(300.0, -80.0))
    with pytest.raises(ConfigError, match="spacing_mm"):
        PreprocessConfig(spacing_mm=(0.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="multiples of 16"):
        PretrainConfig(crop_size=(32, 56, 56))
    with pytest.raises(ConfigError, match="proxy_input"):
        PretrainConfig(proxy_input="kidney")
    with pytest.raises(ConfigError, match="pos_weight"):
        SegTrainConfig(pos_weight=-1.0)
    with pytest.raises(ConfigError, match="seeds"):
        ProtocolConfig(seeds=())
    with pytest.raises(ConfigError, match="proxy_variants"):
        ProtocolConfig(proxy_variants=("region", "region"))
    with pytest.raises(ConfigError, match="sw_roi_size"):
        InferenceConfig(sw_roi_size=(8, 8, 8))


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(load_preset("demo"), ["train.epochs=3", "synth.cases=4"])
    save_config(cfg, tmp_path / "config.yaml")
    back = load_config(tmp_path / "config.yaml")
    assert back == cfg
    assert config_from_dict(ExperimentConfig, config_to_dict(cfg)) == cfg


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_values_are_converted_from_the_field_annotations():
    """No key-name special cases: a value's type comes from its field's annotation."""
    cfg = apply_overrides(ExperimentConfig(), ["model.block_layers=[1, 2, 3, 4]", "train.pos_weight=3",
                                               "protocol.seeds=[0, 1, 2]", "synth.anything=5",
                                               "protocol.proxy_variants=[masked]"])
    assert cfg.model.block_layers == (1, 2, 3, 4)
    assert cfg.train.pos_weight == 3.0 and isinstance(cfg.train.pos_weight, float)
    assert cfg.protocol.seeds == (0, 1, 2) and cfg.protocol.proxy_variants == ("masked",)
    assert cfg.synth == {"anything": 5}
    assert apply_overrides(cfg, ["train.pos_weight=auto"]).train.pos_weight == "auto"
    with pytest.raises(ConfigError, match="protocol.seeds\\[1\\]: expected an integer"):
        apply_overrides(cfg, ["protocol.seeds=[0, x]"])
    with pytest.raises(ConfigError, match="expected a number or a string"):
        apply_overrides(cfg, ["train.pos_weight=[1]"])
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(cfg, ["protocol.nope=1"])


def test_config_error_is_a_kidneyssl_error():
    from kidneyssl.errors import KidneySSLError

    assert issubclass(ConfigError, KidneySSLError)
