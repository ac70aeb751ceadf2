"""Pretraining on data nnU-Net preprocessed, and weights nnU-Net loads, end to end on tiny phantoms:
``kidneyssl synth --format nnunet`` -> ``nnUNetv2_plan_and_preprocess`` (CPU) -> ``kidneyssl
pretrain --nnunet-preprocessed ... --method side`` -> ``kidneyssl export --to nnunet`` -> nnU-Net's
own ``nnUNetv2_train -pretrained_weights`` loading path. Needs the ``nnunet`` extra (skipped
without it)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from kidneyssl.cli.main import main

pytestmark = pytest.mark.slow

DATASET = "Dataset001_Phantom"


def _nnunet_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir(exist_ok=True)
        env[f"nnUNet_{name}"] = str(root / name)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """nnU-Net reads its folders from the environment when first imported: a fresh process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """6 phantoms planned and preprocessed by nnU-Net 3d_fullres, and tiny plans of the same data
    (nnUNetPlansTiny: the planned network with 4..16 features, same preprocessed folder)."""
    pytest.importorskip("dynamic_network_architectures")
    pytest.importorskip("nnunetv2")
    root = tmp_path_factory.mktemp("nnunet")
    env = _nnunet_env(root)
    assert main(["synth", "--out", str(root / "raw" / DATASET), "--cases", "6", "--format", "nnunet", "-q"]) == 0
    done = _run_python("""
        import sys
        from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry
        sys.argv = ["nnUNetv2_plan_and_preprocess", "-d", "1", "-c", "3d_fullres", "-np", "1", "-npfp", "1"]
        plan_and_preprocess_entry()
    """, env)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = root / "preprocessed" / DATASET
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["plans_name"] = "nnUNetPlansTiny"
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [min(4 * 2 ** i, 16) for i in range(kwargs["n_stages"])]
    (folder / "nnUNetPlansTiny.json").write_text(json.dumps(plans))
    return root, folder, env


def test_kidney_sides_come_from_the_recorded_geometry(preprocessed):
    from kidneyssl.data.nnunet_preprocessed import open_nnunet_preprocessed

    _, folder, _ = preprocessed
    source = open_nnunet_preprocessed(folder, "nnUNetPlans", "3d_fullres")
    assert source.labels.kidney == (2, 3, 4)  # dataset.json: right kidney, left kidney, kidney_tumor
    case = source.load(source.case_ids[0])
    _, seg, _, _ = source._dataset.load_case(source.case_ids[0])
    seg = np.asarray(seg[0])
    lateral = case.meta["lateral"]["axis"]
    for side, label in (("right", 2), ("left", 3)):  # the phantoms name each kidney's side
        centroid = np.argwhere(seg == label).mean(axis=0)
        assert abs(case.meta["kidneys"][side]["center"][lateral] - centroid[lateral]) < 8
    assert np.asarray(case.image).shape == seg.shape and set(np.unique(np.asarray(case.label))) <= {0, 1}


