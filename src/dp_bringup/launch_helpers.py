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


def first_cell_seed(seed: str, dataset: str) -> int:
    """The simulated cell's first seed for a teleoperation session: ``seed`` when given, else the number of
    episodes already in ``dataset``, so that a session appending to it starts from new states."""
    if seed.strip():
        try:
            return int(seed)
        except ValueError:
            raise RuntimeError(f"seed:={seed!r} is not an integer") from None
    import zarr

    from dp_core.episode_store import committed_episode_ends

    path = os.path.expanduser(dataset)
    if not os.path.exists(path):
        return 0
    try:  # a dataset the recorder created but never committed an episode to has no meta/episode_ends yet
        group = zarr.open_group(path, mode="r")
        return len(committed_episode_ends(group["meta/episode_ends"][:])) if "meta/episode_ends" in group else 0
    except Exception as exc:  # zarr raises several types for unreadable stores
        raise RuntimeError(f"dataset:={dataset}: not a readable zarr dataset ({exc})") from None


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
