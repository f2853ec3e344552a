"""ROS-free simulators."""

from .pusht import GOAL_POSE, LOCAL_KEYPOINTS, PushTConfig, PushTEnv, pusht_score, t_coverage

__all__ = ["GOAL_POSE", "LOCAL_KEYPOINTS", "PushTConfig", "PushTEnv", "pusht_score", "t_coverage"]
