"""Read training items in background worker processes, in a given order, optionally into pinned
(page-locked) memory, so that reading the memory-mapped cache and host-to-device copies overlap
with the network's compute.

The training loop decides the order of the items (seeded shuffling, sharding across ranks);
:func:`build_loader` only moves the reading out of the way. Items are served one by one
(batch size 1, as the paper trains), unbatched, exactly as ``dataset[i]`` returns them.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

from kidneyssl.system import available_cpus

__all__ = ["build_loader", "available_cpus"]

log = logging.getLogger(__name__)


def _as_is(item: Any) -> Any:
    return item


def build_loader(dataset: Any, order: Sequence[int], *, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int = 2, announce: bool = True) -> Iterable[Any]:
    """``dataset[i] for i in order``, read ahead by ``num_workers`` processes.

    Args:
        dataset: a map-style dataset (``__getitem__``, ``__len__``), e.g.
            :class:`~kidneyssl.data.segmentation.HalfVolumeDataset`; its items' tensors are
            returned as they are (no batch dimension added).
        order: dataset indices in the order to serve them (one epoch).
        num_workers: reader processes; 0 reads in the calling process, when the item is asked for.
            At most :func:`available_cpus` are started (more only compete for the same cores).
        pin_memory: copy tensors into pinned memory (faster, asynchronous ``.to("cuda",
            non_blocking=True)``); ignored without CUDA.
        prefetch_factor: items read ahead per worker.
        announce: log one line when ``num_workers`` was lowered to the CPUs available (a loop
            that builds a loader per epoch passes ``True`` for its first epoch only).

    Returns:
        A ``torch.utils.data.DataLoader`` (iterable once per call of ``iter``).

    Raises:
        ValueError: negative ``num_workers`` or an index outside the dataset.
    """
    import torch
    from torch.utils.data import DataLoader

    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    order = [int(i) for i in order]
    bad = [i for i in order if not 0 <= i < len(dataset)]
    if bad:
        raise ValueError(f"indices {bad[:5]} outside the dataset of {len(dataset)} items")
    cpus = available_cpus()
    if num_workers > cpus:
        if announce:
            log.info("data loader: %d reader processes instead of the %d asked for (%d CPUs available to this "
                     "process)", cpus, num_workers, cpus)
        num_workers = cpus
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=order,
        collate_fn=_as_is,  # items exactly as the dataset returns them (tuples stay tuples)
        num_workers=num_workers,
        pin_memory=bool(pin_memory) and torch.cuda.is_available(),
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=False,
        # Readers start from a clean server process, never by forking this one: a fork of a process
        # whose native libraries run threads (OpenVINO after an inference, in the experiment's
        # scoring) crashed the reader with SIGSEGV. The datasets pickle as paths and indices.
        multiprocessing_context="forkserver" if num_workers > 0 else None,
    )
