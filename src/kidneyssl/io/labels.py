"""Label policies: which label values a dataset may hold and which of them form the kidney target.

KiTS19 labels are 0 background, 1 kidney, 2 tumour; KiTS21/KiTS23 add 3 cyst. The kidney target
of the paper (and of KiTS's "kidney" region) is every label inside the kidney: {1, 2} for KiTS19,
{1, 2, 3} for KiTS21/23. nnU-Net datasets name their labels in ``dataset.json``
(:func:`policy_from_nnunet_labels`). A :class:`LabelPolicy` checks a label array and turns it into
the binary kidney target (or the 0/1/2 kidney/tumour target); it is recorded in every cache.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kidneyssl.errors import DataError

__all__ = [
    "LabelPolicy",
    "KITS19_POLICY",
    "KITS23_POLICY",
    "parse_label_list",
    "parse_label_map",
    "PREDICTION_POLICY",
    "policy_from_nnunet_labels",
    "check_nnunet_labels",
]

_KIDNEY_WORDS = {"kidney", "kidneys", "renal"}
_LESION_WORDS = {"tumor", "tumour", "tumors", "tumours", "cyst", "cysts", "mass", "masses", "lesion",
                 "lesions", "cancer", "carcinoma"}


@dataclass(frozen=True)
class LabelPolicy:
    """Label values allowed in a label file and the ones that form the kidney target.

    Attributes:
        kidney: labels counted as kidney (the binary target is ``label in kidney``).
        tumor: the tumour label (for the 0/1/2 target and the tumour Dice), or ``None``.
        allowed: every value a label file may hold (background 0 included); ``None`` accepts any
            non-negative integer (other values are background), for maps named by an explicit
            mapping (``--labels``).
        name: where the policy comes from (``kits19``, ``kits23``, ``nnunet``, ``custom`` ...).
    """

    kidney: tuple[int, ...]
    tumor: int | None = None
    allowed: tuple[int, ...] | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.kidney:
            raise ValueError("a label policy needs at least one kidney label")
        if any(v <= 0 for v in self.kidney):
            raise ValueError(f"kidney labels must be > 0 (0 is background), got {self.kidney}")
        if self.allowed is not None and not set(self.kidney) <= set(self.allowed):
            raise ValueError(f"kidney labels {self.kidney} are not all allowed values {self.allowed}")

    def with_kidney_labels(self, kidney: tuple[int, ...] | None) -> "LabelPolicy":
        """The same policy with other kidney labels (``None``: unchanged); they become allowed."""
        if kidney is None:
            return self
        allowed = None if self.allowed is None else tuple(sorted(set(self.allowed) | set(kidney)))
        tumor = self.tumor if self.tumor in kidney else None
        return LabelPolicy(tuple(sorted(set(kidney))), tumor, allowed, self.name)

    def describe_allowed(self) -> str:
        return "any integer" if self.allowed is None else _set_str(self.allowed)

    def check(self, path: str | Path, labels: np.ndarray, need_kidney: bool = True) -> list[DataError]:
        """Problems of a label array: non-integer values, values outside :attr:`allowed`, and
        (with ``need_kidney``) no kidney voxel. Each :class:`DataError` names ``path``."""
        path = Path(path)
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            if not np.array_equal(np.round(labels), labels):
                found = np.unique(labels[labels != np.round(labels)])
                return [DataError(path, "labels", f"integer values {self.describe_allowed()}",
                                  f"non-integer values such as {_values_str(found[:3])}",
                                  hint="a probability map? threshold it first")]
        if labels.size and labels.min() < 0:
            return [DataError(path, "labels", f"values in {self.describe_allowed()}",
                              f"negative values {_values_str(np.unique(labels[labels < 0]))}")]
        if self.allowed is not None:
            bad_mask = ~np.isin(labels, np.asarray(self.allowed))
            if bad_mask.any():
                bad = labels[bad_mask]
                hint: str = ""
                remedy: tuple[str, ...] = ()
                if self.name == "kits19" and set(np.unique(bad).tolist()) <= {3}:
                    hint, remedy = "label 3 is the cyst of KiTS21/KiTS23: read it as KiTS23", ("data_format=kits23",)
                elif self.name != "nnunet":
                    hint, remedy = "another label map? say which labels are kidney", ("kidney_labels",)
                return [DataError(path, "labels", f"values in {self.describe_allowed()}",
                                  f"{_values_str(np.unique(bad))} in {bad.size} voxels", hint=hint,
                                  remedy=remedy)]
        if need_kidney and not np.isin(labels, np.asarray(self.kidney)).any():
            return [DataError(path, "kidney",
                              f"at least one kidney voxel (label {_label_list(self.kidney)})", "none")]
        return []

    def target(self, labels: np.ndarray) -> np.ndarray:
        """Binary kidney target (bool, same shape): ``labels`` in :attr:`kidney`."""
        if self.kidney == (1, 2) and self.allowed == (0, 1, 2):  # KiTS19: the fast path
            return labels > 0
        return np.isin(labels, np.asarray(self.kidney))

    def kidney_tumor_target(self, labels: np.ndarray) -> np.ndarray:
        """uint8 0 background, 1 kidney (not tumour), 2 tumour (inside the kidney labels)."""
        out = self.target(labels).astype(np.uint8)
        if self.tumor is not None:
            out[labels == self.tumor] = 2
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kidney": list(self.kidney), "tumor": self.tumor,
                "allowed": None if self.allowed is None else list(self.allowed)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LabelPolicy":
        allowed = data.get("allowed")
        return cls(tuple(int(v) for v in data["kidney"]),
                   None if data.get("tumor") is None else int(data["tumor"]),
                   None if allowed is None else tuple(int(v) for v in allowed),
                   str(data.get("name", "custom")))


#: KiTS19: 0 background, 1 kidney, 2 tumour; kidney target = 1 and 2.
KITS19_POLICY = LabelPolicy(kidney=(1, 2), tumor=2, allowed=(0, 1, 2), name="kits19")
#: KiTS21/KiTS23: 0 background, 1 kidney, 2 tumour, 3 cyst; kidney target = 1, 2 and 3.
KITS23_POLICY = LabelPolicy(kidney=(1, 2, 3), tumor=2, allowed=(0, 1, 2, 3), name="kits23")
#: What a predicted mask may hold: binary, or KiTS labels (kidney = any non-zero label).
PREDICTION_POLICY = LabelPolicy(kidney=(1, 2, 3), tumor=2, allowed=(0, 1, 2, 3), name="prediction")


def _label_list(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values)


def _set_str(values: tuple[int, ...]) -> str:
    return "{" + _label_list(values) + "}"


def _values_str(values: np.ndarray, limit: int = 6) -> str:
    shown = [str(v.item()) for v in values[:limit]]
    more = f", ... ({len(values)} values, max {values.max().item()})" if len(values) > limit else ""
    return "{" + ", ".join(shown) + more + "}"


def parse_label_list(text: str | None) -> tuple[int, ...] | None:
    """``"1,2,3"`` -> ``(1, 2, 3)``; ``None`` or ``""`` -> ``None``.

    Raises:
        ValueError: not a comma-separated list of positive integers.
    """
    if text is None or not str(text).strip():
        return None
    try:
        values = tuple(sorted({int(v) for v in str(text).replace(" ", "").split(",") if v}))
    except ValueError:
        raise ValueError(f"expected comma-separated labels such as 1,2,3, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"kidney labels must be positive integers (0 is background), got {text!r}")
    return values


def parse_label_map(items: list[str] | tuple[str, ...]) -> LabelPolicy:
    """An explicit label map, e.g. ``["kidney=2,3", "tumor=3"]``: any other value is background.

    Raises:
        ValueError: an item is not ``kidney=L,...`` or ``tumor=L`` (``tumour`` also accepted), or
            no kidney labels are given.
    """
    kidney: tuple[int, ...] | None = None
    tumor: int | None = None
    for item in items:
        for part in str(item).split(";"):
            if not part.strip():
                continue
            name, sep, values = part.partition("=")
            name = name.strip().lower()
            if not sep or name not in ("kidney", "tumor", "tumour"):
                raise ValueError(f"expected kidney=L1,L2,... or tumor=L, got {part!r}")
            parsed = parse_label_list(values)
            if parsed is None:
                raise ValueError(f"no labels in {part!r}")
            if name == "kidney":
                kidney = parsed
            elif len(parsed) != 1:
                raise ValueError(f"one tumour label expected, got {part!r}")
            else:
                tumor = parsed[0]
    if kidney is None:
        raise ValueError(f"the label map {list(items)} names no kidney labels (kidney=L1,L2,...)")
    return LabelPolicy(kidney, tumor, None, "custom")


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


def _is_label_value(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_nnunet_labels(labels: Any, path: str | Path = "dataset.json") -> None:
    """Refuse a ``dataset.json`` ``labels`` entry that is not names -> integers >= 0.

    Valid: nnU-Net v2 ``{"background": 0, "kidney": 1}``, its region lists (``"kidney": [1, 2]``),
    and v1 ``{"0": "background", "1": "kidney"}``. Refused: ``true``, ``2.5``, ``"abc"``,
    ``null``, negative values, empty or nested lists (JSON ``true`` would otherwise be label 1).

    Raises:
        DataError: naming the file, the label and its value.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise DataError(path, "labels", "a 'labels' mapping of names to integer values", repr(labels))
    for key, value in labels.items():
        if isinstance(value, str) and str(key).isdigit():  # v1: value -> name
            continue
        ok = (all(_is_label_value(v) for v in value) and bool(value)) if isinstance(value, list) \
            else _is_label_value(value)
        if not ok:
            raise DataError(path, "labels", "integer values >= 0 (or non-empty lists of them, nnU-Net regions)",
                            f"{key!r}: {json.dumps(value)}")


