"""Bag player: publishes a bag's messages on their topics in real time, to test live nodes on recorded data.

Messages go out as recorded bytes, paced by their receive times (scaled by ``rate``) from a dedicated
thread. With ``restamp`` (default) every header stamp is moved onto the current clock, keeping its
offset from the message's receive time, so a live policy node sees fresh observations (it refuses
stale ones). Publishers use the reliability and durability the recorded publishers offered.

    ros2 run dp_bringup bag_player --ros-args -p bag:=bags/run1 \\
        -p topics:="['/pusht/keypoints', '/robot/tcp_pose', '/camera_0/color/image_raw']"
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability, QosReliability
from rosidl_runtime_py.utilities import get_message

from dp_bringup.node_runner import check_parameters, run_node
from dp_core.bag_io import BagError, BagReader, shift_header_stamp


def publisher_qos(offered: list) -> QoSProfile:
    """Best effort if the recorded publishers were, latched if they were; reliable and volatile otherwise."""
    best_effort = any(q.reliability == QosReliability.BEST_EFFORT for q in offered)
    latched = bool(offered) and all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class BagPlayerNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("bag_player", **kwargs)
        bag = self.declare_parameter("bag", "").value
        topics = list(self.declare_parameter("topics", [""]).value)
        self.rate = self.declare_parameter("rate", 1.0).value
        self.restamp = self.declare_parameter("restamp", True).value
        self.loop = self.declare_parameter("loop", False).value
        self.start_delay = self.declare_parameter("start_delay_s", 1.0).value
        check_parameters(self)
        if not bag:
            raise ValueError("parameter 'bag' is required (a rosbag2 directory)")
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0; got {self.rate}")
        self.bag = BagReader(bag).__enter__()
        try:
            self.topics = self._select_topics([t for t in topics if t])
        except BagError:
            self.bag.__exit__(None, None, None)
            raise
        self.pubs = {}
        self.header = {}
        for topic in self.topics:
            msgtype = self.bag.topics[topic].msgtype
            try:
                msg_class = get_message(msgtype)
            except (AttributeError, ModuleNotFoundError, ValueError) as exc:
                raise ValueError(f"cannot publish {topic}: message type {msgtype} is not installed ({exc})") from None
            self.pubs[topic] = self.create_publisher(msg_class, topic, publisher_qos(self.bag.offered_qos(topic)))
            self.header[topic] = self.bag.has_header(msgtype)
        self.published = 0
        self.error: str | None = None
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="player", daemon=True)
        self._thread.start()
        self.create_timer(0.2, self._check_finished)
        duration = (self.bag.end_ns - self.bag.start_ns) * 1e-9
        self.get_logger().info(f"playing {self.bag.path} ({duration:.1f} s) at rate {self.rate}: {self.topics}"
                               + (", restamped to now" if self.restamp else ""))

    def _select_topics(self, requested: list[str]) -> list[str]:
        """``requested``, or else all of the bag's topics that hold messages (a recorder lists idle ones too);
        a bag with nothing to play is an error, not a run that succeeds at once."""
        if requested:
            self.bag.require(requested)  # each one present and holding messages
            return requested
        have = self.bag.topics
        playable = sorted(t for t, info in have.items() if info.count)
        if not playable:
            raise BagError(f"{self.bag.path}: no messages to play (topics: {sorted(have) or 'none'})")
        if len(playable) < len(have):
            self.get_logger().info(f"topics without messages, not played: {sorted(set(have) - set(playable))}")
        return playable

    def _play(self) -> None:
        try:
            self._stop.wait(self.start_delay)  # let subscribers discover the publishers
            while not self._stop.is_set():
                self._play_once()
                if not self.loop:
                    break
        except BagError as exc:  # a damaged bag: the messages up to here were played
            self.error = str(exc)
            self.get_logger().error(self.error)
        finally:
            self.finished.set()

    def _play_once(self) -> None:
        start_wall = time.monotonic()
        origin = self.bag.start_ns
        offset = self.get_clock().now().nanoseconds - origin
        for m in self.bag.messages(self.topics, raw=True):
            delay = start_wall + (m.log_time_ns - origin) * 1e-9 / self.rate - time.monotonic()
            if (self._stop.wait(delay) if delay > 0 else self._stop.is_set()) or not rclpy.ok(context=self.context):
                return  # checked for every message: a player behind schedule never waits
            data = bytes(m.msg)
            if self.restamp and self.header[m.topic]:
                data = shift_header_stamp(data, offset, self.rate, origin)
            self.pubs[m.topic].publish(data)
            self.published += 1

    def _check_finished(self) -> None:
        if self.finished.is_set():
            self.get_logger().info(f"done: {self.published} messages published")
            raise SystemExit(1 if self.error else 0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self._thread.is_alive():  # still inside a read: the bag is closed with the process, not under it
            self.get_logger().warning("the player thread did not stop within 2 s; the bag stays open")
            return
        self.bag.__exit__(None, None, None)


def main(args: list[str] | None = None) -> None:
    try:
        run_node(BagPlayerNode, args, BagPlayerNode.close)
    except (BagError, ValueError) as exc:  # bad bag or parameters: a message, not a traceback
        print(f"bag_player: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
