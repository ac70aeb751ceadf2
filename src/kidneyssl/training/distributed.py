"""DistributedDataParallel plumbing: one code path for 1 process, ``torchrun`` and SLURM's ``srun``.

Where the launcher put this process (rank, world size, local rank, how the processes meet) is read
by :func:`kidneyssl.training.launch.launch_environment`: ``torchrun``'s variables, else those of an
``srun`` job step, else one process. :func:`init_distributed` then initialises the process group
(NCCL on CUDA, gloo on CPU) with a collective timeout that fits rank-0-only work
(:data:`DEFAULT_TIMEOUT_MINUTES`, or ``KIDNEYSSL_DIST_TIMEOUT_MIN``, or its ``timeout_minutes``
argument). Each process computes on the GPU of its local rank (``device`` ``cuda``/``auto``), or
the only GPU it sees when the launcher gave each process its own (``srun --gpus-per-task 1``); a
device that names one GPU (``cuda:1``) is refused when several processes run, since all of them
would land on it. Only rank 0 writes files (``ctx.is_main``).

Validation is sharded by case index (``i % world == rank``) and gathered with
:func:`gather_objects`, one collective per call, never inside a loop whose length differs per rank.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

from kidneyssl.training.launch import LaunchEnvironment, launch_environment

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "gather_objects",
           "broadcast_object", "all_reduce_sum", "barrier", "shard", "unwrap", "collective_timeout_minutes",
           "DEFAULT_TIMEOUT_MINUTES", "TIMEOUT_ENV"]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Collective timeout (minutes) of the process group. PyTorch's default (10 min for NCCL) is shorter
#: than the work rank 0 may do alone while the others wait in a collective (preparing a cache,
#: locating unlabeled scans, scoring); a genuinely hung job still fails, an hour later.
DEFAULT_TIMEOUT_MINUTES = 60.0
#: Environment variable that sets the timeout in minutes (the ``timeout_minutes`` argument wins).
TIMEOUT_ENV = "KIDNEYSSL_DIST_TIMEOUT_MIN"


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank, world_size, local_rank: from the launcher's environment (0, 1, 0 without one).
        device: ``torch.device`` this process computes on.
        initialized: True when a process group was created by :func:`init_distributed`.
        launcher: ``none``, ``torchrun`` or ``slurm`` (see :func:`launch_environment`).
    """

    rank: int
    world_size: int
    local_rank: int
    device: Any
    initialized: bool = False
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, checkpoints and plots."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(preference: str | None, local_rank: int) -> Any:
    import torch

    pref = (preference or "auto").lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            from kidneyssl.errors import KidneySSLError

            raise KidneySSLError("device 'cuda' requested but no CUDA device is available; run on the CPU",
                                 remedy=("device=cpu",))
        if pref == "cuda":
            index = _local_gpu_index(local_rank)
            torch.cuda.set_device(index)
            return torch.device("cuda", index)
    try:
        return torch.device(pref)
    except (RuntimeError, ValueError):
        from kidneyssl.errors import KidneySSLError

        raise KidneySSLError(f"{preference!r} is not a device; use auto, cpu, cuda or cuda:N",
                             remedy=("device=cpu",)) from None


def _local_gpu_index(local_rank: int) -> int:
    """The GPU of the process with ``local_rank``: GPU ``local_rank``, or the only visible GPU when
    the launcher gave each process its own (``srun --gpus-per-task 1`` leaves one visible)."""
    import torch

    return 0 if torch.cuda.device_count() == 1 else local_rank


def collective_timeout_minutes(timeout_minutes: float | None = None,
                               environ: Mapping[str, str] | None = None) -> float:
    """The process group's collective timeout in minutes: ``timeout_minutes`` when given, else
    ``KIDNEYSSL_DIST_TIMEOUT_MIN`` when set, else :data:`DEFAULT_TIMEOUT_MINUTES`.

    Raises:
        KidneySSLError: the value is not a positive number.
    """
    from kidneyssl.errors import KidneySSLError

    env = os.environ if environ is None else environ
    raw: Any = timeout_minutes
    source = "timeout_minutes"
    if raw is None and env.get(TIMEOUT_ENV, "").strip():
        raw, source = env[TIMEOUT_ENV].strip(), TIMEOUT_ENV
    if raw is None:
        return DEFAULT_TIMEOUT_MINUTES
    try:
        minutes = float(raw)
    except (TypeError, ValueError):
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise KidneySSLError(f"{source} must be a positive number of minutes, got {raw!r}")
    return minutes


