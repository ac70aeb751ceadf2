"""What every pretraining method shares: the cases it may read, its checkpoint's records, and what
its weights transfer to segmentation.

Which cases a pretraining run reads: only the TRAINING cases of the segmentation split (the same
seeded split segmentation uses). A seeded ``pretrain.val_fraction`` of them is held out as the
method's own validation cases (``best.pt`` is chosen on them, :func:`proxy_split`); the
segmentation validation and test cases are never read, and every checkpoint records the cases the
run touched (``touched_cases``), so ``train`` can refuse one that saw a case its split holds out.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from kidneyssl.config import ExperimentConfig
from kidneyssl.errors import KidneySSLError
from kidneyssl.training.split import Split
from kidneyssl.training.tasks.base import Task

__all__ = ["PretrainingTask", "proxy_split", "VAL_SALT"]

#: Salt that separates the held-out validation cases' and samples' seeds from the training ones.
VAL_SALT = 1_000_003


def proxy_split(split: Split, cfg: ExperimentConfig, min_train: int = 2) -> Split:
    """Pretraining cases: the segmentation split's TRAINING cases, of which a seeded
    ``pretrain.val_fraction`` (at least two cases: a same-side pair needs two patients) is held
    out for the method's validation. Validation and test cases of ``split`` never appear."""
    import numpy as np

    ids = sorted(split.train)
    if len(ids) < 2 + min_train:
        raise KidneySSLError(f"{len(ids)} training case(s): pretraining needs at least {2 + min_train} "
                             f"({min_train} to train, 2 to validate)")
    n_val = min(len(ids) - min_train, max(2, int(round(len(ids) * cfg.pretrain.val_fraction))))
    order = np.random.default_rng([cfg.pretrain.seed, VAL_SALT]).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return Split(tuple(train), tuple(val), cfg.pretrain.seed, cfg.pretrain.val_fraction)


class PretrainingTask(Task):
    """Base of the pretraining methods: ``kind`` ``pretrain``, validation loss chooses ``best.pt``,
    the cases read are :func:`proxy_split`'s (plus whatever extra scans a method adds).

    Subclasses set ``name`` and ``transfers_decoder`` and implement the rest of
    :class:`~kidneyssl.training.tasks.base.Task`. ``self.proxy`` (the held-out split of the
    training cases) is set before :meth:`_setup_method` runs.
    """

    kind: ClassVar[str] = "pretrain"
    score_key: ClassVar[str] = "val_loss"
    higher_is_better: ClassVar[bool] = False
    #: Whether the method trains a decoder that segmentation may start from (restoration methods).
    transfers_decoder: ClassVar[bool] = False

    def _setup(self, info: dict[str, Any] | None, ctx: Any) -> None:
        assert self.split is not None
        self.proxy = proxy_split(self.split, self._cfg)
        self.extra_touched: list[str] = []
        self._setup_method(info, ctx)

    def _setup_method(self, info: dict[str, Any] | None, ctx: Any) -> None:
        """The method's own setup (``self.proxy`` is set)."""

    def touched_cases(self, best: bool) -> list[str]:
        # proxy cases are training cases by construction; extra_touched holds what a locator of
        # extra scans was trained on (checked against the split where it is set)
        return sorted(set(self.proxy.train) | set(self.proxy.val) | set(self.extra_touched))

    def run_info(self) -> dict[str, Any]:
        return {"method": self.name, "proxy_train_cases": list(self.proxy.train),
                "proxy_val_cases": list(self.proxy.val)}

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