def policy_from_nnunet_labels(labels: Mapping[str, Any], path: str | Path = "dataset.json") -> LabelPolicy:
    """The kidney labels of an nnU-Net ``dataset.json`` ``labels`` entry.

    Accepts nnU-Net v2 (``{"background": 0, "kidney": 1, ...}``, region lists such as
    ``"kidney": [1, 2, 3]``) and v1 (``{"0": "background", "1": "Kidney"}``). A label counts as
    kidney when its name holds the word kidney/kidneys/renal ("left kidney", "kidney_tumor",
    "kidney_cyst_left"; not "adrenal gland"). In a kidney-only dataset (every foreground name is a
    kidney or a lesion word: tumour, cyst, mass ...), lesions count as well (KiTS as nnU-Net task:
    "Kidney", "Tumor"). The tumour label is the one named tumour/tumor, if it is a single value.

    Raises:
        DataError: a value that is not an integer >= 0 (:func:`check_nnunet_labels`), or no label
            is named as a kidney.
    """
    check_nnunet_labels(labels, path)
    named: dict[str, tuple[int, ...]] = {}
    for key, value in labels.items():
        if isinstance(value, str) and str(key).lstrip("-").isdigit():  # v1: value -> name
            named.setdefault(value, ())
            named[value] = named[value] + (int(key),)
        elif isinstance(value, (list, tuple)):
            named[str(key)] = tuple(int(v) for v in value)
        else:
            named[str(key)] = (int(value),)
    allowed = sorted({v for vals in named.values() for v in vals} | {0})
    kidney: set[int] = set()
    lesion: set[int] = set()
    other = False
    tumor: int | None = None
    for name, values in named.items():
        words = _words(name)
        if values == (0,) or "background" in words:
            continue
        if words & _KIDNEY_WORDS:
            kidney.update(values)
        elif words & _LESION_WORDS:
            lesion.update(values)
        else:
            other = True
        if words & {"tumor", "tumour"} and len(values) == 1:
            tumor = values[0]
    if not other:
        kidney |= lesion
    kidney.discard(0)
    if not kidney:
        shown = ", ".join(f"{n!r}: {list(v)}" for n, v in named.items())
        raise DataError(path, "labels", "a label named as a kidney (kidney, left kidney, renal ...)",
                        f"{{{shown}}}", hint="say which labels are kidney", remedy=("kidney_labels",))
    if tumor is not None and tumor not in kidney:
        tumor = None
    return LabelPolicy(tuple(sorted(kidney)), tumor, tuple(allowed), "nnunet")
