"""Demonstration recording without ROS: a crash-safe episode writer and the control-rate step sampler."""

from .episode_writer import EpisodeWriter
from .recorder import EpisodeRecorder, RecorderError, StreamSpec

__all__ = ["EpisodeRecorder", "EpisodeWriter", "RecorderError", "StreamSpec"]
