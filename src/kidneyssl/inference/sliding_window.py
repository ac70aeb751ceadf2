"""Run a segmentation network over a whole preprocessed volume: on the two lateral halves when they
fit a memory budget (as at training), else with MONAI's Gaussian-blended sliding window.

All arrays here are on the preprocessed canonical grid ``(Z, Y, X)`` (axis 2 = patient right ->
left, see :mod:`kidneyssl.io.geometry`). The network is any ``predictor`` callable mapping a
``(B, 1, z, y, x)`` float tensor to ``(B, 1, z, y, x)`` logits; the result is sigmoid
probabilities, so halves, windows and test-time flips are averaged as probabilities.

Why halves by default rather than the whole volume: the network normalises with GroupNorm, whose
statistics are taken over the whole input, so its output depends on the field of view. It was
trained on half volumes, so half volumes (with some context across the split plane) are the
in-distribution input. ``strategy="whole"`` is available for experiments.

Test-time flipping (``cfg.tta_flip``) averages over all combinations of flips along
``tta_axes``; the default is the lateral axis only. Mirroring left/right turns a patient-right
half into something laid out like a patient-left half (kidney on the outer side, spine at the
inner edge), which the segmentation network sees in training, whereas flips along z
(head/feet) or y (front/back) produce upside-down anatomy it never sees (training does not
augment with them). Pass ``tta_axes=(0, 1, 2)`` for nnU-Net-style mirroring of every axis.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np

from kidneyssl.config import InferenceConfig, ModelConfig
from kidneyssl.io.geometry import LATERAL_AXIS, Side
from kidneyssl.preprocessing.halves import half_bounds
from kidneyssl.preprocessing.spatial import pad_to_multiple

__all__ = [
    "Strategy",
    "Precision",
    "PAPER_BYTES_PER_VOXEL",
    "BF16_FACTOR",
    "MODULE_PATH_BYTES_PER_VOXEL",
    "MODULE_PATH_BF16_FACTOR",
    "AVAILABLE_MEMORY_SHARE",
    "estimate_bytes_per_voxel",
    "cpu_has_native_bf16",
    "resolve_precision",
    "available_memory_mb",
    "resolve_memory_budget_mb",
    "choose_strategy",
    "context_voxels",
    "sliding_window_roi",
    "InferencePlan",
    "plan_inference",
    "probability_predictor",
    "infer_volume",
]

log = logging.getLogger(__name__)

Strategy = Literal["auto", "whole", "halves", "sliding"]
Precision = Literal["fp32", "bf16"]

#: Share of the available memory an automatic budget (``memory_budget_mb == 0``) gives the
#: network's activations; the rest is left to the scan, its probabilities and the restore step.
AVAILABLE_MEMORY_SHARE = 0.6
#: Budget used when the available memory cannot be read (no /proc/meminfo, no psutil).
_FALLBACK_BUDGET_MB = 4000

#: Peak activation memory (bytes per input voxel) of ``DenseUNet3D`` with the paper's
#: ``ModelConfig`` (16 initial features, growth 16) in ``torch.inference_mode`` on CPU, float32,
#: through the fused CPU pass (``models.cpu_forward``): the peak RSS increase of one forward pass
#: in a fresh process, 658 B/voxel at 64x128x128 and 600 at 96x256x160
#: (``benchmarks/bench_predict.py --measure-factor``; 1154 and 1113 before the fused pass).
PAPER_BYTES_PER_VOXEL = 660.0
#: bfloat16 autocast measured 591 and 564 B/voxel on the previous (unfused) pass on an AMX CPU;
#: the fused pass keeps bf16 parts and should need less, but it was not measured (the AVX2
#: machines of round 4 emulate bf16 at minutes per call), so the budget keeps the measured
#: absolute figure: 0.9 x 660 = 594.
BF16_FACTOR = 0.9
#: The same for the network's module path, which GPUs run: 1154 and 1113 B/voxel float32, bf16
#: autocast 0.52 of that (measured on the CPU before the fused pass; GPU inference keeps the
#: earlier estimate).
MODULE_PATH_BYTES_PER_VOXEL = 1150.0
MODULE_PATH_BF16_FACTOR = 0.52
_PAPER_FULL_RES_CHANNELS = 16 + 2 * 16  # init features + first dense block's growth


def estimate_bytes_per_voxel(model_cfg: ModelConfig | None = None, bf16: bool = False,
                             device: Any = "cpu") -> float:
    """Peak activation memory per input voxel for a model of ``model_cfg`` (bytes).

    The peak is reached at full resolution, where the input convolution and the first dense
    block's features live, so the measured paper figure is scaled by that channel count (an
    estimate for other widths). ``None`` gives the paper model's figure; ``bf16`` scales it by the
    measured bfloat16-autocast ratio; ``device`` picks the CPU's fused pass or the module path.
    """
    import torch

    if torch.device(device).type == "cpu":
        paper, factor = PAPER_BYTES_PER_VOXEL, (BF16_FACTOR if bf16 else 1.0)
    else:
        paper, factor = MODULE_PATH_BYTES_PER_VOXEL, (MODULE_PATH_BF16_FACTOR if bf16 else 1.0)
    if model_cfg is None:
        return paper * factor
    channels = model_cfg.init_features + model_cfg.block_layers[0] * model_cfg.growth_rate
    return paper * factor * max(channels, 1) / _PAPER_FULL_RES_CHANNELS


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16 in ``/proc/cpuinfo``'s
    flags). Without them oneDNN emulates bf16, which is slower than float32.

    Args:
        cpuinfo: text of ``/proc/cpuinfo`` (read when ``None``; unreadable counts as no).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False


def resolve_precision(precision: str = "auto", device: Any = "cpu") -> Precision:
    """The precision the network runs in: ``fp32`` or ``bf16`` as asked, or for ``auto``
    bfloat16 on a CUDA device that supports it or a CPU with native bf16 (AMX / AVX512-BF16),
    float32 elsewhere.

    Raises:
        ValueError: ``precision`` is not ``auto``, ``fp32`` or ``bf16``.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision  # type: ignore[return-value]
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def _meminfo_available_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free_mb() -> float | None:
    """Memory left under a cgroup v2 limit (containers), or None without a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            current = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    try:
        return max(0.0, (int(limit) - current) / 2**20)
    except ValueError:
        return None


def available_memory_mb(device: Any = "cpu") -> float | None:
    """Memory (MB) available for new allocations on ``device`` now, or ``None`` if unknown.

    CUDA: free device memory (``torch.cuda.mem_get_info``). CPU: ``psutil``'s available memory
    if psutil is installed, else ``MemAvailable`` from ``/proc/meminfo``, lowered to what a
    cgroup v2 memory limit leaves.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free / 2**20
    if dev.type != "cpu":
        return None
    try:
        import psutil  # optional

        avail: float | None = psutil.virtual_memory().available / 2**20
    except ImportError:
        avail = _meminfo_available_mb()
    cgroup = _cgroup_free_mb()
    if cgroup is not None:
        avail = cgroup if avail is None else min(avail, cgroup)
    return avail


