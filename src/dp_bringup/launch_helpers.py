"""Pieces shared by the launch files: argument parsing and the real cell's driver and camera nodes."""

from __future__ import annotations

import os

from launch_ros.actions import Node

PKG = "dp_bringup"


def truthy(value: str) -> bool:
    """A launch argument's string as a boolean ("true", "1", "yes", "on", any case)."""
    return value.strip().lower() in ("1", "true", "yes", "on")


def parse_serials(text: str) -> list[str]:
    """``"['123', '456']"`` (or ``123,456``) -> ``["123", "456"]``: RealSense serials as strings."""
    return [s.strip().strip("'\"") for s in text.strip("[]").split(",") if s.strip()]


def real_cell_nodes(share: str, robot_ip: str, camera_serials: str, common: dict) -> list[Node]:
    """The UR driver and the RealSense camera node of the real cell, parameters from ``share``/config."""
    if not robot_ip:
        raise RuntimeError("sim:=false needs robot_ip:=<UR controller address>")
    cameras = [os.path.join(share, "config", "cameras.yaml")]
    if camera_serials:
        cameras.append({"serials": parse_serials(camera_serials)})
    return [
        Node(package=PKG, executable="ur_driver", name="ur_driver", **common,
             parameters=[os.path.join(share, "config", "ur_driver.yaml"), {"robot_ip": robot_ip}]),
        Node(package=PKG, executable="cameras", name="cameras", **common, parameters=cameras),
    ]
