"""Teleoperation without ROS: SpaceMouse axes to a twist, and a twist or target stream to safe position commands."""

from .spacemouse import ButtonEdges, ReportWatch, SpaceMouseMapping, open_spacemouse, read_latest
from .teleop_target import TeleopTarget

__all__ = ["ButtonEdges", "ReportWatch", "SpaceMouseMapping", "TeleopTarget", "open_spacemouse", "read_latest"]
