"""ROS-free hardware drivers: UR servoing over RTDE and RealSense cameras, plus pose maths."""

from .pose_interpolator import PoseTrajectoryInterpolator
from .realsense import CameraIntrinsics, CameraStatus, MultiRealsense
from .rotations import quat_slerp, quat_to_rotvec, rotvec_to_quat
from .ur_servo import RobotState, ServoConfig, ServoState, URServoController

__all__ = [
    "CameraIntrinsics",
    "CameraStatus",
    "MultiRealsense",
    "PoseTrajectoryInterpolator",
    "RobotState",
    "ServoConfig",
    "ServoState",
    "URServoController",
    "quat_slerp",
    "quat_to_rotvec",
    "rotvec_to_quat",
]