def resolve_memory_budget_mb(cfg: InferenceConfig, device: Any = "cpu") -> int:
    """The activation budget in MB: ``cfg.memory_budget_mb`` when set (> 0), else
    :data:`AVAILABLE_MEMORY_SHARE` of :func:`available_memory_mb` (4000 MB if that is unknown)."""
    if cfg.memory_budget_mb > 0:
        return int(cfg.memory_budget_mb)
    avail = available_memory_mb(device)
    if avail is None:
        log.info("available memory on %s unknown: memory budget %d MB", device, _FALLBACK_BUDGET_MB)
        return _FALLBACK_BUDGET_MB
    return max(1, int(avail * AVAILABLE_MEMORY_SHARE))


def _ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def choose_strategy(shape: Sequence[int], split_x: int, cfg: InferenceConfig, spacing_x_mm: float | None,
                    bytes_per_voxel: float, strategy: Strategy = "auto", *, device: Any = "cpu",
                    budget_mb: int | None = None) -> Strategy:
    """The strategy ``infer_volume`` uses: ``strategy`` unless it is ``auto``, in which case halves
    when the larger half's estimated activation memory fits the budget, else the sliding window.

    Args:
        budget_mb: the budget; ``None`` means :func:`resolve_memory_budget_mb` of ``cfg`` on
            ``device`` (``cfg.memory_budget_mb``, or a share of the available memory if it is 0).
    """
    if strategy != "auto":
        return strategy
    budget = resolve_memory_budget_mb(cfg, device) if budget_mb is None else int(budget_mb)
    z, y, largest = _largest_half(shape, split_x, cfg, spacing_x_mm)
    need_mb = z * y * largest * bytes_per_voxel / 2**20
    if need_mb <= budget:
        log.info("half volume %dx%dx%d needs ~%.0f MB <= budget %d MB: halves", z, y, largest, need_mb,
                 budget)
        return "halves"
    log.info("half volume %dx%dx%d needs ~%.0f MB > budget %d MB: sliding window", z, y, largest,
             need_mb, budget)
    return "sliding"


