"""Diffusion Policy Push-T cell: simulated (default) or a real UR5 with RealSense cameras.

    ros2 launch dp_bringup ur5_pusht.launch.py                       # simulated cell, bundled model
    ros2 launch dp_bringup ur5_pusht.launch.py sim:=false robot_ip:=192.168.1.10 \
        camera_serials:="['123456789012', '210987654321']" checkpoint:=/path/to/policy.safetensors
    ros2 launch dp_bringup ur5_pusht.launch.py bag:=bags/run1    # also record the config's bag_recorder topics

Recording uses `ros2 bag record -s mcap` where the system has rosbag2 with the MCAP plugin, and
otherwise our bag_recorder node (rosbags; the PyPI ROS 2 wheels have no rosbag2); both write a rosbag2
bag with MCAP storage (`bag_recorder:=ros2bag|dp` forces one).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dp_bringup.launch_helpers import PKG, real_cell_nodes, truthy



def launch_setup(context, *_, **__):
    share = get_package_share_directory(PKG)
    arg = {name: LaunchConfiguration(name).perform(context) for name in
           ("sim", "checkpoint", "config", "device", "robot_ip", "camera_serials", "num_episodes",
            "seed", "extra_latency", "latency_compensation", "replan_steps", "warm_start", "log_level", "bag",
            "bag_recorder")}
    sim = truthy(arg["sim"])
    config = arg["config"] or os.path.join(share, "config", "pusht_sim.yaml" if sim else "ur5_real.yaml")
    if not sim and not arg["checkpoint"]:
        raise RuntimeError("sim:=false needs checkpoint:=<policy.safetensors> trained for the real cell (the bundled "
                           "model is the simulated cell's)")
    checkpoint = arg["checkpoint"] or os.path.join(share, "models", "pusht_state_unet_small.safetensors")
    common = {"output": "screen", "emulate_tty": True, "arguments": ["--ros-args", "--log-level", arg["log_level"]]}
    # Arguments left empty leave the parameter file's value in force.
    policy = {"checkpoint": checkpoint, **_given(arg, device=("device", str), extra_latency_s=("extra_latency", float),
                                                 replan_steps=("replan_steps", int), warm_start=("warm_start", truthy))}
    executor = _given(arg, latency_compensation=("latency_compensation", truthy))
    nodes = [
        Node(package=PKG, executable="policy_node", name="policy", **common, parameters=[config, policy]),
        Node(package=PKG, executable="action_executor", name="action_executor", **common, parameters=[config, executor]),
    ]
    if sim:
        sim_node = Node(package=PKG, executable="pusht_sim", name="pusht_sim", **common,
                        parameters=[config, {"num_episodes": int(arg["num_episodes"]), **_given(arg, seed=("seed", int))}])
        nodes.append(sim_node)
        if int(arg["num_episodes"]) > 0:  # scored run: the whole launch ends with the simulator's report
            nodes.append(RegisterEventHandler(OnProcessExit(target_action=sim_node, on_exit=[Shutdown()])))
    else:
        nodes += real_cell_nodes(share, arg["robot_ip"], arg["camera_serials"], common)
    if arg["bag"]:
        nodes += _recorder(arg["bag"], arg["bag_recorder"], config, common)
    return nodes


def _given(arg: dict[str, str], **params: tuple[str, Callable[[str], Any]]) -> dict[str, Any]:
    """``{parameter: convert(arg[argument])}`` for each ``parameter=(argument, convert)`` given (non-empty)."""
    return {name: convert(arg[argument]) for name, (argument, convert) in params.items() if arg[argument] != ""}


def _has_ros2bag_mcap() -> bool:
    if importlib.util.find_spec("ros2bag") is None:
        return False
    try:
        get_package_share_directory("rosbag2_storage_mcap")
    except PackageNotFoundError:
        return False
    return True


def _recorder(bag: str, which: str, config: str, common: dict) -> list:
    """Record the topics of the config's bag_recorder section to ``bag`` (rosbag2, MCAP storage)."""
    with open(config) as f:
        section = (yaml.safe_load(f) or {}).get("bag_recorder", {}).get("ros__parameters", {})
    topics = section.get("topics")
    if not topics:
        raise RuntimeError(f"bag:={bag} needs a bag_recorder: ros__parameters: topics: list in {config}")
    if which == "ros2bag" or (which == "auto" and _has_ros2bag_mcap()):
        return [LogInfo(msg=f"recording {len(topics)} topics to {bag} with ros2 bag record (MCAP)"),
                ExecuteProcess(cmd=["ros2", "bag", "record", "-s", "mcap", "-o", bag, *topics], output="screen")]
    return [Node(package=PKG, executable="bag_recorder", name="bag_recorder", **common,
                 parameters=[config, {"output": bag}])]


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument("sim", default_value="true", choices=["true", "false"],
                              description="true: simulated Push-T cell; false: UR driver and RealSense cameras"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="policy file (.safetensors); default: the bundled Push-T model"),
        DeclareLaunchArgument("config", default_value="",
                              description="node parameter file; default config/pusht_sim.yaml or config/ur5_real.yaml"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto (CUDA if available), cpu, cuda, cuda:1; default: the config's (auto)"),
        DeclareLaunchArgument("robot_ip", default_value="", description="UR controller IP address (sim:=false)"),
        DeclareLaunchArgument("camera_serials", default_value="",
                              description="RealSense serial numbers, e.g. \"['0123', '4567']\" (sim:=false)"),
        DeclareLaunchArgument("num_episodes", default_value="0",
                              description="sim: stop after this many episodes and print the score (0: run forever)"),
        DeclareLaunchArgument("seed", default_value="", description="sim: seed of the first episode; default: the config's"),
        DeclareLaunchArgument("extra_latency", default_value="",
                              description="artificial delay (s) between observation and chunk, for latency tests; "
                                          "default: the config's (0)"),
        DeclareLaunchArgument("latency_compensation", default_value="", choices=["", "true", "false"],
                              description="executor schedules actions from the observation stamp (paper) or from "
                                          "arrival; default: the config's (true)"),
        DeclareLaunchArgument("replan_steps", default_value="",
                              description="policy: a new chunk every this many control steps (0: Ta, the policy's "
                                          "n_action_steps); default: the config's (0)"),
        DeclareLaunchArgument("warm_start", default_value="", choices=["", "true", "false"],
                              description="policy: start each chunk's denoising from the previous chunk; default: "
                                          "the config's (false)"),
        DeclareLaunchArgument("log_level", default_value="info", choices=["debug", "info", "warn", "error"],
                              description="log level of all nodes"),
        DeclareLaunchArgument("bag", default_value="",
                              description="record the config's bag_recorder topics to this new bag directory (MCAP)"),
        DeclareLaunchArgument("bag_recorder", default_value="auto", choices=["auto", "ros2bag", "dp"],
                              description="auto: ros2 bag record where rosbag2 with MCAP is installed, else bag_recorder"),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=launch_setup)])
