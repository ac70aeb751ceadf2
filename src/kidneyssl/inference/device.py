"""Facts about the device inference runs on: how much memory the network may take, how much it
needs per input voxel, and what the processor is (for the precision probe's cache key).

Nothing here decides anything: :mod:`kidneyssl.inference.strategy` turns these facts into the one
plan (strategy, precision, window) of a volume.
"""

from __future__ import annotations

import logging
from typing import Any

from kidneyssl.config import InferenceConfig, ModelConfig
from kidneyssl.system import available_cpus

__all__ = [
    "PAPER_BYTES_PER_VOXEL",
    "BF16_FACTOR",
    "MODULE_PATH_BYTES_PER_VOXEL",
    "MODULE_PATH_BF16_FACTOR",
    "OPENVINO_BYTES_PER_VOXEL",
    "OPENVINO_BF16_FACTOR",
    "AVAILABLE_MEMORY_SHARE",
    "estimate_bytes_per_voxel",
    "cpu_has_native_bf16",
    "cpu_model_name",
    "cpu_count",
    "available_memory_mb",
    "resolve_memory_budget_mb",
]

log = logging.getLogger(__name__)

#: Share of the available memory an automatic budget (``memory_budget_mb == 0``) gives the
#: network's activations; the rest is left to the scan, its probabilities and the restore step.
AVAILABLE_MEMORY_SHARE = 0.6
#: Budget used when the available memory cannot be read (no /proc/meminfo, no psutil).
FALLBACK_BUDGET_MB = 4000

#: Peak activation memory (bytes per input voxel) of ``DenseUNet3D`` with the paper's
#: ``ModelConfig`` (16 initial features, growth 16) in ``torch.inference_mode`` on CPU, float32,
#: through the fused CPU pass (``models.cpu_forward``): the peak RSS increase of one forward pass
#: in a fresh process, 654 and 600 B/voxel at 64x128x128 and 96x256x160 (``results/predict_factor.json``).
PAPER_BYTES_PER_VOXEL = 660.0
#: bfloat16 autocast on the fused pass: 477 and 417 B/voxel at the same sizes, 0.73 and 0.70 of
#: float32 (``results/predict_factor.json``).
BF16_FACTOR = 0.75
#: The network's module path, which GPUs run: 1154 and 1113 B/voxel float32 (round 3's
#: ``results/predict_factor.json``, before the fused pass).
MODULE_PATH_BYTES_PER_VOXEL = 1150.0
#: bfloat16 autocast on a GPU peaked at 0.74 of float32 there (issue 19; on the CPU this path
#: measured 0.52), so the budget uses 0.75.
MODULE_PATH_BF16_FACTOR = 0.75
#: OpenVINO's CPU plugin, paper network: the peak RSS increase of the first inference of a
#: compiled model per input voxel, 790 B float32 and 406 B with the bf16 hint at 96x256x160
#: (``results/predict_factor.json``).
OPENVINO_BYTES_PER_VOXEL = 790.0
OPENVINO_BF16_FACTOR = 0.52
_PAPER_FULL_RES_CHANNELS = 16 + 2 * 16  # init features + first dense block's growth


def estimate_bytes_per_voxel(model_cfg: ModelConfig | None = None, bf16: bool = False,
                             device: Any = "cpu", backend: str = "torch") -> float:
    """Peak activation memory per input voxel for a model of ``model_cfg`` (bytes).

    The peak is reached at full resolution, where the input convolution and the first dense
    block's features live, so the measured paper figure is scaled by that channel count (an
    estimate for other widths). ``None`` gives the paper model's figure. ``device`` and
    ``backend`` pick the measured figure: the CPU's fused pass (``torch``), OpenVINO
    (``openvino``), or the module path on a GPU; ``bf16`` applies that path's bfloat16 factor.
    """
    import torch

    if backend == "openvino":
        paper, factor = OPENVINO_BYTES_PER_VOXEL, (OPENVINO_BF16_FACTOR if bf16 else 1.0)
    elif torch.device(device).type == "cpu":
        paper, factor = PAPER_BYTES_PER_VOXEL, (BF16_FACTOR if bf16 else 1.0)
    else:
        paper, factor = MODULE_PATH_BYTES_PER_VOXEL, (MODULE_PATH_BF16_FACTOR if bf16 else 1.0)
    if model_cfg is None:
        return paper * factor
    channels = model_cfg.init_features + model_cfg.block_layers[0] * model_cfg.growth_rate
    return paper * factor * max(channels, 1) / _PAPER_FULL_RES_CHANNELS


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16 in ``/proc/cpuinfo``'s
    flags). Without them bfloat16 is emulated, far slower than float32, and never probed.

    Args:
        cpuinfo: text of ``/proc/cpuinfo`` (read when ``None``; unreadable counts as no).
    """
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The processor's model name (``/proc/cpuinfo``, else :func:`platform.processor`), with the
    vector extensions that decide bf16 and fp32 speed (``avx512f``, ``avx512_bf16``,
    ``amx_bf16``) appended: virtual machines often report a bare family name."""
    import platform

    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    name, flags = "", set[str]()
    for line in cpuinfo.splitlines():
        if line.startswith("model name") and not name:
            name = line.split(":", 1)[-1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[-1].split())
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({' '.join(extensions)})" if extensions else name


def cpu_count() -> int:
    """Cores this process may run on (:func:`kidneyssl.system.available_cpus`)."""
    return available_cpus()


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

    CUDA: the device's free memory (``torch.cuda.mem_get_info``) plus what PyTorch's caching
    allocator holds reserved but unused (``memory_reserved - memory_allocated``), which it hands
    out before asking the device for more; so the figure does not depend on what earlier work
    (a training epoch before validation) left cached. CPU: ``psutil``'s available memory if
    psutil is installed, else ``MemAvailable`` from ``/proc/meminfo``, lowered to what a cgroup
    v2 memory limit leaves.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return (free + max(0, cached)) / 2**20
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
        log.debug("available memory on %s unknown: memory budget %d MB", device, FALLBACK_BUDGET_MB)
        return FALLBACK_BUDGET_MB
    return max(1, int(avail * AVAILABLE_MEMORY_SHARE))
