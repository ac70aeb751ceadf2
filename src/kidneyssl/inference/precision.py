"""Precision ``auto`` by measurement: bfloat16 only where it is measured to be faster and its
masks agree with float32's.

A CPU flag does not predict speed: with native bf16 (AVX512-BF16) PyTorch's bf16 convolutions ran
at 0.4x its float32 speed on one machine while OpenVINO's bf16 hint ran at about 2x there
(``results/backends.json``). So on a CPU with native bf16 the first call times one short forward
pass per precision (:data:`PROBE_SHAPE`, best of three interleaved rounds after a warm-up) for the
backend in use, and picks bf16 when it is at least :data:`BF16_MIN_SPEEDUP` times faster. The
result is cached per machine in the user's cache folder (:mod:`kidneyssl.inference.cache`), keyed
by the CPU model, the cores available, the thread count, the library versions, the backend and
the network's architecture; the decision and the measured ratio are reported once.

Masks: speed alone does not decide. The probe's input is noise, so whether bf16 masks agree with
PyTorch's float32 ones is checked on real input, once per checkpoint (its weights) and machine:
the first scans after ``auto`` chose bf16 are segmented in both, and bf16 is kept only when its
final masks (post-processed and, with a preprocessing record, restored to the original grid: the
masks ``predict`` writes and Table 1 scores) agree with float32's
at Dice >= :data:`BF16_MIN_DICE`, pooled over the first scans until they hold
:data:`CHECK_MIN_VOXELS` mask voxels (:class:`AgreementCheck`; the verdict is cached beside the
probe's); each scan checked answers in the precision kept. Final masks, not the network's raw
output, because they are what must agree: raw masks put every uncertain voxel near the threshold,
where bf16 rounding flips it, and post-processing removes most of those. A checkpoint whose final
masks still differ runs float32 (``results/agreement_*_final_mask_check.json``).

CPUs without native bf16 run float32 without probing (emulated bf16 takes minutes), and CUDA
devices pick bf16 where ``torch.cuda.is_bf16_supported()`` (speed not measured: no GPU was
available), subject to the same mask check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from kidneyssl.inference.cache import cache_dir, prune, read_json, write_json
from kidneyssl.inference.device import cpu_count, cpu_has_native_bf16, cpu_model_name
from kidneyssl.inference.strategy import Precision

__all__ = ["PROBE_SHAPE", "BF16_MIN_SPEEDUP", "BF16_MIN_DICE", "PrecisionChoice", "machine_key", "choose_precision",
           "AgreementCheck", "CHECK_MIN_VOXELS", "CHECK_MAX_SCANS"]

log = logging.getLogger(__name__)

#: Input of the timing probe (Z, Y, X): ~0.2 M voxels, a few seconds for both precisions on two
#: cores, yet large enough that per-call overheads do not dominate.
PROBE_SHAPE = (32, 96, 64)
#: bf16 must be at least this much faster than float32 (a margin over timing noise).
BF16_MIN_SPEEDUP = 1.15
#: bf16 masks must agree with float32 masks at least this well (Dice) to be used.
BF16_MIN_DICE = 0.995
#: Mask-agreement verdicts kept (one per checkpoint; validation makes one per epoch on a GPU).
KEEP_AGREEMENTS = 64
#: Mask voxels the agreement check pools before it decides, and the scans it segments twice at
#: most (then float32, not cached: scans without kidneys cannot show agreement).
CHECK_MIN_VOXELS = 2000
CHECK_MAX_SCANS = 8
_PROBE_VERSION = 1


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision inference runs in, and why.

    Attributes:
        precision: ``fp32`` or ``bf16``.
        reason: ``asked``, ``measured`` (probed now), ``cached`` (probed earlier on this
            machine), ``no native bf16`` or ``cuda``.
        note: the bf16 mask check's outcome (:class:`AgreementCheck`), when there was one.
        speedup: float32 time / bf16 time of the probe (``None`` without a probe).
        fp32_s, bf16_s: the probe's best times.
        cache_file: where the probe's result is kept.
    """

    precision: Precision
    reason: str
    speedup: float | None = None
    fp32_s: float | None = None
    bf16_s: float | None = None
    cache_file: str | None = None
    note: str = ""

    def describe(self) -> str:
        """One line, e.g. ``bf16 (measured: 2.9x faster than fp32)``, and the mask check's note."""
        note = f"; {self.note}" if self.note else ""
        if self.speedup is None:
            return f"{self.precision} ({self.reason}{note})"
        return (f"{self.precision} ({self.reason}: bf16 {self.speedup:.2f}x the speed of fp32 on this machine, "
                f"probe {'x'.join(map(str, PROBE_SHAPE))}: fp32 {self.fp32_s:.2f} s, bf16 {self.bf16_s:.2f} s{note})")


def _versions(backend: str) -> dict[str, str]:
    import torch

    import kidneyssl

    versions = {"kidneyssl": kidneyssl.__version__, "torch": torch.__version__}
    if backend == "openvino":
        from kidneyssl.inference.ov_backend import openvino_version

        versions["openvino"] = openvino_version() or "?"
    return versions


def machine_key(backend: str, threads: int, model_key: str) -> dict[str, Any]:
    """What the probe's result depends on: processor, cores, threads, library versions, backend
    and the network's architecture (``model_key``)."""
    return {"probe": _PROBE_VERSION, "cpu": cpu_model_name(), "cores": cpu_count(), "threads": int(threads),
            "backend": backend, "model": model_key, "shape": list(PROBE_SHAPE), **_versions(backend)}


