"""DistributedDataParallel plumbing: one code path for 1 process and for ``torchrun``.

Under ``torchrun --nproc_per_node N`` (or multi-node) the environment carries ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``; :func:`init_distributed` reads them and
initialises the process group (NCCL on CUDA, gloo on CPU). Without them it returns a 1-process
context and nothing is initialised. Only rank 0 writes files (``ctx.is_main``).

Validation is sharded by case index (``i % world == rank``) and gathered with
:func:`gather_objects`, one collective per call, never inside a loop whose length differs per rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "gather_objects",
           "broadcast_object", "all_reduce_sum", "barrier", "shard", "unwrap"]

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank, world_size, local_rank: from the launcher's environment (0, 1, 0 without one).
        device: ``torch.device`` this process computes on.
        initialized: True when a process group was created by :func:`init_distributed`.
    """

    rank: int
    world_size: int
    local_rank: int
    device: Any
    initialized: bool = False

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
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
    try:
        return torch.device(pref)
    except (RuntimeError, ValueError):
        from kidneyssl.errors import KidneySSLError

        raise KidneySSLError(f"{preference!r} is not a device; use auto, cpu, cuda or cuda:N",
                             remedy=("device=cpu",)) from None


def init_distributed(device: str | None = None) -> DistContext:
    """Initialise the process group from the environment when ``WORLD_SIZE > 1``.

    Args:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
            Under torchrun, ``cuda`` means ``cuda:LOCAL_RANK``.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev, initialized=False)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank)
    return DistContext(rank, world, local_rank, dev, initialized=True)


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
