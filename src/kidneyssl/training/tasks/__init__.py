"""Training methods as tasks of the one trainer (:func:`kidneyssl.training.trainer.fit`): the
segmentation task and the pretraining methods (registry in :mod:`.registry`)."""

from kidneyssl.training.tasks.base import BatchLayout, Task, TaskPlan, TrainSettings, batch_layout
from kidneyssl.training.tasks.registry import (
    DEFAULT_METHOD,
    PRETRAINING_METHODS,
    pretraining_class,
    pretraining_task,
)
from kidneyssl.training.tasks.segmentation import SegmentationTask

__all__ = ["BatchLayout", "Task", "TaskPlan", "TrainSettings", "batch_layout", "DEFAULT_METHOD",
           "PRETRAINING_METHODS", "pretraining_class", "pretraining_task", "SegmentationTask"]