def test_pretrain_export_and_nnunet_loads_it(preprocessed, tmp_path, monkeypatch):
    from kidneyssl.data.nnunet_preprocessed import NnUNetPreprocessed

    root, folder, env = preprocessed
    read: set[str] = set()
    load = NnUNetPreprocessed.load

    def spy(self, case_id, mmap=True, label=True):
        read.add(case_id)
        return load(self, case_id, mmap, label)

    monkeypatch.setattr(NnUNetPreprocessed, "load", spy)
    run = tmp_path / "side"
    assert main(["pretrain", "--nnunet-preprocessed", str(folder), "--plans", "nnUNetPlansTiny",
                 "--configuration", "3d_fullres", "--fold", "0", "--method", "side", "--out", str(run),
                 "--preset", "demo", "--set", "pretrain.epochs=1", "--set", "pretrain.pairs_per_epoch=4",
                 "--set", "pretrain.val_pairs=4", "--set", "pretrain.batch_size=2",
                 "--set", "pretrain.crop_size=[32,64,64]", "--device", "cpu", "--yes", "--no-probe", "-q"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert not read & set(split["val"]), "nnU-Net's validation cases of the fold were read"
    ckpt = torch.load(run / "best.pt", weights_only=False)
    assert ckpt["architecture"]["name"] == "plain-unet"
    assert set(ckpt["touched_cases"]) <= set(split["train"])

    out = tmp_path / "pretrained.pth"
    assert main(["export", "--to", "nnunet", "--model", str(run / "best.pt"), "--out", str(out)]) == 0
    # what nnUNetv2_train DATASET 3d_fullres 0 -p nnUNetPlansTiny -pretrained_weights FILE runs before training
    done = _run_python(f"""
        import json, torch
        try:
            from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
            trainer = get_trainer_from_args("{DATASET}", "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlansTiny",
                                            device=torch.device("cpu"))
            maybe_load_checkpoint(trainer, False, False, "{out}")
            network, path = trainer.network, "nnUNetv2_train"
        except ImportError:  # the trainer's own dependencies are absent: the same loader on the same network
            from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
            from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
            cm = PlansManager("{folder / 'nnUNetPlansTiny.json'}").get_configuration("3d_fullres")
            network = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                             cm.network_arch_init_kwargs_req_import, 1, 6, deep_supervision=True)
            load_pretrained_weights(network, "{out}")
            path = "load_pretrained_weights"
        torch.save({{k: v.cpu() for k, v in network.state_dict().items()}}, "{tmp_path / 'loaded.pt'}")
        print(json.dumps({{"path": path}}))
    """, env)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    ours = {k: v for k, v in ckpt["model_state"].items() if k.startswith("encoder.")}
    assert ours and all(torch.equal(loaded[k], v) for k, v in ours.items())
    assert all(torch.equal(loaded["decoder." + k], v) for k, v in ours.items())


def test_pretrain_refuses_plans_of_another_shape_at_export(preprocessed, tmp_path, capsys):
    """A checkpoint exported for a training with other plans: the one-line key/shape error."""
    from kidneyssl.config import config_to_dict, load_preset
    from kidneyssl.io.checkpoint import save_checkpoint
    from kidneyssl.models.nnunet import nnunet_model_settings
    from kidneyssl.models.registry import build_network, network_spec

    _, folder, _ = preprocessed
    cfg = load_preset("demo")
    model = dataclasses.replace(cfg.model, **nnunet_model_settings(folder / "nnUNetPlansTiny.json"))
    spec = network_spec(model)
    path = tmp_path / "seg.pt"
    save_checkpoint(path, kind="segmentation", config=config_to_dict(dataclasses.replace(cfg, model=model)),
                    model_state=build_network(spec).state_dict(), architecture=spec.to_dict())
    code = main(["export", "--to", "nnunet", "--model", str(path), "--out", str(tmp_path / "w.pth"),
                 "--plans", str(folder / "nnUNetPlans.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "encoder.stages.0.0.convs.0" in err[0] and "nnUNetPlans.json" in err[0] and " vs " in err[0]


def test_mae_pretrains_on_nnunets_data_reading_images_only(preprocessed, tmp_path, monkeypatch):
    """An image-only method on nnU-Net's folder: crops found from nnU-Net's own CT normalisation,
    no segmentation read, and nnU-Net's validation cases of the fold never touched."""
    from kidneyssl.data.nnunet_preprocessed import NnUNetPreprocessed

    _, folder, _ = preprocessed
    asked: list[tuple[str, bool]] = []
    load = NnUNetPreprocessed.load

    def spy(self, case_id, mmap=True, label=True):
        asked.append((case_id, label))
        return load(self, case_id, mmap, label)

    monkeypatch.setattr(NnUNetPreprocessed, "load", spy)
    run = tmp_path / "mae"
    assert main(["pretrain", "--nnunet-preprocessed", str(folder), "--plans", "nnUNetPlansTiny",
                 "--configuration", "3d_fullres", "--fold", "0", "--method", "mae", "--out", str(run),
                 "--preset", "demo", "--set", "methods.mae.epochs=1", "--set", "methods.mae.samples_per_epoch=4",
                 "--set", "methods.mae.val_samples=2", "--set", "methods.mae.batch_size=2",
                 "--set", "methods.mae.crop_size=[32,64,64]", "--device", "cpu", "--yes", "--no-probe", "-q"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert asked and all(not label for _, label in asked), "an image-only method read a segmentation"
    assert not {c for c, _ in asked} & set(split["val"])
    ckpt = torch.load(run / "best.pt", weights_only=False)
    assert ckpt["method"] == "mae" and set(ckpt["touched_cases"]) <= set(split["train"])


def test_segmentation_training_on_nnunets_data_is_refused_in_one_line(preprocessed, tmp_path, capsys):
    _, folder, _ = preprocessed
    code = main(["train", "--cache", str(folder), "--out", str(tmp_path / "seg"), "--init", "scratch",
                 "--preset", "demo", "--set", "model.architecture=plain-unet",
                 "--set", f"model.nnunet_plans={folder / 'nnUNetPlansTiny.json'}", "--device", "cpu", "--yes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "fine-tune on nnU-Net's preprocessed data with nnU-Net itself" in err[-1]