@dataclass(frozen=True)
class InferencePlan:
    """What :func:`plan_inference` decided, to print at the start of a run and save with it.

    Attributes:
        strategy: ``halves``, ``sliding`` or ``whole``.
        precision: ``fp32`` or ``bf16``.
        budget_mb: activation memory budget used for the choice.
        bytes_per_voxel: activation estimate per input voxel (for ``precision``).
        roi_size: sliding-window size (z, y, x), or ``None`` unless ``strategy == "sliding"``.
    """

    strategy: str
    precision: Precision
    budget_mb: int
    bytes_per_voxel: float
    roi_size: tuple[int, int, int] | None = None

    def describe(self) -> str:
        """One line, e.g. ``halves, fp32, memory budget 14000 MB``."""
        roi = f" {'x'.join(map(str, self.roi_size))}" if self.roi_size else ""
        return f"{self.strategy}{roi}, {self.precision}, memory budget {self.budget_mb} MB"


def plan_inference(shape: Sequence[int], split_x: int, cfg: InferenceConfig, spacing_x_mm: float | None,
                   model_cfg: ModelConfig | None = None, *, strategy: Strategy = "auto",
                   precision: str | None = None, device: Any = "cpu") -> InferencePlan:
    """Precision, memory budget, strategy and window for one preprocessed volume of ``shape``.

    Args:
        shape: (Z, Y, X) of the preprocessed (padded) volume; ``split_x`` its lateral split plane.
        cfg: ``memory_budget_mb`` (0: from the memory available on ``device``), ``precision``,
            ``sw_roi_size`` (smallest window), ``half_context_mm``.
        model_cfg: the network's config, for :func:`estimate_bytes_per_voxel`.
        precision: overrides ``cfg.precision`` (``auto``, ``fp32`` or ``bf16``).
        device: where the network runs.
    """
    prec = resolve_precision(cfg.precision if precision is None else precision, device)
    bpv = estimate_bytes_per_voxel(model_cfg, bf16=prec == "bf16", device=device)
    budget = resolve_memory_budget_mb(cfg, device)
    chosen = choose_strategy(shape, split_x, cfg, spacing_x_mm, bpv, strategy, device=device, budget_mb=budget)
    roi = None
    if chosen == "sliding":
        roi = sliding_window_roi(_largest_half(shape, split_x, cfg, spacing_x_mm), cfg, bpv, budget)
    return InferencePlan(chosen, prec, budget, bpv, roi)


def context_voxels(cfg: InferenceConfig, spacing_x_mm: float | None) -> int:
    """``cfg.half_context_mm`` in voxels of lateral spacing ``spacing_x_mm`` (0 without one)."""
    if spacing_x_mm is None or spacing_x_mm <= 0:
        return 0
    return int(math.ceil(cfg.half_context_mm / spacing_x_mm))


def _largest_half(shape: Sequence[int], split_x: int, cfg: InferenceConfig,
                  spacing_x_mm: float | None) -> tuple[int, int, int]:
    z, y, x = (int(s) for s in shape)
    bounds = half_bounds(x, split_x, context_voxels(cfg, spacing_x_mm), 16)
    return z, y, max(cols.stop - cols.start for cols in bounds.values())


