"""Shared, session-scoped fixtures for the training tests: tiny phantoms, a coarse cache, a tiny
config, and one finished pretraining run."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A tiny model and coarse grid: the whole training test folder must stay within a few minutes.
TINY_OVERRIDES = [
    "preprocess.spacing_mm=[12.0,6.0,6.0]",
    "pretrain.crop_size=[16,32,32]",
    "train.crop_size=null",  # whole halves at this tiny grid (crops: tests/data/test_segmentation.py)
    "model.init_features=4",
    "model.growth_rate=4",
    "model.norm_groups=2",
    "model.embedding_dim=8",
    "pretrain.epochs=2",
    "pretrain.pairs_per_epoch=8",
    "pretrain.val_pairs=4",
    "pretrain.batch_size=2",
    "train.epochs=2",
    "train.val_fraction=0.34",
    "inference.half_context_mm=16",
    "synth.cases=6",
]

#: The restoration methods on the same tiny grid: 16x32x32 crops (MAE: 32 patches of 8^3), few
#: samples, few shuffled blocks.
RESTORATION_OVERRIDES = [
    f"methods.{m}.{key}" for m in ("mae", "genesis")
    for key in ("crop_size=[16,32,32]", "samples_per_epoch=8", "val_samples=4", "batch_size=2", "epochs=2")
] + ["methods.mae.patch_size=[8,8,8]", "methods.genesis.local_blocks=200"]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_cfg():
    from kidneyssl.config import apply_overrides, load_preset

    return apply_overrides(load_preset("demo"), TINY_OVERRIDES)


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 phantom cases at demo resolution (KiTS19 layout)."""
    from kidneyssl.phantoms import write_dataset

    out = tmp_path_factory.mktemp("phantoms")
    write_dataset(out, 6, seed=0, resolution="demo", workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory, phantom_data: Path, tiny_cfg) -> Path:
    """The phantoms prepared at 12 x 6 x 6 mm."""
    from kidneyssl.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare_dataset(phantom_data, out, tiny_cfg.preprocess, workers=2)
    return out


@pytest.fixture(scope="session")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path, tiny_cfg) -> Path:
    """A finished 2-epoch siamese run on the tiny cache."""
    from kidneyssl.training.pretrain import pretrain_siamese

    out = tmp_path_factory.mktemp("pretrain") / "run"
    from kidneyssl.reporting.figures import refresh_history_plot

    pretrain_siamese(tiny_cache, out, tiny_cfg, device="cpu", on_epoch=refresh_history_plot)
    return out


@pytest.fixture(scope="session")
def cli_pretrain_run(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> tuple[Path, str]:
    """``kidneyssl pretrain`` (2 epochs, with the plan's probe) on the tiny cache: (run folder, stderr)."""
    import contextlib
    import io

    from kidneyssl.cli.main import main

    out = tmp_path_factory.mktemp("cli_pretrain") / "run"
    sets = [arg for item in TINY_OVERRIDES for arg in ("--set", item)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["pretrain", "--cache", str(tiny_cache), "--out", str(out), "--preset", "demo", *sets,
                   "--device", "cpu", "--yes"])
    assert rc == 0, err.getvalue()[-3000:]
    return out, err.getvalue()


def restoration_losses(method: str, cfg, cache: Path, steps: int = 8, lr: float = 1e-2) -> list[float]:
    """The loss of a restoration task over ``steps`` Adam steps on one fixed batch of its crops."""
    import torch

    from kidneyssl.training.distributed import init_distributed
    from kidneyssl.training.tasks.registry import pretraining_task
    from kidneyssl.training.tasks.restoration import crop_batches

    torch.manual_seed(0)
    task = pretraining_task(method, cache)
    task.setup(cfg, None, None, init_distributed("cpu"))
    model = task.build_model()
    batch = next(iter(crop_batches(task.train_set, [0, 1], 2)))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, _, n = task.loss(model, batch, 0)
        assert n == 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
