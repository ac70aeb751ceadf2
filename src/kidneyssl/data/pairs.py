"""The siamese proxy task (paper, section 2): pairs of kidney crops, same side (1) or opposite (0).

A *kidney item* is ``(case_id, Side)`` for every side of a case that has a kidney (the cache's
``meta["kidneys"]``): a single-kidney case contributes its one side only. :func:`sample_pairs` draws
balanced, seeded pairs of distinct items; :class:`KidneyPairDataset` turns them into fixed-size
crops centred on each kidney (:func:`kidneyssl.preprocessing.crops.kidney_crop`), read from the
memory-mapped cache arrays.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kidneyssl.data.cache import CaseSource
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import LATERAL_AXIS, Side
from kidneyssl.preprocessing.crops import crop_padded, kidney_crop

__all__ = ["KidneyItem", "Pair", "kidney_items", "sample_pairs", "KidneyPairDataset"]

KidneyItem = tuple[str, Side]
"""``(case_id, side)``: one kidney."""
Pair = tuple[KidneyItem, KidneyItem, int]
"""``(item_a, item_b, label)`` with label 1 = same side, 0 = opposite sides."""


def _ordered_pair(index: int, n: int) -> tuple[int, int]:
    """Decode ``index`` in ``[0, n * (n - 1))`` into an ordered pair ``(i, j)``, ``i != j``."""
    i, j = divmod(index, n - 1)
    return i, j + (j >= i)


def sample_pairs(items: Sequence[KidneyItem], n_pairs: int, rng: np.random.Generator) -> list[Pair]:
    """Draw ``n_pairs`` balanced pairs of distinct kidneys.

    ``n_pairs // 2`` pairs are opposite-side (label 0) and the rest, ``n_pairs - n_pairs // 2``,
    same-side (label 1). Same-side pairs are two different kidneys of one side, hence always from
    two different cases; their side is drawn in proportion to the number of such pairs. Opposite
    pairs are one right and one left kidney (possibly of one patient), in random order. Within
    each kind, distinct ordered pairs are drawn without replacement while enough exist, then with
    replacement. The list is shuffled. Deterministic given ``rng``'s state.

    Raises:
        ValueError: ``n_pairs < 0``, duplicate items, or too few kidneys to form a requested kind
            (same-side pairs need two kidneys of one side; opposite pairs one of each side).
    """
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    items = [(str(cid), Side(side)) for cid, side in items]
    if len(set(items)) != len(items):
        raise ValueError("kidney items must be unique (case_id, side) pairs")
    by_side = {side: [it for it in items if it[1] is side] for side in (Side.RIGHT, Side.LEFT)}
    n_r, n_l = len(by_side[Side.RIGHT]), len(by_side[Side.LEFT])
    n_opposite = n_pairs // 2
    n_same = n_pairs - n_opposite
    pairs: list[Pair] = []

    same_r, same_l = n_r * max(n_r - 1, 0), n_l * max(n_l - 1, 0)
    if n_same:
        if same_r + same_l == 0:
            raise ValueError(
                f"same-side pairs need two kidneys of one side; got {n_r} right and {n_l} left"
            )
        total = same_r + same_l
        for idx in rng.choice(total, size=n_same, replace=n_same > total):
            idx = int(idx)
            side, n, offset = (Side.RIGHT, n_r, 0) if idx < same_r else (Side.LEFT, n_l, same_r)
            i, j = _ordered_pair(idx - offset, n)
            pairs.append((by_side[side][i], by_side[side][j], 1))
    if n_opposite:
        total = n_r * n_l
        if total == 0:
            raise ValueError(f"opposite-side pairs need a right and a left kidney; got {n_r} right and {n_l} left")
        flips = rng.random(n_opposite) < 0.5
        for idx, flip in zip(rng.choice(total, size=n_opposite, replace=n_opposite > total), flips):
            i, j = divmod(int(idx), n_l)
            a, b = by_side[Side.RIGHT][i], by_side[Side.LEFT][j]
            pairs.append((b, a, 0) if flip else (a, b, 0))
    order = rng.permutation(len(pairs))
    return [pairs[k] for k in order]


def kidney_items(cache: CaseSource, case_ids: Sequence[str]) -> list[KidneyItem]:
    """``(case_id, side)`` for every kidney the cache located in ``case_ids`` (right before left)."""
    out: list[KidneyItem] = []
    for cid in case_ids:
        kidneys = cache.load(cid, mmap=True).meta.get("kidneys", {})
        out.extend((cid, side) for side in (Side.RIGHT, Side.LEFT) if side.value in kidneys)
    return out


class KidneyPairDataset:
    """Siamese pairs of kidney crops from a prepared cache (a ``torch.utils.data.Dataset``).

    The pairs of epoch ``e`` are ``sample_pairs(items, n_pairs, np.random.default_rng([seed, e]))``:
    new pairs every epoch (:meth:`set_epoch`), identical across processes and re-runs, so
    ``__len__``/``__getitem__`` are deterministic and a ``DistributedSampler`` may shard them.

    Each item is a dict:
        ``a``, ``b``: ``(1, *crop_size)`` float32 tensors, crops centred on each kidney
            (zero-padded at the volume's ends; with ``mask_outside``, zero outside that kidney's
            mask, restricted to its own half so the other kidney never shows);
        ``label``: float32 scalar tensor, 1.0 same side, 0.0 opposite;
        ``ids``: ``("case_00001:right", "case_00007:left")``.

    Args:
        cache: object with ``load(case_id, mmap=True) -> CachedCase`` (``kidneyssl.data.cache``).
        case_ids: cases to draw from (e.g. the training split; validation uses its own cases).
        n_pairs: pairs per epoch.
        seed: base seed; epoch ``e`` uses ``[seed, e]``.
        crop_size: crop (z, y, x) in voxels (``PretrainConfig.crop_size``).
        mask_outside: zero voxels outside the kidney mask (``PretrainConfig.proxy_input == "masked"``).

    Raises:
        KidneySSLError: no kidney in ``case_ids``, or too few to form both kinds of pair.
    """

    def __init__(self, cache: CaseSource, case_ids: Sequence[str], n_pairs: int, seed: int, epoch: int = 0,
                 crop_size: Sequence[int] = (64, 112, 112), mask_outside: bool = False) -> None:
        self.cache = cache
        self.case_ids = list(case_ids)
        self.n_pairs = int(n_pairs)
        self.seed = int(seed)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.mask_outside = bool(mask_outside)
        self.items = kidney_items(cache, self.case_ids)
        # Kidney centres and split planes, read once from the cases' metadata.
        self._centers: dict[KidneyItem, tuple[int, int, int]] = {}
        self._split_x: dict[str, int] = {}
        # (lateral axis, patient-left at the high index): canonical cache grids are (2, True);
        # nnU-Net's preprocessed arrays keep their own axes and record theirs in meta["lateral"]
        self._lateral: dict[str, tuple[int, bool]] = {}
        for cid in dict.fromkeys(c for c, _ in self.items):
            meta = cache.load(cid, mmap=True).meta
            self._split_x[cid] = int(meta["split_x"])
            lateral = meta.get("lateral") or {}
            self._lateral[cid] = (int(lateral.get("axis", LATERAL_AXIS)), bool(lateral.get("left_is_high", True)))
            for side in (Side.RIGHT, Side.LEFT):
                if side.value in meta["kidneys"]:
                    z, y, x = (int(v) for v in meta["kidneys"][side.value]["center"])
                    self._centers[(cid, side)] = (z, y, x)
        if not self.items:
            raise KidneySSLError(f"no located kidney in the {len(self.case_ids)} cases given for pairs")
        self.epoch = -1
        self.pairs: list[Pair] = []
        try:
            self.set_epoch(epoch)
        except ValueError as err:
            raise KidneySSLError(f"cannot form siamese pairs from {len(self.case_ids)} cases: {err}") from err

    def set_epoch(self, epoch: int) -> None:
        """Draw the pairs of ``epoch`` (deterministic given ``seed`` and ``epoch``)."""
        self.epoch = int(epoch)
        self.pairs = sample_pairs(self.items, self.n_pairs, np.random.default_rng([self.seed, self.epoch]))

    def __len__(self) -> int:
        return len(self.pairs)

    def crop(self, case_id: str, side: Side) -> np.ndarray:
        """The ``crop_size`` float32 crop of one kidney, as fed to the network."""
        side = Side(side)
        case = self.cache.load(case_id, mmap=True)
        center = self._centers[(case_id, side)]
        image = case.image
        if not self.mask_outside:
            return kidney_crop(image, center, self.crop_size).astype(np.float32, copy=False)
        if case.label is None:
            raise KidneySSLError(f"{case_id}: mask_outside crops need the label, the cache has none")
        start = [int(c) - s // 2 for c, s in zip(center, self.crop_size)]
        crop = crop_padded(image, start, self.crop_size).astype(np.float32, copy=False)
        kidney = crop_padded(case.label, start, self.crop_size) > 0
        # Keep only this side's half: on a canonical grid columns x < split_x are the patient-right half.
        axis, left_is_high = self._lateral[case_id]
        x = np.arange(start[axis], start[axis] + self.crop_size[axis])
        low = x < self._split_x[case_id]
        own = low if (side is Side.RIGHT) == left_is_high else ~low
        kidney &= own.reshape([-1 if a == axis else 1 for a in range(3)])
        crop[~kidney] = 0
        return crop

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        (case_a, side_a), (case_b, side_b), label = self.pairs[index]
        return {
            "a": torch.from_numpy(np.ascontiguousarray(self.crop(case_a, side_a))[None]),
            "b": torch.from_numpy(np.ascontiguousarray(self.crop(case_b, side_b))[None]),
            "label": torch.tensor(float(label), dtype=torch.float32),
            "ids": (f"{case_a}:{Side(side_a).value}", f"{case_b}:{Side(side_b).value}"),
        }
