"""Train / validation / test splits of case ids: a pure function of (sorted case ids, fractions,
seed), so MwS and MwoS trained on the same cache with the same seed share one; ``--split`` (or the
experiment's ``split.json``) passes one explicitly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kidneyssl.errors import CheckpointError, KidneySSLError
from kidneyssl.io.atomic import atomic_write_json

__all__ = ["Split", "make_split", "save_split", "load_split", "check_touched_cases", "annotated_case_ids",
           "resolve_split"]


@dataclass(frozen=True)
class Split:
    """A train/validation(/test) split of case ids.

    ``train`` cases are the only ones training and pretraining read; ``val`` cases are scored
    every epoch (monitoring, Fig. 5) and at the end; ``test`` cases are scored once, at the end,
    and never inform any choice.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    seed: int
    val_fraction: float
    test: tuple[str, ...] = ()
    test_fraction: float = 0.0

    @property
    def held_out(self) -> frozenset[str]:
        """Cases no training or pretraining may touch (validation and test)."""
        return frozenset(self.val) | frozenset(self.test)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "train": list(self.train), "val": list(self.val), "test": list(self.test)}


def make_split(case_ids: Sequence[str], val_fraction: float, seed: int, min_val: int = 2,
               test_fraction: float = 0.0) -> Split:
    """Seeded random split: ``round(n * test_fraction)`` test cases, ``round(n * val_fraction)``
    validation cases, the rest for training (a pure function of the sorted ids, fractions, seed).

    Raises:
        KidneySSLError: no cases, fewer than ``min_val`` validation (or, with a test fraction,
            test) cases, or no training case.
    """
    ids = sorted(set(case_ids))
    if not ids:
        raise KidneySSLError("the dataset has no annotated cases: nothing to train on")
    n_val = int(round(len(ids) * val_fraction))
    n_test = int(round(len(ids) * test_fraction))
    if n_val < min_val:
        raise KidneySSLError(
            f"{len(ids)} annotated case(s) with val_fraction {val_fraction} give {n_val} validation "
            f"case(s); at least {min_val} are needed (add cases or raise train.val_fraction)"
        )
    if test_fraction > 0 and n_test < min_val:
        raise KidneySSLError(
            f"{len(ids)} annotated case(s) with test_fraction {test_fraction} give {n_test} test "
            f"case(s); at least {min_val} are needed (add cases or raise protocol.test_fraction)"
        )
    if n_val + n_test >= len(ids):
        raise KidneySSLError(f"val_fraction {val_fraction} and test_fraction {test_fraction} leave no "
                             f"training case out of {len(ids)}")
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    test = sorted(ids[i] for i in order[n_val:n_val + n_test])
    train = sorted(ids[i] for i in order[n_val + n_test:])
    return Split(tuple(train), tuple(val), int(seed), float(val_fraction), tuple(test), float(test_fraction))


def save_split(split: Split, path: str | Path) -> None:
    """Write ``split`` as JSON (atomic)."""
    atomic_write_json(Path(path), split.to_dict())


