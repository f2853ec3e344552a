"""Bag recorder: the configured topics, as serialised messages, into a rosbag2 bag with MCAP storage.

For systems without ``ros2 bag`` (the PyPI ROS 2 wheels have no rosbag2): raw subscriptions (no
deserialisation) feed :class:`dp_core.bag_io.BagWriter` (rosbags). Topics are subscribed as soon as they
have a publisher, with the QoS their publishers offer (best effort if any publisher is); each
message is stamped with its receive time, as ``ros2 bag record`` does. Ctrl-C, SIGTERM or the end of
the launch close the bag; a killed recorder leaves at most ``flush_period_s`` of data unrecoverable
(``dp-bag recover``, see dp_core.bag_io).
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosidl_runtime_py.utilities import get_message

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_core.bag_io import BagError, BagWriter


def _qos_time(duration) -> QosTime:
    ns = duration.nanoseconds
    return QosTime(sec=ns // 1_000_000_000, nsec=ns % 1_000_000_000)


def to_bag_qos(profile: QoSProfile) -> Qos:
    """rclpy's QoS profile as rosbags' (the enum values are rmw's in both)."""
    return Qos(history=QosHistory(int(profile.history)), depth=profile.depth,
               reliability=QosReliability(int(profile.reliability)), durability=QosDurability(int(profile.durability)),
               deadline=_qos_time(profile.deadline), lifespan=_qos_time(profile.lifespan),
               liveliness=QosLiveliness(int(profile.liveliness)),
               liveliness_lease_duration=_qos_time(profile.liveliness_lease_duration),
               avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions))


def subscription_qos(offered: list[QoSProfile]) -> QoSProfile:
    """A QoS that matches every offered profile: best effort if any publisher is, volatile unless all latch."""
    best_effort = any(p.reliability == ReliabilityPolicy.BEST_EFFORT for p in offered)
    latched = bool(offered) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class BagRecorderNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("bag_recorder", **kwargs)
        output = self.declare_parameter("output", "").value
        self.topics = list(self.declare_parameter("topics", ["/robot/tcp_pose"]).value)
        flush_period = self.declare_parameter("flush_period_s", 1.0).value
        discovery_period = self.declare_parameter("discovery_period_s", 0.5).value
        check_parameters(self)
        if not self.topics or not all(t.startswith("/") for t in self.topics):
            raise ValueError(f"parameter 'topics' must list absolute topic names; got {self.topics}")
        if not output:
            output = datetime.datetime.now().strftime("rosbag2_%Y_%m_%d-%H_%M_%S")
        self.writer = BagWriter(output, os.environ.get("ROS_DISTRO"), flush_period_s=flush_period)
        self._subs = {}
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._discover()
        self.create_timer(discovery_period, self._discover)
        self.create_timer(flush_period, self.writer.flush)
        self.create_timer(1.0, self._publish_diagnostics)
        self.create_timer(5.0, self._log_progress)
        self.get_logger().info(f"recording {self.topics} to {self.writer.path} (rosbag2 MCAP)")

    def _discover(self) -> None:
        types = dict(self.get_topic_names_and_types())
        for topic in self.topics:
            if topic not in types or (topic in self._subs and self._subs[topic] is None):
                continue
            offered = [info.qos_profile for info in self.get_publishers_info_by_topic(topic)]
            if not offered:  # only subscribers so far: wait for a publisher to learn the QoS to match
                continue
            qos = subscription_qos(offered)
            sub = self._subs.get(topic)
            if sub is not None:
                # A subscription stricter than a new publisher offers never hears it: relax it (best effort when
                # a best-effort publisher appears, volatile when a volatile one joins latched ones).
                relax = [what for what, now, want, strict in (
                    ("best effort", sub.qos_profile.reliability, qos.reliability, ReliabilityPolicy.RELIABLE),
                    ("volatile", sub.qos_profile.durability, qos.durability, DurabilityPolicy.TRANSIENT_LOCAL))
                    if now == strict and want != strict]
                if relax:
                    self.get_logger().info(f"{topic}: a new publisher offers less; subscribing {' and '.join(relax)}")
                    self.destroy_subscription(sub)
                    self._subs[topic] = self.create_subscription(sub.msg_type, topic, self._make_callback(topic), qos, raw=True)
                continue
            type_name = types[topic][0]
            if len(types[topic]) > 1:
                self.get_logger().warning(f"{topic} has several types {types[topic]}; recording {type_name}")
            try:
                msg_class = get_message(type_name)
                self.writer.add_topic(topic, type_name, [to_bag_qos(p) for p in offered])
            except (BagError, AttributeError, ModuleNotFoundError, ValueError) as exc:
                self.get_logger().error(f"cannot record {topic}: {exc}")
                self._subs[topic] = None  # do not retry every period
                continue
            self._subs[topic] = self.create_subscription(msg_class, topic, self._make_callback(topic), qos, raw=True)
            self.get_logger().info(f"recording {topic} ({type_name})")

    def _make_callback(self, topic: str):
        def callback(data: bytes) -> None:
            self.writer.write(topic, self.get_clock().now().nanoseconds, data)

        return callback

    def _missing(self) -> list[str]:
        return [t for t in self.topics if self._subs.get(t) is None]

    def _log_progress(self) -> None:
        total = sum(self.writer.counts.values())
        missing = self._missing()
        self.get_logger().info(f"{total} messages recorded" + (f"; not (yet) recorded: {missing}" if missing else ""))

    def _publish_diagnostics(self) -> None:
        missing = self._missing()
        level = DiagnosticStatus.WARN if missing else DiagnosticStatus.OK
        values = {"bag": str(self.writer.path), **{t: n for t, n in self.writer.counts.items()}}
        message = f"waiting for {missing}" if missing else "recording"
        publish_diagnostics(self, self._diag_pub, [diagnostic_status("bag_recorder", level, message, values)])

    def close(self) -> None:
        self.writer.close()
        total = sum(self.writer.counts.values())
        print(f"bag_recorder: closed {self.writer.path}: {total} messages {self.writer.counts}", flush=True)


def main(args: list[str] | None = None) -> None:
    try:
        run_node(BagRecorderNode, args, BagRecorderNode.close)
    except (BagError, ValueError) as exc:  # bad bag or parameters: a message, not a traceback
        print(f"bag_recorder: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
