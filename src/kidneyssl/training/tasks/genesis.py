"""Models Genesis (``--method genesis``): restore the original sub-volume from a transformed one
(Zhou et al., MICCAI 2019; MedIA 2021; official code MrGiovanni/ModelsGenesis, ``pytorch/utils.py``
and ``config.py``, whose defaults are ours).

Per crop, in the official order: flips of input and target alike (while ``random < flip_rate``, at
most 3, random axis), local pixel shuffling (``local_rate``), the non-linear intensity transform
(``nonlinear_rate``), then with ``paint_rate`` in-painting (``inpaint_rate`` of the paints) or
out-painting (the rest). The network restores the original; the loss is the MSE over all voxels.

Intensities: Models Genesis works on [0, 1] (its cubes are HU clipped to [-1000, 1000] and scaled
min-max). Our input is the HU window [-80, 300] z-scored per volume, so each crop is mapped back
to the window's unit scale with its volume's own statistics, ``u = (z * std + mean - low) /
(high - low)`` (min-max of the window: -80 HU -> 0, 300 HU -> 1;
:class:`~kidneyssl.data.subvolumes.CropIntensity`), transformed there (the Bézier curve maps [0, 1]
onto itself, in-/out-painting noise is uniform in [0, 1) as in the official code), and mapped back
with the inverse. The network therefore sees z-scored input, the distribution fine-tuning feeds it,
and predicts the z-scored original; the MSE in z-units is the paper's MSE on [0, 1] times
``((high - low) / std)^2`` of the crop's volume (a constant per scan: same minimiser per voxel).

Every transform below is a pure function of its array and a ``numpy.random.Generator``; those that
act on boxes take them from a separate sampler (``inpaint_boxes``, ``outpaint_boxes``,
``shuffle_blocks``) so what they change can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Any, ClassVar, Sequence

import numpy as np

from kidneyssl.config import ConfigError
from kidneyssl.training.tasks.restoration import RestorationConfig, RestorationTask

__all__ = ["GenesisConfig", "GenesisTask", "GenesisCorruption", "Box", "bezier_curve", "bezier_intensity",
           "nonlinear_transform", "shuffle_blocks", "local_blocks", "local_pixel_shuffle", "inpaint_boxes",
           "fill_boxes", "in_painting", "outpaint_boxes", "keep_boxes", "out_painting", "random_flips"]

#: ``(start, size)``, each (z, y, x): a box of a (Z, Y, X) array.
Box = tuple[tuple[int, int, int], tuple[int, int, int]]
#: Samples on the Bézier curve (the official code's ``nTimes``).
BEZIER_SAMPLES = 100_000


@dataclass(frozen=True)
class GenesisConfig(RestorationConfig):
    """``methods.genesis``: :class:`~kidneyssl.training.tasks.restoration.RestorationConfig` plus the
    official code's transform probabilities.

    Attributes:
        flip_rate: chance of each further flip (input and target alike; at most 3).
        local_rate: chance of local pixel shuffling.
        nonlinear_rate: chance of the Bézier intensity transform.
        paint_rate: chance of painting; of those, ``inpaint_rate`` in-painting, the rest out-painting.
        local_blocks: blocks shuffled by one local pixel shuffling (official: 10 000 per 64x64x32 cube).
    """

    batch_size: int = 6
    crop_size: tuple[int, int, int] = (32, 64, 64)
    samples_per_epoch: int = 384
    flip_rate: float = 0.4
    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    local_blocks: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("flip_rate", "local_rate", "nonlinear_rate", "paint_rate", "inpaint_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.local_blocks < 0:
            raise ConfigError(f"local_blocks must be >= 0, got {self.local_blocks}")


# -- the non-linear intensity transform ------------------------------------------------------------
def bezier_curve(points: np.ndarray, samples: int = BEZIER_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of the Bézier curve of ``points`` ((n, 2), first to last) at ``samples`` values of
    the parameter from 0 (the first point) to 1 (the last)."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points) - 1
    t = np.linspace(0.0, 1.0, int(samples))
    basis = np.stack([comb(n, i) * t ** i * (1.0 - t) ** (n - i) for i in range(n + 1)])
    return points[:, 0] @ basis, points[:, 1] @ basis


def bezier_intensity(x: np.ndarray, controls: np.ndarray, invert: bool, samples: int = BEZIER_SAMPLES) -> np.ndarray:
    """Map intensities in [0, 1] through the cubic Bézier curve from (0, 0) to (1, 1) with the two
    inner control points ``controls`` ((2, 2): P1, P2).

    As the official code: the curve's x and y samples are sorted (a monotone increasing map with
    f(0) = 0, f(1) = 1); ``invert`` instead pairs the sorted x with the y samples from the last point
    back (f(0) = 1, f(1) = 0, decreasing when the control points are monotone).
    """
    points = np.vstack([[0.0, 0.0], np.asarray(controls, dtype=np.float64).reshape(2, 2), [1.0, 1.0]])
    xs, ys = bezier_curve(points, samples)
    ys = ys[::-1] if invert else np.sort(ys)
    return np.interp(x, np.sort(xs), ys).astype(np.float32)


def nonlinear_transform(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The Bézier transform with random inner control points (uniform in [0, 1]^2), inverted with
    probability 0.5 (the official code's "half chance to get flip")."""
    controls = rng.random((2, 2))
    return bezier_intensity(x, controls, invert=bool(rng.random() < 0.5))


