"""In-process handlers for the Engine: checkpoints, early stopping, LR schedules, timing..."""

from trainer.handlers.checkpoint import Checkpoint, DiskSaver, SaveHandler, global_step_from_engine
from trainer.handlers.early_stopping import EarlyStopping
from trainer.handlers.lr_scheduler import LRScheduler
from trainer.handlers.progress_bar import ProgressBar
from trainer.handlers.terminate_on_nan import TerminateOnNan
from trainer.handlers.timer import Timer

__all__ = [
    "Checkpoint",
    "DiskSaver",
    "EarlyStopping",
    "LRScheduler",
    "ProgressBar",
    "SaveHandler",
    "TerminateOnNan",
    "Timer",
    "global_step_from_engine",
]