def load_split(path: str | Path, available: Sequence[str] | None = None, min_val: int = 2) -> Split:
    """Read a split file; with ``available``, every training and validation case must be in it
    (test cases may live in another dataset).

    Raises:
        KidneySSLError: missing/invalid file, unknown case ids, overlap, too few validation cases.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        split = Split(tuple(data["train"]), tuple(data["val"]), int(data.get("seed", -1)),
                      float(data.get("val_fraction", 0.0)), tuple(data.get("test", ())),
                      float(data.get("test_fraction", 0.0)))
    except FileNotFoundError as err:
        from kidneyssl.io.paths import describe_missing

        raise KidneySSLError(f"{path.absolute()}: split file not found ({describe_missing(path)})") from err
    except (ValueError, KeyError, TypeError) as err:
        raise KidneySSLError(f"{path}: not a split file (expected JSON with 'train' and 'val' lists)") from err
    parts = {"train": set(split.train), "val": set(split.val), "test": set(split.test)}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = parts[a] & parts[b]
        if both:
            raise KidneySSLError(f"{path}: cases in both {a} and {b}: {sorted(both)[:5]}")
    if len(split.val) < min_val:
        raise KidneySSLError(f"{path}: {len(split.val)} validation case(s); at least {min_val} are needed")
    if not split.train:
        raise KidneySSLError(f"{path}: no training cases")
    if available is not None:
        missing = sorted(set(split.train + split.val) - set(available))
        if missing:
            raise KidneySSLError(f"{path}: case(s) {missing[:5]} are not annotated cases of the cache")
    return split


def check_touched_cases(source: str | Path, touched: Sequence[str] | None, split: Split,
                        allow_overlap: bool = False, what: str = "siamese network") -> list[str]:
    """Refuse a model whose weights depend on the labels of a case that ``split`` holds out.

    ``touched`` is what a checkpoint (or a ``locate.json``) records as ``touched_cases``: the
    cases whose labels shaped its weights (a siamese run's proxy cases; a segmentation run's
    training cases, plus its validation cases for ``best.pt``, which was chosen on them; plus
    whatever its own initialisation or pseudo-labels touched).

    Args:
        source: the checkpoint or file the cases come from (for the message).
        touched: the recorded case ids, or ``None`` when ``source`` records none.
        split: the segmentation split whose validation and test cases must stay untouched.
        allow_overlap: experts only: accept (and return) the overlap; the caller records it.
        what: the model, for the message (``siamese network``, ``locator``).

    Returns:
        The held-out cases that were touched (empty when clean).

    Raises:
        CheckpointError: held-out cases were touched (or ``touched`` is ``None``) and
            ``allow_overlap`` is off.
    """
    if touched is None:
        if allow_overlap:
            return ["<unknown: no cases recorded>"]
        raise CheckpointError(f"{source}: does not record which cases the {what} was trained on, so it may "
                              "have seen the validation or test cases; retrain it with this kidneyssl or "
                              "accept the risk explicitly")
    overlap = sorted(set(touched) & split.held_out)
    if overlap and not allow_overlap:
        raise CheckpointError(
            f"{source}: the {what} was trained on {len(overlap)} case(s) that this split holds out for "
            f"validation/test ({', '.join(overlap[:5])}{', ...' if len(overlap) > 5 else ''}); train it "
            "on the training cases of this split, or accept the leak explicitly")
    return overlap


def annotated_case_ids(cache: Any) -> list[str]:
    """Case ids of a cache that have a label (only those can be trained or validated on); read
    from each case's metadata, so no label file is opened (image-only methods rely on it)."""
    return [cid for cid in cache.case_ids if cache.load(cid, mmap=True, label=False).meta.get("has_label")]


def resolve_split(cache: Any, cfg: Any, split_file: str | Path | None) -> Split:
    """The split of a run: from ``split_file`` when given, else derived from (annotated case ids,
    ``train.val_fraction``, ``train.seed``): the same split for every method of one seed. For
    nnU-Net's preprocessed data (a source with ``fold_cases``) it is nnU-Net's fold
    ``train.nnunet_fold`` (training = the fold's training cases, validation = its validation
    cases), and no case is read to make it.

    Raises:
        KidneySSLError: empty dataset, fewer than 2 validation cases, unknown case ids.
    """
    fold_cases = getattr(cache, "fold_cases", None)
    if callable(fold_cases):  # every case nnU-Net preprocessed for training is annotated
        if split_file is not None:
            return load_split(split_file, available=list(cache.case_ids))
        train, val = fold_cases(cfg.train.nnunet_fold)
        if len(val) < 2 or not train:
            raise KidneySSLError(f"nnU-Net fold {cfg.train.nnunet_fold} has {len(train)} training and {len(val)} "
                                 "validation cases; at least 1 and 2 are needed")
        return Split(tuple(train), tuple(val), -1, round(len(val) / (len(train) + len(val)), 4))
    ids = annotated_case_ids(cache)
    if not ids:
        raise KidneySSLError(f"{getattr(cache, 'root', 'cache')}: no annotated cases: nothing to train on")
    if split_file is not None:
        return load_split(split_file, available=ids)
    return make_split(ids, cfg.train.val_fraction, cfg.train.seed)