# -- local pixel shuffling -------------------------------------------------------------------------
def local_blocks(shape: Sequence[int], n_blocks: int, rng: np.random.Generator) -> list[Box]:
    """``n_blocks`` random boxes of 1 to ``dim // 10`` voxels per axis (at least 1), anywhere."""
    dims = np.asarray(shape, dtype=np.int64)
    sizes = rng.integers(1, np.maximum(dims // 10, 1) + 1, size=(int(n_blocks), 3))
    starts = rng.integers(0, dims - sizes + 1)
    return [(tuple(int(v) for v in a), tuple(int(v) for v in b)) for a, b in zip(starts, sizes)]  # type: ignore[misc]


def shuffle_blocks(x: np.ndarray, blocks: Sequence[Box], rng: np.random.Generator) -> np.ndarray:
    """Each block of the output is a random permutation of the same block of ``x`` (read from the
    original, written in order, so an overlapping later block overwrites: the official code's
    behaviour); voxels in no block are unchanged. ``x`` is not modified."""
    out = np.array(x, dtype=np.float32, copy=True)
    for start, size in blocks:
        box = tuple(slice(s, s + k) for s, k in zip(start, size))
        out[box] = rng.permutation(x[box].ravel()).reshape(size)
    return out


def local_pixel_shuffle(x: np.ndarray, rng: np.random.Generator, n_blocks: int = 10_000) -> np.ndarray:
    """Local pixel shuffling: :func:`shuffle_blocks` of :func:`local_blocks`."""
    return shuffle_blocks(x, local_blocks(x.shape, n_blocks, rng), rng)


# -- in- and out-painting --------------------------------------------------------------------------
def _box(shape: Sequence[int], low: Sequence[int], high: Sequence[int], rng: np.random.Generator) -> Box:
    """A box of size in [low, high] per axis, at least 3 voxels from the borders where it fits."""
    start, size = [], []
    for n, lo, hi in zip(shape, low, high):
        k = int(rng.integers(max(1, lo), max(1, lo, hi) + 1))
        k = min(k, int(n))
        margin = min(3, (int(n) - k) // 2)
        start.append(int(rng.integers(margin, int(n) - k - margin + 1)))
        size.append(k)
    return (start[0], start[1], start[2]), (size[0], size[1], size[2])


def _repeat(first: bool, most: int, rng: np.random.Generator) -> int:
    """How many boxes: the official loop ``while cnt > 0 and random() < 0.95`` (plus one first
    box that is always drawn when ``first``)."""
    count = 1 if first else 0
    while count < most and rng.random() < 0.95:
        count += 1
    return count


def inpaint_boxes(shape: Sequence[int], rng: np.random.Generator) -> list[Box]:
    """Up to 5 boxes of 1/6 to 1/3 of each axis (each further box with probability 0.95)."""
    low, high = [n // 6 for n in shape], [n // 3 for n in shape]
    return [_box(shape, low, high, rng) for _ in range(_repeat(False, 5, rng))]


def fill_boxes(x: np.ndarray, boxes: Sequence[Box], rng: np.random.Generator) -> np.ndarray:
    """``x`` with every box replaced by uniform noise in [0, 1) (in-painting's input)."""
    out = np.array(x, dtype=np.float32, copy=True)
    for start, size in boxes:
        out[tuple(slice(s, s + k) for s, k in zip(start, size))] = rng.random(size, dtype=np.float32)
    return out


def in_painting(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """In-painting: inner boxes replaced by noise, the rest kept."""
    return fill_boxes(x, inpaint_boxes(x.shape, rng), rng)


def outpaint_boxes(shape: Sequence[int], rng: np.random.Generator) -> list[Box]:
    """One to 5 boxes of 3/7 to 4/7 of each axis (the first always, each further with 0.95)."""
    low = [n - 4 * n // 7 for n in shape]
    high = [n - 3 * n // 7 for n in shape]
    return [_box(shape, low, high, rng) for _ in range(_repeat(True, 5, rng))]


def keep_boxes(x: np.ndarray, boxes: Sequence[Box], rng: np.random.Generator) -> np.ndarray:
    """Uniform noise in [0, 1) everywhere except inside the boxes, which keep ``x`` (out-painting's
    input)."""
    out = rng.random(x.shape, dtype=np.float32)
    for start, size in boxes:
        box = tuple(slice(s, s + k) for s, k in zip(start, size))
        out[box] = x[box]
    return out


def out_painting(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Out-painting: inner boxes kept, the rest replaced by noise."""
    return keep_boxes(x, outpaint_boxes(x.shape, rng), rng)


def random_flips(arrays: Sequence[np.ndarray], rate: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Flip all ``arrays`` alike along a random axis while ``random < rate``, at most 3 times."""
    out = list(arrays)
    for _ in range(3):
        if rng.random() >= rate:
            break
        axis = int(rng.integers(3))
        out = [np.flip(a, axis=axis) for a in out]
    return [np.ascontiguousarray(a) for a in out]


@dataclass(frozen=True)
class GenesisCorruption:
    """Models Genesis' corruption of one crop (see the module docstring); loss weight 1 everywhere."""

    flip_rate: float
    local_rate: float
    nonlinear_rate: float
    paint_rate: float
    inpaint_rate: float
    local_blocks: int

    def __call__(self, crop: np.ndarray, rng: np.random.Generator, intensity: Any) -> tuple[np.ndarray, ...]:
        (target,) = random_flips([crop], self.flip_rate, rng)
        x = np.clip(intensity.to_unit(target), 0.0, 1.0)
        if rng.random() < self.local_rate:
            x = local_pixel_shuffle(x, rng, self.local_blocks)
        if rng.random() < self.nonlinear_rate:
            x = nonlinear_transform(x, rng)
        if rng.random() < self.paint_rate:
            x = in_painting(x, rng) if rng.random() < self.inpaint_rate else out_painting(x, rng)
        return intensity.from_unit(x), target.astype(np.float32, copy=False), np.ones_like(target, dtype=np.float32)


class GenesisTask(RestorationTask):
    """Models Genesis restoration on the segmentation network (see the module docstring)."""

    name: ClassVar[str] = "genesis"
    display_name: ClassVar[str] = "Genesis"
    config_class: ClassVar[type[RestorationConfig]] = GenesisConfig

    def corruption(self, settings: Any) -> GenesisCorruption:
        return GenesisCorruption(settings.flip_rate, settings.local_rate, settings.nonlinear_rate,
                                 settings.paint_rate, settings.inpaint_rate, settings.local_blocks)
