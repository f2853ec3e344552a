"""Teleoperate the cell and record demonstrations: simulated Push-T cell (default) or a real UR arm.

    ros2 launch dp_bringup teleop_record.launch.py dataset:=~/demos/pusht.zarr                 # SpaceMouse, sim
    ros2 launch dp_bringup teleop_record.launch.py dataset:=~/demos/pusht.zarr input:=topic    # targets on /teleop/target
    ros2 launch dp_bringup teleop_record.launch.py dataset:=/tmp/demos.zarr input:=scripted num_demos:=5
    ros2 launch dp_bringup teleop_record.launch.py sim:=false robot_ip:=192.168.1.10 dataset:=~/demos/ur5.zarr \
        camera_serials:="['123456789012', '210987654321']"

Nodes: the cell (pusht_sim, or ur_driver + cameras), teleop, demo_recorder, and the input: spacemouse,
nothing (topic), or scripted_teleop, which re-enacts Push-T human demonstrations and ends the launch.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dp_bringup.launch_helpers import PKG, first_cell_seed, real_cell_nodes, truthy

ARGS = ("sim", "dataset", "robot_ip", "camera_serials", "input", "video", "teleop_config", "recorder_config",
        "demo_dataset", "first_demo", "num_demos", "seed", "log_level")


def launch_setup(context, *_, **__):
    share = get_package_share_directory(PKG)
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGS}
    sim, mode = truthy(arg["sim"]), arg["input"]
    if not arg["dataset"]:
        raise RuntimeError("dataset:=<path/to/demos.zarr> is required (created if missing, appended to if present)")
    if mode == "scripted" and not sim:
        raise RuntimeError("input:=scripted re-enacts Push-T demonstrations in the simulated cell; use sim:=true")
    teleop_cfg = arg["teleop_config"] or os.path.join(share, "config", "teleop.yaml" if sim else "teleop_ur5.yaml")
    recorder_cfg = arg["recorder_config"] or os.path.join(share, "config", "recorder.yaml" if sim else "recorder_ur5.yaml")
    common = {"output": "screen", "emulate_tty": True, "arguments": ["--ros-args", "--log-level", arg["log_level"]]}
    recorder_overrides = {"dataset": os.path.expanduser(arg["dataset"])}
    if arg["video"]:  # else the recorder config's setting
        recorder_overrides["video"] = truthy(arg["video"])
    if mode == "scripted":  # the script resets the cell and resyncs teleop itself, in its own order
        recorder_overrides["after_episode_services"] = [""]
    nodes = [
        Node(package=PKG, executable="teleop", name="teleop", **common,
             parameters=[teleop_cfg, {"input": "spacemouse" if mode == "spacemouse" else "topic"}]),
        Node(package=PKG, executable="demo_recorder", name="demo_recorder", **common,
             parameters=[recorder_cfg, recorder_overrides]),
    ]
    if mode == "spacemouse":
        nodes.append(Node(package=PKG, executable="spacemouse", name="spacemouse", **common, parameters=[teleop_cfg]))
    if sim:
        first = int(arg["first_demo"]) if mode == "scripted" else first_cell_seed(arg["seed"], arg["dataset"])
        nodes.append(Node(package=PKG, executable="pusht_sim", name="pusht_sim", **common,
                          parameters=[os.path.join(share, "config", "pusht_sim.yaml"),
                                      {"auto_reset": False, "seed": first}]))
    else:
        nodes += real_cell_nodes(share, arg["robot_ip"], arg["camera_serials"], common)
    if mode == "scripted":
        demo_dataset = os.path.abspath(os.path.expanduser(
            arg["demo_dataset"] or os.path.join("..", "shared", "data", "pusht", "pusht_cchi_v7_replay.zarr")))
        if not os.path.exists(demo_dataset):
            raise RuntimeError(f"input:=scripted re-enacts demonstrations from demo_dataset:=<zarr>; not found: {demo_dataset}")
        script = Node(package=PKG, executable="scripted_teleop", name="scripted_teleop", **common,
                      parameters=[{"demo_dataset": demo_dataset, "first_demo": int(arg["first_demo"]),
                                   "num_demos": int(arg["num_demos"])}])
        nodes += [script, RegisterEventHandler(OnProcessExit(target_action=script, on_exit=[Shutdown()]))]
    return nodes


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument("sim", default_value="true", choices=["true", "false"],
                              description="true: simulated Push-T cell; false: UR driver and RealSense cameras"),
        DeclareLaunchArgument("dataset", default_value="",
                              description="output zarr dataset (required; created, or appended to after a restart)"),
        DeclareLaunchArgument("input", default_value="spacemouse", choices=["spacemouse", "topic", "scripted"],
                              description="spacemouse; topic (PoseStamped targets on /teleop/target); "
                                          "scripted (re-enact Push-T demonstrations, sim only)"),
        DeclareLaunchArgument("robot_ip", default_value="", description="UR controller IP address (sim:=false)"),
        DeclareLaunchArgument("camera_serials", default_value="",
                              description="RealSense serial numbers, e.g. \"['0123', '4567']\" (sim:=false)"),
        DeclareLaunchArgument("video", default_value="", choices=["", "true", "false"],
                              description="also write an mp4 per camera and episode next to the dataset "
                                          "(default: the recorder config's video, false in sim, true on the UR5)"),
        DeclareLaunchArgument("teleop_config", default_value="",
                              description="spacemouse/teleop parameters; default config/teleop.yaml or teleop_ur5.yaml"),
        DeclareLaunchArgument("recorder_config", default_value="",
                              description="recorder parameters; default config/recorder.yaml or recorder_ur5.yaml"),
        DeclareLaunchArgument("demo_dataset", default_value="",
                              description="input:=scripted: Push-T demonstrations (default "
                                          "../shared/data/pusht/pusht_cchi_v7_replay.zarr from the working directory)"),
        DeclareLaunchArgument("first_demo", default_value="0", description="input:=scripted: first demonstration"),
        DeclareLaunchArgument("num_demos", default_value="3", description="input:=scripted: how many to record"),
        DeclareLaunchArgument("seed", default_value="",
                              description="sim, input spacemouse or topic: the cell's first seed (each episode the "
                                          "next); default the number of episodes already in the dataset"),
        DeclareLaunchArgument("log_level", default_value="info", choices=["debug", "info", "warn", "error"],
                              description="log level of all nodes"),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=launch_setup)])
