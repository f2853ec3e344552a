"""ROS-free real-time control helpers: observation alignment and latency-compensated action execution."""

from .action_schedule import ActionSchedule, ChunkStats, ScheduledAction, ScheduleStats
from .command_limits import CommandLimiter, Limited
from .obs_buffer import AlignedObs, ObsBuffer, Refusal, RefusalKind

__all__ = [
    "ActionSchedule",
    "AlignedObs",
    "ChunkStats",
    "CommandLimiter",
    "Limited",
    "ObsBuffer",
    "Refusal",
    "RefusalKind",
    "ScheduleStats",
    "ScheduledAction",
]
