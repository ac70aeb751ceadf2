"""What every pretraining method shares: the cases it may read, its checkpoint's records, and what
its weights transfer to segmentation.

Which cases a pretraining run reads: only the TRAINING cases of the segmentation split (the same
seeded split segmentation uses). A seeded ``pretrain.val_fraction`` of them is held out as the
method's own validation cases (``best.pt`` is chosen on them, :func:`proxy_split`); the
segmentation validation and test cases are never read, and every checkpoint records the cases the
run touched (``touched_cases``), so ``train`` can refuse one that saw a case its split holds out.

A label budget (``label_cases``, issue 22) narrows the cases whose LABELS a method may read: a
method that reads masks (:attr:`~kidneyssl.training.tasks.base.Task.reads_labels`, the side
proxy) takes its training and validation cases from them only; every checkpoint records the
labels it read (``labels_read``). An image-only method reads no label and is not narrowed.

After each epoch an optional frozen-encoder probe (``pretrain.probe_steps``,
:mod:`kidneyssl.training.tasks.probe`) measures kidney Dice on the run's held-out cases.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

from kidneyssl.config import ExperimentConfig
from kidneyssl.errors import KidneySSLError
from kidneyssl.training.split import Split
from kidneyssl.training.tasks.base import Task

__all__ = ["PretrainingTask", "proxy_split", "VAL_SALT"]

log = logging.getLogger(__name__)

#: Salt that separates the held-out validation cases' and samples' seeds from the training ones.
VAL_SALT = 1_000_003


def proxy_split(split: Split, cfg: ExperimentConfig, min_train: int = 2, cases: Sequence[str] | None = None) -> Split:
    """Pretraining cases: the segmentation split's TRAINING cases (or ``cases``, a part of them:
    a label budget), of which a seeded ``pretrain.val_fraction`` (at least two cases: a same-side
    pair needs two patients) is held out for the method's validation. Validation and test cases
    of ``split`` never appear.

    ``min_train`` is the fewest cases left to train on: 2 when the cases alone give the pairs,
    0 when other scans join the training pairs (the side proxy with located scans): then 2 or 3
    annotated cases still pretrain, all or all but one of them validating.

    Raises:
        KidneySSLError: ``cases`` outside the training cases, or fewer than ``2 + min_train``.
    """
    import numpy as np

    ids = sorted(split.train if cases is None else set(cases))
    outside = sorted(set(ids) - set(split.train))
    if outside:
        raise KidneySSLError(f"pretraining cases must be training cases of the split; not: {outside[:5]}")
    if len(ids) < 2 + min_train:
        extra = "" if min_train == 0 else " (or 2 to validate when other scans give the training pairs)"
        raise KidneySSLError(f"{len(ids)} annotated training case(s): pretraining needs at least {2 + min_train} "
                             f"({min_train} to train, 2 to validate){extra}")
    n_val = min(len(ids) - min_train, max(2, int(round(len(ids) * cfg.pretrain.val_fraction))))
    order = np.random.default_rng([cfg.pretrain.seed, VAL_SALT]).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return Split(tuple(train), tuple(val), cfg.pretrain.seed, cfg.pretrain.val_fraction)


class PretrainingTask(Task):
    """Base of the pretraining methods: ``kind`` ``pretrain``, validation loss chooses ``best.pt``,
    the cases read are :func:`proxy_split`'s (plus whatever extra scans a method adds).

    Subclasses set ``name``, ``transfers_decoder`` and ``reads_labels`` and implement the rest
    of :class:`~kidneyssl.training.tasks.base.Task`. ``self.proxy`` (the held-out split of the
    training cases) is set before :meth:`_setup_method` runs.

    Args:
        cache_dir, split_file: see :class:`~kidneyssl.training.tasks.base.Task`.
        label_cases: the training cases whose labels this run may read (a label budget); None:
            all. A method that reads labels pretrains on these only.
    """

    kind: ClassVar[str] = "pretrain"
    score_key: ClassVar[str] = "val_loss"
    higher_is_better: ClassVar[bool] = False
    #: Whether the method trains a decoder that segmentation may start from (restoration methods).
    transfers_decoder: ClassVar[bool] = False

    def __init__(self, cache_dir: str | Path | None = None, split_file: str | Path | None = None, *,
                 label_cases: Sequence[str] | None = None) -> None:
        super().__init__(cache_dir, split_file)
        self.label_cases = None if label_cases is None else sorted(str(c) for c in label_cases)
        self._probe_failed = False

    @property
    def min_proxy_train(self) -> int:
        """Fewest annotated cases :func:`proxy_split` leaves to train on (2: the pairs come from them)."""
        return 2

    def _setup(self, info: dict[str, Any] | None, ctx: Any) -> None:
        assert self.split is not None
        if info is not None and info.get("label_cases") is not None:
            self.label_cases = [str(c) for c in info["label_cases"]]
        cases = self.label_cases if self.reads_labels else None
        self.proxy = proxy_split(self.split, self._cfg, min_train=self.min_proxy_train, cases=cases)
        self.extra_touched: list[str] = []  # other cases or scans whose images or labels shaped the weights
        self.extra_labels: list[str] = []  # ... of them, those whose labels did (a locator's training cases)
        self._setup_method(info, ctx)

    def _setup_method(self, info: dict[str, Any] | None, ctx: Any) -> None:
        """The method's own setup (``self.proxy`` is set)."""

    def touched_cases(self, best: bool) -> list[str]:
        # proxy cases are training cases by construction; extra_touched holds what a locator of
        # extra scans was trained on (checked against the split where it is set)
        return sorted(set(self.proxy.train) | set(self.proxy.val) | set(self.extra_touched))

    def labels_read(self, best: bool) -> list[str]:
        # a locator's cases reach the weights through its pseudo-labels; a probe's cases only
        # through the choice of best.pt, and only when asked to choose on it
        labels = set(self.extra_labels)
        if self.reads_labels:
            labels |= set(self.proxy.train) | set(self.proxy.val)
        if best and self.selection[0] == "probe_dice":
            labels |= set(self.probe_cases)
        return sorted(labels)

    @property
    def selection(self) -> tuple[str, bool]:
        """``val_loss`` (lower is better), or ``probe_dice`` (higher) when ``pretrain.select_by`` asks."""
        if self._cfg.pretrain.select_by == "probe_dice":
            return "probe_dice", True
        return self.score_key, self.higher_is_better

    @property
    def probe_cases(self) -> list[str]:
        """The cases the frozen-encoder probe reads: the run's held-out training cases (within the
        label budget), at most :data:`~kidneyssl.training.tasks.probe.MAX_PROBE_CASES`."""
        from kidneyssl.training.tasks.probe import probe_cases_split

        cases = [c for c in self.proxy.val if self.label_cases is None or c in self.label_cases]
        fit, held_out = probe_cases_split(cases, self._cfg.pretrain.seed)
        return sorted(fit + held_out)

    def monitor(self, model: Any, epoch: int, ctx: Any) -> dict[str, Any]:
        """The frozen-encoder probe's Dice after ``epoch`` (``pretrain.probe_steps`` > 0), computed on
        rank 0 and given to every rank; see :mod:`kidneyssl.training.tasks.probe`."""
        steps = self._cfg.pretrain.probe_steps
        if steps <= 0:
            return {}
        from kidneyssl.training.distributed import broadcast_object, unwrap
        from kidneyssl.training.tasks.probe import kidney_probe_crops, probe_cases_split, probe_encoder

        result: dict[str, Any] | None = None
        if ctx.is_main:
            pc = self._cfg.pretrain
            encoder = getattr(unwrap(model), "encoder", None)
            fit_ids, held_ids = probe_cases_split(self.probe_cases, pc.seed)
            fit = kidney_probe_crops(self.cache, fit_ids, pc.crop_size)
            held_out = kidney_probe_crops(self.cache, held_ids, pc.crop_size)
            if encoder is None or not fit:
                if not self._probe_failed:
                    log.warning("no frozen-encoder probe: %s", "the model has no encoder" if encoder is None
                                else "no held-out training case with a located kidney")
                    self._probe_failed = True
                result = {"probe_dice": float("nan")}
            else:
                result = probe_encoder(encoder, fit, held_out, steps, seed=[pc.seed, epoch], device=ctx.device)
        return broadcast_object(result, ctx) or {}

    def run_info(self) -> dict[str, Any]:
        return {"method": self.name, "proxy_train_cases": list(self.proxy.train),
                "proxy_val_cases": list(self.proxy.val), "label_cases": self.label_cases,
                "reads_labels": self.reads_labels, "selected_by": self.selection[0],
                **({"probe_cases": self.probe_cases} if self._cfg.pretrain.probe_steps > 0 else {})}

    def checkpoint_extra(self) -> dict[str, Any]:
        """The method, and what its weights transfer: the encoder, and (restoration methods) the
        segmentation decoder without its output layer."""
        from kidneyssl.models.registry import build_network, network_spec

        transfer: dict[str, list[str]] = {"encoder": ["encoder."]}
        if self.transfers_decoder:
            network = build_network(network_spec(self._cfg.model))
            transfer["decoder"] = list(getattr(network, "decoder_prefixes", ()))
        return {"method": self.name, "transfer": transfer}

    @staticmethod
    def per_rank_units(count: int, world_size: int, micro_batch: int) -> int:
        """Forward passes one rank makes over ``count`` samples."""
        return math.ceil(math.ceil(count / world_size) / micro_batch)