def _check_launch_device(preference: str | None, launch: LaunchEnvironment) -> None:
    """Refuse a device that would put several processes of this job on one GPU, or a local rank
    without a GPU of its own."""
    if launch.world_size <= 1:
        return
    import torch

    from kidneyssl.errors import KidneySSLError

    pref = (preference or "auto").strip().lower()
    if re.fullmatch(r"cuda:\d+", pref):
        raise KidneySSLError(
            f"device '{pref}' names one GPU, but this job runs {launch.world_size} processes "
            f"({launch.launcher}) that would all compute on it; use device 'cuda' (each process takes "
            "the GPU of its local rank) and choose the GPUs with CUDA_VISIBLE_DEVICES",
            remedy=("device=cuda",))
    wants_cuda = pref == "cuda" or (pref == "auto" and torch.cuda.is_available())
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wants_cuda and count > 1 and launch.local_rank >= count:
        raise KidneySSLError(
            f"the process of local rank {launch.local_rank} needs GPU {launch.local_rank}, but "
            f"{torch.cuda.device_count()} GPU(s) are visible on this node; start at most one process per GPU")


def init_distributed(device: str | None = None, timeout_minutes: float | None = None) -> DistContext:
    """Initialise the process group when a launcher started several processes (module docstring).

    Args:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
            Under a launcher, ``cuda`` means ``cuda:LOCAL_RANK``, and ``cuda:N`` is refused.
        timeout_minutes: collective timeout; default ``KIDNEYSSL_DIST_TIMEOUT_MIN`` or
            :data:`DEFAULT_TIMEOUT_MINUTES` (:func:`collective_timeout_minutes`). Logged once, on
            rank 0.

    Raises:
        KidneySSLError: see :func:`launch_environment`, :func:`collective_timeout_minutes`; a
            ``cuda:N`` device or too few GPUs for the local ranks under a launcher; CUDA asked
            for but absent.
    """
    from datetime import timedelta

    import torch.distributed as dist

    launch = launch_environment()
    _check_launch_device(device, launch)
    minutes = collective_timeout_minutes(timeout_minutes) if launch.world_size > 1 else None
    dev = _pick_device(device, launch.local_rank)
    if launch.world_size <= 1:
        return DistContext(0, 1, 0, dev, initialized=False)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=launch.init_method, world_size=launch.world_size,
                                rank=launch.rank, timeout=timedelta(minutes=float(minutes or 0)))
    if launch.rank == 0:
        log.info("distributed: %d processes (%s), %s, collective timeout %g min (%s to change)",
                 launch.world_size, launch.launcher, backend, minutes, TIMEOUT_ENV)
    return DistContext(launch.rank, launch.world_size, launch.local_rank, dev, initialized=True,
                       launcher=launch.launcher)


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group created by :func:`init_distributed` (no-op for 1 process)."""
    import torch.distributed as dist

    if ctx.initialized and dist.is_initialized():
        # Let gloo's worker thread finish (and free) every queued work item first: destroying the
        # group while it still frees a work that holds Python tensors (all_gather_object) needs
        # the GIL that the destroying thread holds -> a teardown deadlock seen with torch 2.13.
        barrier(ctx)
        dist.destroy_process_group()


def gather_objects(obj: T, ctx: DistContext) -> list[T]:
    """Every rank's ``obj`` in rank order (``[obj]`` for 1 process). Collective: all ranks call it."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank (e.g. an error decided on rank 0)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over ranks, in float64 (for loss sums and counts)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    dev = ctx.device if ctx.device.type == "cuda" else "cpu"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def barrier(ctx: DistContext) -> None:
    """Wait for all ranks (no-op for 1 process)."""
    if ctx.distributed:
        import torch.distributed as dist

        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index or 0])
        else:
            dist.barrier()


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share of ``items``: those with index ``i % world_size == rank`` (uneven is fine)."""
    return [item for i, item in enumerate(items) if i % ctx.world_size == ctx.rank]


def wrap_ddp(model: Any, ctx: DistContext) -> Any:
    """``model`` wrapped in DistributedDataParallel when running distributed, else ``model``."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def unwrap(model: Any) -> Any:
    """The plain module inside a DDP / ``torch.compile`` wrapper."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def decided_by_rank0(decide: Callable[[], T], ctx: DistContext) -> T:
    """Run ``decide`` on rank 0 only and give every rank its result, or raise on every rank the
    library error it raised (so no rank waits in a collective for a rank that has failed). For
    decisions that read and write shared state once, e.g. claiming an output folder."""
    from kidneyssl.errors import KidneySSLError

    answer: Any = None
    if ctx.is_main:
        try:
            answer = decide()
        except KidneySSLError as err:
            answer = err
    answer = broadcast_object(answer, ctx)
    if isinstance(answer, BaseException):
        raise answer
    return answer


__all__.append("decided_by_rank0")
