"""What the image-only pretraining methods share (MAE, Models Genesis): restore a corrupted
sub-volume with the segmentation network itself.

* **Data.** Fixed-size random crops (``methods.<name>.crop_size``, a multiple of the network's
  size multiple), ``samples_per_epoch`` per epoch drawn seeded by (seed, epoch) from the images of
  the proxy TRAINING cases (the held-out part of the segmentation split's training cases is the
  method's validation, :func:`~kidneyssl.training.tasks.pretraining.proxy_split`), plus, when
  given, scans without masks prepared once into ``RUN/unlabeled_cache``
  (:mod:`kidneyssl.unlabeled.scans`). Crop centres lie inside the body
  (:mod:`kidneyssl.data.subvolumes` says how). Validation: ``val_samples`` crops of the proxy
  validation cases, drawn and corrupted once with a fixed seed, so the validation loss of every
  epoch is measured on the same inputs. No label file is ever opened.
* **Method.** A subclass supplies :meth:`RestorationTask.corruption` (crop -> input, target, loss
  weight per voxel); the loss is the weighted mean squared error (:func:`restoration_loss`).
* **Network.** The segmentation network with ``out_channels = model.in_channels`` and no
  reconstruction branch: its decoder output is the restored image (z-scored intensities). The
  encoder and the decoder transfer to segmentation (``transfers_decoder``); the output layer never.
* **Settings.** ``methods.<name>``: a frozen dataclass per method (:class:`RestorationConfig` and
  its subclasses), unknown keys refused. ``pretrain.seed`` and ``pretrain.val_fraction`` apply.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

from kidneyssl.config import ConfigError, ExperimentConfig, config_from_dict
from kidneyssl.errors import KidneySSLError
from kidneyssl.training.distributed import DistContext, all_reduce_sum, broadcast_object, shard, unwrap
from kidneyssl.training.tasks.base import BatchLayout, TaskPlan, TrainSettings
from kidneyssl.training.tasks.pretraining import VAL_SALT, PretrainingTask

__all__ = ["RestorationConfig", "RestorationTask", "restoration_loss", "crop_batches"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestorationConfig:
    """The settings every restoration method has (``methods.<name>``).

    Attributes:
        epochs, lr, weight_decay: the trainer's Adam and the epoch count.
        batch_size: crops per optimiser step (global, over all processes).
        crop_size: (z, y, x) voxels of each crop, multiples of the network's size multiple.
        samples_per_epoch: crops drawn per epoch.
        val_samples: fixed validation crops (of the held-out proxy cases).
    """

    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    crop_size: tuple[int, int, int] = (64, 112, 112)
    samples_per_epoch: int = 512
    val_samples: int = 64

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "samples_per_epoch", "val_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if len(self.crop_size) != 3 or any(c < 1 for c in self.crop_size):
            raise ConfigError(f"crop_size must be 3 positive sizes (z, y, x), got {self.crop_size!r}")


def restoration_loss(prediction: Any, target: Any, weight: Any) -> Any:
    """Weighted mean squared error ``sum(w * (p - t)^2) / sum(w)`` over the whole batch.

    Args:
        prediction, target, weight: tensors of one shape, e.g. (B, 1, Z, Y, X); ``weight`` 1 where
            a voxel counts (MAE: the masked voxels), 0 elsewhere (voxels of weight 0 do not
            influence the value nor its gradient).

    Returns:
        A scalar tensor (0 when every weight is 0).
    """
    weight = weight.to(prediction.dtype)
    return (weight * (prediction - target) ** 2).sum() / weight.sum().clamp_min(1e-12)


def crop_batches(dataset: Any, order: Sequence[int], batch_size: int) -> Iterable[dict[str, Any]]:
    """``{"input", "target", "weight"}`` tensors of ``batch_size`` crops at a time, in ``order``."""
    import torch

    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start:start + batch_size]]
        yield {key: torch.stack([it[key] for it in items]) for key in ("input", "target", "weight")}


class _Batches:
    """Micro-batches of a crop dataset as a map-style dataset (item ``b`` = batch ``b``), so a
    DataLoader's reader processes can make them (corruptions run on the CPU)."""

    def __init__(self, dataset: Any, batches: list[list[int]]) -> None:
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return next(iter(crop_batches(self.dataset, self.batches[index], len(self.batches[index]))))


