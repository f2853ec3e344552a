"""Recorded cameras: what a mismatch is, and how dataset keys, topics and diagnostics map to them."""

from __future__ import annotations

from types import SimpleNamespace

from dp_core.camera_sources import (CameraSource, camera_name, policy_cameras, read_cameras,
                                    serials_by_key, serials_from_statuses, write_cameras)
from dp_core.config import ActionSpec, ObsSpec, ShapeMeta


def test_mismatch_compares_size_and_known_serials() -> None:
    cam = CameraSource(480, 640, "111")
    assert cam.mismatch(CameraSource(480, 640, "111")) is None
    assert "serial is not known yet" in cam.mismatch(CameraSource(480, 640, ""))  # a recorded serial must be confirmed
    assert CameraSource(480, 640).mismatch(CameraSource(480, 640, "9")) is None  # none recorded (simulated camera)
    assert cam.mismatch(CameraSource(720, 1280, "111")) == "frames are 720x1280, recorded at 480x640"
    assert "camera serial 222, recorded from 111" in cam.mismatch(CameraSource(480, 640, "222"))
    assert CameraSource(480, 640).merged(CameraSource(480, 640, "7")).serial == "7"
    assert cam.merged(CameraSource(480, 640, "7")).serial == "111"
    assert read_cameras(write_cameras({"a": cam})) == {"a": cam} and read_cameras(None) == {}


def test_policy_cameras_follow_the_observation_sources() -> None:
    meta = ShapeMeta(obs={"front": ObsSpec("rgb", [96, 96, 3], source="camera_1"), "pos": ObsSpec("low_dim", [2]),
                          "camera_0": ObsSpec("rgb", [96, 96, 3])}, action=ActionSpec(dim=2))
    recorded = {"camera_0": CameraSource(480, 640, "111"), "camera_1": CameraSource(480, 640, "222")}
    assert policy_cameras(recorded, meta) == {"front": recorded["camera_1"], "camera_0": recorded["camera_0"]}
    assert policy_cameras({}, meta) == {}


def test_camera_names_from_topics_and_diagnostics() -> None:
    assert camera_name("/camera_1/color/image_raw") == "camera_1"
    statuses = [SimpleNamespace(name=n, hardware_id=h) for n, h in [
        ("realsense: camera_0", "111"), ("realsense: camera_1", "222"), ("policy", ""), ("realsense: camera_2", ""),
        ("ur_driver: camera_3x", "9")]]
    assert serials_from_statuses(statuses) == {"camera_0": "111", "camera_1": "222"}
    assert serials_by_key({"wrist": "camera_1", "front": "camera_2"}, statuses) == {"wrist": "222"}


def test_a_new_episode_adds_keys_and_fills_in_unknown_serials() -> None:
    from dp_core.camera_sources import with_new_episode

    recorded = {"front": CameraSource(480, 640), "wrist": CameraSource(240, 320, "222")}
    episode = {"front": CameraSource(480, 640, "111"), "top": CameraSource(96, 96)}
    assert with_new_episode(recorded, episode) == {"front": CameraSource(480, 640, "111"),
                                                   "wrist": CameraSource(240, 320, "222"), "top": CameraSource(96, 96)}
    assert with_new_episode(recorded, {}) == recorded


def test_cameras_to_confirm_are_the_used_image_keys_recorded_with_a_serial() -> None:
    from dp_core.camera_sources import cameras_to_confirm

    used = {"front": ("/camera_0/color/image_raw", "Image"), "wrist": ("/camera_1/color/image_raw", "Image"),
            "pos": ("/robot/tcp_pose", "PoseStamped")}
    cameras = {"front": CameraSource(480, 640, "111"), "wrist": CameraSource(480, 640), "top": CameraSource(96, 96, "9")}
    assert cameras_to_confirm(used, cameras) == {"front": "camera_0"}
    assert cameras_to_confirm(used, {}) == {}
