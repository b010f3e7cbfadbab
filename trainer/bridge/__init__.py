"""The bridge: an Engine's lifecycle published onto a bus, and the bus's control obeyed.

`BusRun` is the entry point; see `trainer.bridge.run`.
"""

from trainer.bridge.barrier import BarrierResult
from trainer.bridge.checkpointer import CheckpointStat
from trainer.bridge.control import Ignored, StopCause
from trainer.bridge.run import BusRun, RunEnd

__all__ = ["BarrierResult", "BusRun", "CheckpointStat", "Ignored", "RunEnd", "StopCause"]
