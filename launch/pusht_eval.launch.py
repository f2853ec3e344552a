"""Scored Push-T evaluation through the ROS 2 nodes: N episodes in the simulated cell, then the score.

    ros2 launch dp_bringup pusht_eval.launch.py num_episodes:=20 checkpoint:=/path/to/policy.safetensors

The simulator prints `PUSHT_SCORE <score> over <n> episodes` (and writes the config's report_path when set) and
the launch shuts down. Same nodes and topics as ur5_pusht.launch.py with sim:=true.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

FORWARDED = ("checkpoint", "config", "device", "seed", "extra_latency", "latency_compensation", "replan_steps",
             "warm_start", "log_level")


def generate_launch_description() -> LaunchDescription:
    main = os.path.join(get_package_share_directory("dp_bringup"), "launch", "ur5_pusht.launch.py")
    args = [
        DeclareLaunchArgument("num_episodes", default_value="20", description="episodes to score"),
        DeclareLaunchArgument("checkpoint", default_value="", description="policy file; default: bundled model"),
        DeclareLaunchArgument("config", default_value="", description="node parameter file; default config/pusht_sim.yaml"),
        DeclareLaunchArgument("device", default_value="", description="auto, cpu, cuda; default: the config's (auto)"),
        DeclareLaunchArgument("seed", default_value="", description="seed of the first episode; default: the config's (100000)"),
        DeclareLaunchArgument("extra_latency", default_value="",
                              description="artificial observation-to-chunk delay (s); default: the config's (0)"),
        DeclareLaunchArgument("latency_compensation", default_value="",
                              description="executor latency compensation; default: the config's (true)"),
        DeclareLaunchArgument("replan_steps", default_value="",
                              description="a new chunk every this many control steps; default: the config's (0: Ta)"),
        DeclareLaunchArgument("warm_start", default_value="",
                              description="denoise each chunk from the previous one; default: the config's (false)"),
        DeclareLaunchArgument("log_level", default_value="info", description="log level of all nodes"),
    ]
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(main),
        launch_arguments={"sim": "true", "num_episodes": LaunchConfiguration("num_episodes"),
                          **{k: LaunchConfiguration(k) for k in FORWARDED}}.items(),
    )
    return LaunchDescription([*args, include])