class RestorationTask(PretrainingTask):
    """Base of the restoration methods (see the module docstring).

    Subclasses set ``name``, ``display_name`` and ``config_class`` and implement
    :meth:`corruption`; :meth:`check_settings` may add checks against the network.

    Args:
        cache_dir, split_file: see :class:`~kidneyssl.training.tasks.base.Task`.
        unlabeled: scans without masks (any input ``predict`` reads, or a dataset folder) added to
            the training images; on resume the run's own are used.
        locator, allow_locator_overlap: not used (these methods read no mask, so nothing needs
            locating); a locator is refused.
    """

    transfers_decoder: ClassVar[bool] = True
    reads_labels: ClassVar[bool] = False  # images only: never a label file
    sample_name: ClassVar[str] = "crops"
    display_name: ClassVar[str]
    config_class: ClassVar[type[RestorationConfig]] = RestorationConfig

    def __init__(self, cache_dir: Any = None, split_file: Any = None, *, unlabeled: str | Path | None = None,
                 locator: str | Path | None = None, allow_locator_overlap: bool = False) -> None:
        super().__init__(cache_dir, split_file)
        if locator is not None:
            raise KidneySSLError(f"the {self.name} method reads images only: scans without masks need no "
                                 "locator model")
        self.unlabeled = unlabeled
        self.unlabeled_info: dict[str, Any] | None = None
        self.train_set: Any = None
        self.val_set: Any = None
        self._loader_announced = False

    # -- configuration ----------------------------------------------------------------------
    def method_settings(self, cfg: ExperimentConfig) -> Any:
        """This method's section of ``cfg.methods`` as its config class (defaults for missing keys).

        Raises:
            ConfigError: an unknown key, a value of the wrong type or out of range.
        """
        section = f"methods.{self.name}"
        data = cfg.methods.get(self.name) or {}
        try:
            return config_from_dict(self.config_class, data, section)
        except ConfigError as err:
            message = str(err)
            raise ConfigError(message if message.startswith(section) else f"{section}: {message}") from None

    def settings(self, cfg: ExperimentConfig) -> TrainSettings:
        s = self.method_settings(cfg)
        return TrainSettings(s.epochs, s.lr, s.weight_decay, s.batch_size, cfg.pretrain.seed, f"methods.{self.name}")

    def with_epochs(self, cfg: ExperimentConfig, epochs: int) -> ExperimentConfig:
        methods = dict(cfg.methods)
        methods[self.name] = {**dict(methods.get(self.name) or {}), "epochs": int(epochs)}
        return dataclasses.replace(cfg, methods=methods)

    @abstractmethod
    def corruption(self, settings: Any) -> Callable[..., Any]:
        """The method's :data:`~kidneyssl.data.subvolumes.Corruption` for ``settings`` (picklable:
        DataLoader reader processes call it)."""

    def check_settings(self, settings: Any, size_multiple: int) -> None:
        """Refuse settings this network cannot use (crop sizes not multiples of ``size_multiple``)."""
        if any(c % size_multiple for c in settings.crop_size):
            raise ConfigError(f"methods.{self.name}.crop_size {list(settings.crop_size)} must be multiples of "
                              f"{size_multiple}, the network's input size multiple")

    # -- life cycle -------------------------------------------------------------------------
    def _setup_method(self, info: dict[str, Any] | None, ctx: DistContext) -> None:
        from kidneyssl.data.subvolumes import SubvolumeDataset
        from kidneyssl.models.registry import build_network, network_spec

        cfg = self._cfg
        s = self.method_settings(cfg)
        self.check_settings(s, int(build_network(network_spec(cfg.model)).size_multiple))
        if info is not None and info.get("unlabeled"):
            self.unlabeled = info["unlabeled"]["input"]  # resume: the scans it was started with
        assert self.cache is not None
        self.corrupt = self.corruption(s)
        seed = cfg.pretrain.seed
        self.train_set = SubvolumeDataset(self.cache, self.proxy.train, s.samples_per_epoch, seed, s.crop_size,
                                          self.corrupt)
        self.val_set = SubvolumeDataset(self.cache, self.proxy.val, s.val_samples, seed + VAL_SALT, s.crop_size,
                                        self.corrupt)

    def prepare(self, ctx: DistContext) -> None:
        """Prepare the scans without masks (rank 0 works, the others wait and open them); their
        images join the training crops (validation stays on the annotated proxy cases)."""
        if self.unlabeled is None:
            return
        from kidneyssl.data.cache import Cache, CacheUnion
        from kidneyssl.data.subvolumes import SubvolumeDataset
        from kidneyssl.unlabeled.located import UNLABELED_PREFIX
        from kidneyssl.unlabeled.scans import open_scans, prepare_scans

        assert self.run_dir is not None and self.cache is not None and self.split is not None
        cache_dir = self.run_dir / "unlabeled_cache"
        scans = None
        if ctx.is_main:
            scans = prepare_scans(self.unlabeled, cache_dir, self._cfg.preprocess, held_out=self._held_out_images())
        broadcast_object(None, ctx)
        if not ctx.is_main:
            scans = open_scans(self.unlabeled, cache_dir, self._cfg.preprocess)
        assert scans is not None
        ids = [UNLABELED_PREFIX + c for c in scans.case_ids]
        self.extra_touched = ids  # the checkpoint says which scans it read
        self.unlabeled_info = {**scans.report, "cache": str(cache_dir.resolve()), "cases": list(scans.case_ids)}
        log.info("%s: %d scan(s) without masks join the %d training cases (%s)", self.name, len(ids),
                 len(self.proxy.train), scans.report["input"])
        s = self.method_settings(self._cfg)
        if not isinstance(self.cache, Cache):
            raise KidneySSLError("scans without masks join the cases of a kidneyssl cache only, not nnU-Net's "
                                 "preprocessed data; prepare the dataset with kidneyssl or leave the scans out")
        self.train_set = SubvolumeDataset(CacheUnion(self.cache, {UNLABELED_PREFIX: scans.cache}),
                                          list(self.proxy.train) + ids, s.samples_per_epoch, self._cfg.pretrain.seed,
                                          s.crop_size, self.corrupt)

    def _held_out_images(self) -> dict[str, Path | None]:
        """The split's validation and test cases -> their image files (as the cache recorded)."""
        assert self.split is not None and self.cache is not None
        out: dict[str, Path | None] = {}
        for cid in sorted(self.split.held_out):
            path = None
            if cid in self.cache:
                recorded = (self.cache.load(cid, mmap=True, label=False).meta.get("source") or {}).get("imaging")
                path = Path(recorded["path"]) if isinstance(recorded, dict) and recorded.get("path") else None
            out[cid] = path
        return out

    def build_model(self) -> Any:
        from kidneyssl.models.registry import build_network, network_spec

        cfg = self._cfg
        return build_network(network_spec(cfg.model), out_channels=cfg.model.in_channels, reconstruction=False)

    def epoch_items(self, epoch: int, ctx: DistContext, layout: BatchLayout) -> tuple[Iterable[Any], int]:
        from kidneyssl.data.loader import build_loader
        from kidneyssl.training.loop import epoch_order

        self.train_set.set_epoch(epoch)
        workers = self._cfg.train.num_workers
        if workers > 0 and not self._loader_announced:
            self.train_set.index_cases()  # once, here: reader processes inherit the crop centres
        order = epoch_order(len(self.train_set), epoch, self._cfg.pretrain.seed, ctx)
        n = layout.micro_batch
        batches = [order[i:i + n] for i in range(0, len(order), n)]
        loader = build_loader(_Batches(self.train_set, batches), list(range(len(batches))),
                              num_workers=workers,
                              pin_memory=getattr(ctx.device, "type", str(ctx.device)) == "cuda",
                              announce=not self._loader_announced)
        self._loader_announced = True
        return loader, len(batches)

    def loss(self, model: Any, item: Any, epoch: int) -> tuple[Any, dict[str, float], int]:
        device = next(unwrap(model).parameters()).device
        image, target, weight = (item[k].to(device, non_blocking=True) for k in ("input", "target", "weight"))
        prediction = model(image).logits.float()
        return restoration_loss(prediction, target, weight), {}, int(image.shape[0])

    def validate(self, model: Any, epoch: int, ctx: DistContext) -> dict[str, Any]:
        """The weighted MSE over all the fixed validation crops (sharded over ranks)."""
        import torch

        net = unwrap(model)
        was_training = net.training
        net.eval()
        batch = self.batch(ctx.world_size).micro_batch
        squared = weights = 0.0
        try:
            with torch.inference_mode():
                for item in crop_batches(self.val_set, shard(list(range(len(self.val_set))), ctx), batch):
                    image, target, weight = (item[k].to(ctx.device) for k in ("input", "target", "weight"))
                    prediction = net(image).logits.float()
                    squared += float((weight * (prediction - target) ** 2).sum())
                    weights += float(weight.sum())
        finally:
            net.train(was_training)
        squared, weights = all_reduce_sum([squared, weights], ctx)
        if weights <= 0:
            raise KidneySSLError(f"the {self.name} validation crops have no voxel to restore")
        return {"val_loss": squared / weights}

    def plan(self, ctx: DistContext, layout: BatchLayout) -> TaskPlan:
        s = self.method_settings(self._cfg)
        iterations = self.per_rank_units(len(self.train_set), ctx.world_size, layout.micro_batch)
        crop = "x".join(str(c) for c in s.crop_size)
        return TaskPlan(
            train_cases=len(self.train_set.case_ids), val_cases=len(self.proxy.val), iterations_per_epoch=iterations,
            steps_per_epoch=iterations, batch=f"{layout.micro_batch} crops of {crop}",
            val_units=self.per_rank_units(len(self.val_set), ctx.world_size, layout.micro_batch),
            val_unit=f"batch of {layout.micro_batch} crops",
            strategy=f"{self.display_name} restoration loss on {len(self.val_set)} fixed crops")

    def probe(self, ctx: DistContext, layout: BatchLayout) -> tuple[Any, Callable[[Any], Any]]:
        import torch

        n = layout.micro_batch
        batch = next(iter(crop_batches(self.train_set, list(range(min(n, len(self.train_set)))), n)))
        val_batch = next(iter(crop_batches(self.val_set, list(range(min(n, len(self.val_set)))), n)))

        def validate(m: Any) -> Any:
            with torch.inference_mode():
                return m(val_batch["input"].to(ctx.device))

        return batch, validate

    # -- records ----------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        info = {**super().run_info(), "settings": dataclasses.asdict(self.method_settings(self._cfg))}
        if self.unlabeled_info is not None:
            info["unlabeled"] = self.unlabeled_info
        return info

    def epoch_line(self, epoch: int, epochs: int, row: dict[str, Any]) -> str:
        return (f"{self.name} epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
                f"  {row['seconds']:.1f} s")