def _best_times(runs: dict[str, Callable[[], Any]], rounds: int = 3) -> dict[str, float]:
    """Best time of each callable over ``rounds`` interleaved rounds, after one warm-up call
    each (compilation, kernel generation, first-touch allocations). Interleaving spreads a
    shared machine's load changes over every candidate alike."""
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def choose_precision(requested: str, device: Any, *, backend: str = "torch",
                     probe: Callable[[Precision], Callable[[], Any]] | None = None,
                     threads: int = 1, model_key: str = "") -> PrecisionChoice:
    """The precision for ``requested`` (``auto``, ``fp32`` or ``bf16``) on ``device``.

    Args:
        probe: for ``auto`` on a CPU with native bf16: ``probe(precision)`` returns a callable
            that runs one forward pass of the network at :data:`PROBE_SHAPE` in that precision
            (timed here). ``None`` means float32 without measuring.
        threads, model_key: part of the cache key (see :func:`machine_key`).

    Raises:
        ValueError: ``requested`` is not ``auto``, ``fp32`` or ``bf16``.
    """
    import torch

    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    if requested != "auto":
        return PrecisionChoice(requested, "asked")  # type: ignore[arg-type]
    dev = torch.device(device)
    if dev.type == "cuda":
        return PrecisionChoice("bf16" if torch.cuda.is_bf16_supported() else "fp32", "cuda")
    if dev.type != "cpu" or not cpu_has_native_bf16() or probe is None:
        return PrecisionChoice("fp32", "no native bf16")
    key = machine_key(backend, threads, model_key)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir("precision") / f"{backend}-{digest}.json"
    cached = read_json(path)
    if cached and cached.get("key") == key and cached.get("precision") in ("fp32", "bf16"):
        return PrecisionChoice(cached["precision"], "cached", cached.get("speedup"), cached.get("fp32_s"),
                               cached.get("bf16_s"), str(path))
    best = _best_times({"fp32": probe("fp32"), "bf16": probe("bf16")})
    fp32_s, bf16_s = best["fp32"], best["bf16"]
    speedup = fp32_s / max(bf16_s, 1e-9)
    choice = PrecisionChoice("bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32", "measured", speedup,
                             fp32_s, bf16_s, str(path))
    write_json(path, {"key": key, **{k: v for k, v in asdict(choice).items() if k not in ("reason", "cache_file")},
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    log.debug("precision probe (%s, %d threads): %s", backend, threads, choice.describe())
    return choice


class AgreementCheck:
    """Whether bf16 masks agree with float32 masks for one checkpoint on this machine: the cached
    verdict, or (``verdict is None``) one to measure with :meth:`add` on the first scans.

    The final masks of the scans checked are pooled until they hold :data:`CHECK_MIN_VOXELS` mask
    voxels (two empty masks say nothing).

    Args:
        backend, threads: part of the cache key, as for the probe.
        weights_key: digest of the checkpoint's weights (``ov_backend.model_digest``).
    """

    def __init__(self, backend: str, threads: int, weights_key: str) -> None:
        key = machine_key(backend, threads, weights_key)
        key["check"] = "bf16-final-mask-agreement"
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        self.path = cache_dir("precision/agreement") / f"{backend}-{digest}.json"
        self._key = key
        cached = read_json(self.path)
        ok = cached is not None and cached.get("key") == key and isinstance(cached.get("dice"), (int, float))
        self.dice: float | None = float(cached["dice"]) if ok else None  # type: ignore[index]
        self.measured_now = False
        self.scans = 0
        self._both = self._total = 0

    @property
    def verdict(self) -> bool | None:
        """``True``: bf16 agrees, ``False``: it does not, ``None``: not measured yet."""
        return None if self.dice is None else self.dice >= BF16_MIN_DICE

    def add(self, fp32_mask: Any, bf16_mask: Any) -> bool | None:
        """Pool one scan's two final masks (nonzero = kidney); once they hold enough mask voxels,
        decide, cache the decision and return it (else ``None``)."""
        a, b = np.asarray(fp32_mask) != 0, np.asarray(bf16_mask) != 0
        if a.shape != b.shape:
            raise ValueError(f"masks of one scan differ in shape: {a.shape} vs {b.shape}")
        self.scans += 1
        self._both += int(np.logical_and(a, b).sum())
        self._total += int(a.sum()) + int(b.sum())
        if self._total < 2 * CHECK_MIN_VOXELS:
            return None
        self.dice, self.measured_now = 2.0 * self._both / self._total, True
        write_json(self.path, {"key": self._key, "dice": self.dice, "mask_voxels": self._total // 2,
                               "scans": self.scans, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        prune(self.path.parent, KEEP_AGREEMENTS)
        return self.verdict

    def describe(self) -> str:
        if self.dice is None:
            return (f"bf16 masks not checked against fp32: fewer than {CHECK_MIN_VOXELS} mask voxels "
                    f"in {self.scans} scans")
        how = f"measured on {self.scans} scan{'s' * (self.scans > 1)}" if self.measured_now \
            else "cached for this checkpoint"
        return f"bf16 mask Dice {self.dice:.4f} vs fp32 ({how}; bf16 needs >= {BF16_MIN_DICE})"