def sliding_window_roi(half_shape: Sequence[int], cfg: InferenceConfig, bytes_per_voxel: float,
                       budget_mb: float, multiple: int = 16) -> tuple[int, int, int]:
    """The largest sliding window, between ``cfg.sw_roi_size`` and ``half_shape`` (the half
    volume the network was trained on), whose activations fit ``budget_mb``.

    Starting from the half volume, the axis that is largest relative to its minimum shrinks by
    ``multiple`` voxels until the window fits or every axis is at its minimum
    (``cfg.sw_roi_size``, capped by ``half_shape``). Larger windows mean fewer, less
    border-affected windows and GroupNorm statistics closer to the training input's.
    """
    half = [int(s) for s in half_shape]
    low = [min(int(r), h) for r, h in zip(cfg.sw_roi_size, half)]
    roi = list(half)
    while math.prod(roi) * bytes_per_voxel / 2**20 > budget_mb:
        shrinkable = [i for i in range(3) if roi[i] - multiple >= low[i]]
        if not shrinkable:
            roi = [max(lo, r) for lo, r in zip(low, roi)]
            break
        axis = max(shrinkable, key=lambda i: roi[i] / low[i])
        roi[axis] -= multiple
    return (roi[0], roi[1], roi[2])


def _flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    axes = tuple(sorted(set(int(a) for a in axes)))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def probability_predictor(predictor: Callable[[Any], Any], tta_axes: Sequence[int] = (),
                          bf16: bool = False) -> Callable[[Any], Any]:
    """Wrap a logits ``predictor`` into one returning float32 sigmoid probabilities.

    Args:
        predictor: ``(B, 1, z, y, x)`` tensor -> logits tensor of the same shape (or an object
            with a ``.logits`` attribute, e.g. ``SegmentationOutput``).
        tta_axes: spatial axes (0 = z, 1 = y, 2 = x) to flip for test-time augmentation;
            probabilities are averaged over every combination of flips (2**len(axes) passes).
        bf16: run the predictor under ``torch.autocast`` with bfloat16 (CPU or CUDA).
    """
    import torch

    flips = _flip_sets(tta_axes)

    def run(x: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        total: torch.Tensor | None = None
        for flip in flips:
            dims = [2 + a for a in flip]
            xin = torch.flip(x, dims) if dims else x
            with autocast:
                out = predictor(xin)
            logits = getattr(out, "logits", out)
            prob = torch.sigmoid(logits.float())
            if dims:
                prob = torch.flip(prob, dims)
            total = prob if total is None else total.add_(prob)
        assert total is not None
        return total.div_(len(flips)) if len(flips) > 1 else total

    return run


def infer_volume(predictor: Callable[[Any], Any], image: np.ndarray, cfg: InferenceConfig,
                 split_x: int | None = None, device: Any = "cpu", sw_device: Any = None,
                 progress: bool = False, *, spacing_mm: Sequence[float] | None = None,
                 strategy: Strategy = "auto", bytes_per_voxel: float = PAPER_BYTES_PER_VOXEL,
                 bf16: bool = False, tta_axes: Sequence[int] = (LATERAL_AXIS,),
                 pad_multiple: int = 16, roi_size: Sequence[int] | None = None) -> np.ndarray:
    """Kidney probabilities for a whole preprocessed volume.

    Args:
        predictor: ``(B, 1, z, y, x)`` float tensor -> logits of the same shape, e.g.
            ``lambda x: model(x).logits`` for a model in ``eval()`` mode.
        image: preprocessed canonical ``(Z, Y, X)`` float32 array (normally padded to a multiple
            of 16; other sizes are zero-padded here and cropped back).
        cfg: threshold-independent settings used here: ``memory_budget_mb``, ``sw_roi_size``,
            ``sw_overlap``, ``half_context_mm``, ``tta_flip``.
        split_x: lateral split plane (x < split_x is the patient-right half); ``None`` finds it
            from the image with :func:`kidneyssl.preprocessing.split_plane.find_split_x`.
        device: where outputs are stitched (sliding window) and where inputs live.
        sw_device: where the network runs; ``None`` means ``device``. E.g. ``sw_device="cuda"``,
            ``device="cpu"`` runs windows on the GPU and stitches on the CPU.
        progress: a progress bar over sliding windows.
        spacing_mm: grid spacing (z, y, x) in mm, to convert ``cfg.half_context_mm`` to voxels;
            ``None`` means no context across the split plane beyond rounding to 16.
        strategy: ``auto`` (halves if they fit the budget, else a sliding window as large as
            the budget allows, see :func:`sliding_window_roi`), ``halves``, ``sliding`` or
            ``whole``.
        bytes_per_voxel: activation memory estimate per input voxel (see
            :func:`estimate_bytes_per_voxel`).
        bf16: bfloat16 autocast.
        tta_axes: axes flipped when ``cfg.tta_flip`` is on (default: lateral only; see module doc).
        pad_multiple: size multiple the network needs.
        roi_size: sliding-window size; ``None``: grown within the budget when ``strategy`` is
            ``auto``, ``cfg.sw_roi_size`` when it is ``sliding`` (pass
            :func:`plan_inference`'s ``roi_size`` to get the grown window after choosing).

    Returns:
        ``(Z, Y, X)`` float32 probabilities in [0, 1], on the CPU.
    """
    import torch

    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be a 3-D (Z, Y, X) array, got shape {image.shape}")
    shape = tuple(int(s) for s in image.shape)
    padded_shape = tuple(_ceil_to(s, pad_multiple) for s in shape)
    if padded_shape != shape:  # at the end, so split_x and the crop back need no shift
        image, _ = pad_to_multiple(image, pad_multiple, mode="end")
    run_device = torch.device(sw_device if sw_device is not None else device)
    out_device = torch.device(device)
    prob_fn = probability_predictor(predictor, tta_axes if cfg.tta_flip else (), bf16=bf16)
    spacing_x = float(spacing_mm[LATERAL_AXIS]) if spacing_mm is not None else None

    if strategy in ("auto", "halves") and split_x is None:
        from kidneyssl.preprocessing.split_plane import find_split_x

        split_x = int(find_split_x(None, image[:, :, : shape[2]]))
    plane = split_x if split_x is not None else padded_shape[2] // 2
    budget = resolve_memory_budget_mb(cfg, run_device) if strategy == "auto" else 0
    chosen = choose_strategy(padded_shape, plane, cfg, spacing_x, bytes_per_voxel, strategy,
                             device=run_device, budget_mb=budget)
    if chosen == "sliding" and roi_size is None:
        roi_size = cfg.sw_roi_size
        if strategy == "auto":
            roi_size = sliding_window_roi(_largest_half(padded_shape, plane, cfg, spacing_x), cfg,
                                          bytes_per_voxel, budget)
    log.debug("inference strategy %s on %s (split_x=%s)", chosen, padded_shape, split_x)

    with torch.inference_mode():
        array = np.ascontiguousarray(image, dtype=np.float32)
        if not array.flags.writeable:  # a memory-mapped cache array: torch wants a writable buffer
            array = array.copy()
        x = torch.from_numpy(array)[None, None]
        if chosen == "whole":
            prob = prob_fn(x.to(run_device))[0, 0].to("cpu")
        elif chosen == "halves":
            assert split_x is not None
            bounds = half_bounds(padded_shape[2], int(split_x), context_voxels(cfg, spacing_x),
                                 pad_multiple)
            right, left = bounds[Side.RIGHT], bounds[Side.LEFT]
            prob = torch.empty(padded_shape, dtype=torch.float32)
            p_right = prob_fn(x[..., right].to(run_device))[0, 0].to("cpu")
            prob[..., :split_x] = p_right[..., : split_x - right.start]
            del p_right
            p_left = prob_fn(x[..., left].to(run_device))[0, 0].to("cpu")
            prob[..., split_x:] = p_left[..., split_x - left.start:]
            del p_left
        elif chosen == "sliding":
            from monai.inferers import sliding_window_inference

            assert roi_size is not None
            roi = tuple(min(int(r), s) for r, s in zip(roi_size, padded_shape))
            stitched: Any = sliding_window_inference(  # one tensor for a tensor predictor
                x.to(out_device), roi_size=roi, sw_batch_size=1, predictor=prob_fn,
                overlap=cfg.sw_overlap, mode="gaussian", padding_mode="constant", cval=0.0,
                sw_device=run_device, device=out_device, progress=progress,
            )
            prob = stitched[0, 0].to("cpu")
        else:
            raise ValueError(f"unknown strategy {strategy!r}; use auto, whole, halves or sliding")
    out = prob.numpy()
    if padded_shape != shape:
        out = out[: shape[0], : shape[1], : shape[2]]
    return np.ascontiguousarray(out, dtype=np.float32)
