"""Methods by name: the segmentation task and the pretraining methods, each one module.

Adding a pretraining method is one module (a :class:`~kidneyssl.training.tasks.pretraining.PretrainingTask`
subclass) and one line in :data:`PRETRAINING_METHODS`. The mapping holds import paths, imported on
first use, so a method's own dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from kidneyssl.errors import KidneySSLError

__all__ = ["PRETRAINING_METHODS", "DEFAULT_METHOD", "pretraining_task", "pretraining_class"]

#: The paper's proxy task: the default method, and the one checkpoints written before methods had
#: names hold.
DEFAULT_METHOD = "side"

#: Method name -> ``"module:Class"`` of its task.
PRETRAINING_METHODS: Mapping[str, str] = MappingProxyType({
    "side": "kidneyssl.training.tasks.side:SideTask",
    "mae": "kidneyssl.training.tasks.mae:MAETask",
    "genesis": "kidneyssl.training.tasks.genesis:GenesisTask",
})


def pretraining_class(method: str) -> Any:
    """The task class of a registered pretraining method.

    Raises:
        KidneySSLError: an unknown method (the message lists the known ones).
    """
    if method not in PRETRAINING_METHODS:
        raise KidneySSLError(f"unknown pretraining method {method!r}; known: {', '.join(PRETRAINING_METHODS)}")
    module_name, _, name = PRETRAINING_METHODS[method].partition(":")
    return getattr(importlib.import_module(module_name), name)


def pretraining_task(method: str, cache_dir: str | Path | None = None, split_file: str | Path | None = None,
                     **options: Any) -> Any:
    """A pretraining task of ``method`` (``options``: the method's own keyword arguments, e.g.
    ``unlabeled``, ``locator``)."""
    return pretraining_class(method)(cache_dir, split_file, **options)
