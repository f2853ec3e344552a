"""Demonstration recorder: episodes of observations and commanded targets into a zarr dataset.

Services (std_srvs/Trigger) ``~/start``, ``~/stop`` (commit) and ``~/discard``; the same from SpaceMouse
buttons on ``buttons_topic`` (``button_start_stop`` toggles, ``button_discard`` discards). A timer at
``rate_hz`` (the control rate) samples every ``obs_topics`` entry, aligned by stamp as the policy node
aligns them, and the command on ``action_topic`` due one step later (:class:`dp_core.recording.EpisodeRecorder`); steps go into ``dataset``
through the crash-safe :class:`dp_core.recording.EpisodeWriter` (zarr v3, ``meta/episode_ends``
committed last; a restart repairs and appends). Observation messages are converted and paired in time as
the policy node does it, so a policy trained on the recording reads the same values when deployed.
After each stop or discard, the Trigger services in ``after_episode_services`` are called in order
(e.g. reset the simulated cell, resync teleop). The serial of each camera comes from the camera node's
``/diagnostics`` (status ``<node>: camera_<i>`` for ``/camera_<i>/...``) and is stored with the dataset's
cameras (:mod:`dp_core.camera_sources`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState, Joy
from std_srvs.srv import Trigger

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_bringup.ros_conversions import POSITION_AXES, stamp_to_seconds
from dp_core.camera_sources import camera_name, serials_by_key
from dp_core.msg_fields import image_to_numpy, low_dim_from_msg
from dp_core.recording import EpisodeRecorder, EpisodeWriter, RecorderError, StreamSpec
from dp_core.teleop import ButtonEdges

MSG_TYPES = {"Image": Image, "PoseStamped": PoseStamped, "PoseArray": PoseArray, "JointState": JointState}
DEFAULTS: dict[str, Any] = {  # the simulated Push-T cell; config/recorder.yaml repeats them
    "dataset": "",
    "rate_hz": 10.0,
    "max_age_s": 0.25,
    "obs_keys": ["img", "keypoint", "agent_pos"],
    "obs_topics": ["/camera_0/color/image_raw", "/pusht/keypoints", "/robot/tcp_pose"],
    "obs_types": ["Image", "PoseArray", "PoseStamped"],
    "obs_dims": [0, 18, 2],  # values per step of each low-dim stream (0 for images)
    "image_size": [96, 96],  # height, width stored; [0, 0] keeps the camera's size (ROS cannot type [])
    "action_topic": "/robot/servo_target",
    "action_names": ["x", "y"],
    "video": False,
    "video_dir": "",  # default: <dataset>.videos next to the dataset
    "chunk_steps": 100,
    "flush_steps": 20,
    "buttons_topic": "/spacemouse/buttons",
    "button_start_stop": 0,
    "button_discard": 1,
    "after_episode_services": [""],  # Trigger services called after stop/discard; "" entries ignored
}


class DemoRecorderNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("demo_recorder", **kwargs)
        self.declare_parameters("", list(DEFAULTS.items()))
        check_parameters(self)
        p = {name: self.get_parameter(name).value for name in DEFAULTS}
        if not p["dataset"]:
            raise ValueError("parameter 'dataset' (output .zarr path) is required")
        keys, topics, types, dims = (list(p[k]) for k in ("obs_keys", "obs_topics", "obs_types", "obs_dims"))
        if not (len(keys) == len(topics) == len(types) == len(dims)):
            raise ValueError(f"obs_keys, obs_topics, obs_types and obs_dims must be equally long; got "
                             f"{len(keys)}, {len(topics)}, {len(types)}, {len(dims)}")
        unknown = [t for t in types if t not in MSG_TYPES]
        if unknown:
            raise ValueError(f"obs_types {unknown} not supported; use {list(MSG_TYPES)}")
        bad_names = [n for n in p["action_names"] if n not in POSITION_AXES]
        if bad_names or not p["action_names"]:
            raise ValueError(f"action_names must be axes of {POSITION_AXES}; got {list(p['action_names'])}")
        size = list(p["image_size"])
        if len(size) != 2 or not (min(size) >= 1 or size == [0, 0]):
            raise ValueError(f"image_size must be [height, width] (>= 1), or [0, 0] for the camera's size; got {size}")
        keep = size == [0, 0]
        streams = [StreamSpec(k, "image", image_size=None if keep else tuple(size)) if t == "Image"
                   else StreamSpec(k, "low_dim", dim=int(d)) for k, t, d in zip(keys, types, dims)]
        dataset = Path(p["dataset"]).expanduser()
        video_dir = None
        if p["video"]:
            video_dir = Path(p["video_dir"]).expanduser() if p["video_dir"] else dataset.with_name(dataset.name + ".videos")
        writer = EpisodeWriter(dataset, chunk_steps=p["chunk_steps"], flush_steps=p["flush_steps"])
        if writer.repaired_rows:
            self.get_logger().warning(f"{dataset}: cut off {writer.repaired_rows} rows of an episode interrupted "
                                      "by a crash; finished episodes are intact")
        self.recorder = EpisodeRecorder(writer, streams, action_dim=len(p["action_names"]), dt=1.0 / p["rate_hz"],
                                        max_age_s=p["max_age_s"], video_dir=video_dir)
        self._action_axes = [POSITION_AXES.index(n) for n in p["action_names"]]
        self._buttons = ButtonEdges()
        self._button_start_stop, self._button_discard = p["button_start_stop"], p["button_discard"]
        self._bad_messages = 0

        for key, topic, type_name, spec in zip(keys, topics, types, streams):
            self.create_subscription(MSG_TYPES[type_name], topic, partial(self._on_obs, key, spec), qos_profile_sensor_data)
        self.create_subscription(PoseStamped, p["action_topic"], self._on_action, 10)
        self._image_cameras = {key: camera_name(topic) for key, topic, t in zip(keys, topics, types) if t == "Image"}
        if self._image_cameras:
            self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.create_subscription(Joy, p["buttons_topic"], self._on_buttons, 10)
        self.create_service(Trigger, "~/start", self._srv(self._start))
        self.create_service(Trigger, "~/stop", self._srv(self._stop))
        self.create_service(Trigger, "~/discard", self._srv(self._discard))
        self._after = [self.create_client(Trigger, name) for name in p["after_episode_services"] if name]
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0 / p["rate_hz"], self._on_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"recording {keys} + action {list(p['action_names'])} from {p['action_topic']} at {p['rate_hz']:.0f} Hz "
            f"into {dataset} ({writer.n_episodes} episodes, {writer.n_steps} steps there); "
            f"~/start, ~/stop, ~/discard or buttons {self._button_start_stop}/{self._button_discard}"
        )

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_obs(self, key: str, spec: StreamSpec, msg) -> None:
        try:
            value = image_to_numpy(msg, "rgb8") if spec.kind == "image" else low_dim_from_msg(msg, type(msg).__name__, spec.dim)
            self.recorder.observe(key, value, stamp_to_seconds(msg.header.stamp), now=self._now())
        except (ValueError, TypeError) as exc:
            self._bad_messages += 1
            self.get_logger().error(f"ignored {key} message: {exc}", throttle_duration_sec=2.0)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for key, serial in serials_by_key(self._image_cameras, msg.status).items():
            self.recorder.set_serial(key, serial)

    def _on_action(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        xyz = (p.x, p.y, p.z)
        try:  # a servo target's stamp is when it is due: the step's action is the one due dt after it
            self.recorder.command([xyz[i] for i in self._action_axes], stamp_to_seconds(msg.header.stamp))
        except ValueError as exc:
            self._bad_messages += 1
            self.get_logger().error(f"ignored command: {exc}", throttle_duration_sec=2.0)

    def _on_buttons(self, msg: Joy) -> None:
        for button in self._buttons.pressed(msg.buttons):
            try:
                if button == self._button_start_stop:
                    self.get_logger().info(self._stop() if self.recorder.recording else self._start())
                elif button == self._button_discard:
                    self.get_logger().info(self._discard())
            except RecorderError as exc:
                self.get_logger().error(str(exc))
            except Exception as exc:  # disk full, video encoder: the node goes on
                self.get_logger().error(self._failed(exc))

    def _srv(self, action):
        def handle(_request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
            try:
                response.message, response.success = action(), True
                self.get_logger().info(response.message)
            except RecorderError as exc:
                response.message, response.success = str(exc), False
                self.get_logger().error(response.message)
            except Exception as exc:  # disk full, video encoder: answer, and the node goes on
                response.message, response.success = self._failed(exc), False
                self.get_logger().error(response.message)
            return response

        return handle

    def _failed(self, exc: Exception) -> str:
        """After an unexpected error: discard the episode in progress (what is committed stays); the message."""
        discarded = ""
        if self.recorder.recording:
            try:
                discarded = f"; discarded the episode in progress ({self.recorder.discard()} steps)"
            except Exception as again:  # report both
                discarded = f"; discarding the episode in progress failed too: {again}"
        return f"recording failed: {exc!r}{discarded}"

    def _start(self) -> str:
        index = self.recorder.start(self._now())
        return f"recording episode {index}"

    def _stop(self) -> str:
        ended = self.recorder.recording  # a stop while idle changes nothing: no after-episode services
        try:
            s = self.recorder.stop(self._now())
        finally:
            if ended:
                self._after_episode()
        stale = f", stale inputs {s.stale}" if s.stale else ""
        videos = f", videos {[str(v) for v in s.videos]}" if s.videos else ""
        return (f"saved episode {s.index}: {s.steps} steps in {s.duration_s:.1f} s, {s.dropped_steps} dropped{stale}"
                f"{videos}; {self.recorder.writer.n_episodes} episodes, {self.recorder.writer.n_steps} steps in total")

    def _discard(self) -> str:
        n = self.recorder.discard()
        self._after_episode()
        return f"discarded the episode in progress ({n} steps)"

    def _after_episode(self, index: int = 0) -> None:
        """Call the after-episode services one after another, each once the previous one answered
        (the teleop resync must see the pose after the cell's reset, not before)."""
        if index >= len(self._after):
            return
        client = self._after[index]
        if not client.service_is_ready():
            self.get_logger().warning(f"after-episode service {client.srv_name} not available; skipped")
            self._after_episode(index + 1)
            return
        future = client.call_async(Trigger.Request())
        future.add_done_callback(lambda _: self._after_episode(index + 1))

    def _on_tick(self) -> None:
        try:
            self.recorder.tick(self._now())
        except Exception as exc:  # a write failure (disk full): stop recording, keep what is committed
            self.get_logger().error(self._failed(exc))

    def _publish_diagnostics(self) -> None:
        rec = self.recorder
        stale = rec.stale_inputs(self._now())
        if rec.recording and stale:
            level, message = DiagnosticStatus.WARN, f"recording, stale: {', '.join(stale)}"
        else:
            level, message = DiagnosticStatus.OK, "recording" if rec.recording else "idle"
        values = {"episodes": rec.writer.n_episodes, "steps": rec.writer.n_steps, "episode_steps": rec.steps,
                  "stale_inputs": ", ".join(stale) or "none", "bad_messages": self._bad_messages}
        publish_diagnostics(self, self.diag_pub, [diagnostic_status(f"{self.get_name()}: recorder", level, message, values)])

    def close(self) -> None:
        self.recorder.close()


def main(args: list[str] | None = None) -> None:
    run_node(DemoRecorderNode, args, DemoRecorderNode.close)
