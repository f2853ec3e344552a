"""rosbag2 reading and writing without ROS: round trip, bad bags, a killed recording and its recovery."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import CELL_TOPICS, REPO, agent_xy, write_cell_bag
from dp_core.bag_io import BagError, BagReader, BagWriter, main, recover_bag, shift_header_stamp, typestore_for
from dp_core.msg_fields import stamp_seconds

TS = typestore_for("kilted")


def _pose_bytes(t: float, x: float) -> bytes:
    T, H = TS.types["builtin_interfaces/msg/Time"], TS.types["std_msgs/msg/Header"]
    Pt, Q, Pose = TS.types["geometry_msgs/msg/Point"], TS.types["geometry_msgs/msg/Quaternion"], TS.types["geometry_msgs/msg/Pose"]
    ns = round(t * 1e9)
    msg = TS.types["geometry_msgs/msg/PoseStamped"](
        header=H(stamp=T(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="w"),
        pose=Pose(position=Pt(x=x, y=-x, z=0.0), orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0)))
    return bytes(TS.serialize_cdr(msg, "geometry_msgs/msg/PoseStamped"))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip(tmp_path: Path, storage: str) -> None:
    bag_path = write_cell_bag(tmp_path / "bag", storage=storage)
    with BagReader(bag_path) as bag:
        assert {t: i.count for t, i in bag.topics.items()} == CELL_TOPICS
        assert bag.topics["/camera_0/color/image_raw"].msgtype == "sensor_msgs/msg/Image"
        poses = list(bag.messages(["/robot/tcp_pose"]))
        assert [m.log_time_ns for m in poses] == sorted(m.log_time_ns for m in poses)
        m = poses[10]
        t = stamp_seconds(m.msg.header.stamp) - 1000.0
        assert t == pytest.approx(0.2) and m.log_time_ns * 1e-9 - 1000.0 == pytest.approx(0.202)
        assert (m.msg.pose.position.x, m.msg.pose.position.y) == pytest.approx(agent_xy(0.2))
        images = [m.msg for m in bag.messages(["/camera_0/color/image_raw"])]
        assert images[3].encoding == "rgb8" and np.all(np.asarray(images[3].data) == 3)


def test_humble_sqlite3_bag_without_message_definitions(tmp_path: Path) -> None:
    # Humble's rosbag2 writes sqlite3 bags (schema 3, metadata v5) with no message definitions in them.
    import sqlite3

    import yaml

    bag = write_cell_bag(tmp_path / "humble", seconds=1.0, storage="sqlite3")
    with sqlite3.connect(next(bag.glob("*.db3"))) as con:
        con.execute("DROP TABLE message_definitions")
        con.execute("UPDATE schema SET schema_version=3, ros_distro='humble'")
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    info = meta["rosbag2_bagfile_information"]
    info["version"], info["ros_distro"] = 5, "humble"
    for topic in info["topics_with_message_count"]:
        topic["topic_metadata"].pop("type_description_hash", None)
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    with BagReader(bag) as reader:
        counts = {t: i.count for t, i in reader.topics.items()}
        assert sum(1 for _ in reader.messages(counts)) == sum(counts.values()) > 0


def test_writer_round_trip_and_no_overwrite(tmp_path: Path) -> None:
    with BagWriter(tmp_path / "w", "kilted") as writer:
        writer.add_topic("/p", "geometry_msgs/msg/PoseStamped")
        for i in range(50):
            writer.write("/p", 10**9 + i * 10**7, _pose_bytes(1.0 + i * 0.01, float(i)))
        with pytest.raises(BagError, match="added twice"):
            writer.add_topic("/p", "geometry_msgs/msg/PoseStamped")
        with pytest.raises(BagError, match="unknown to rosbags"):
            writer.add_topic("/q", "my_msgs/msg/Nothing")
    with BagReader(tmp_path / "w") as bag:
        assert [m.msg.pose.position.x for m in bag.messages(["/p"])] == list(range(50))
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "w")


def test_shift_header_stamp_matches_deserialised(tmp_path: Path) -> None:
    data = _pose_bytes(1000.25, 1.0)
    shifted = shift_header_stamp(data, offset_ns=5 * 10**9 + 900_000_000)
    msg = TS.deserialize_cdr(shifted, "geometry_msgs/msg/PoseStamped")
    assert stamp_seconds(msg.header.stamp) == pytest.approx(1006.15) and msg.pose.position.x == 1.0
    scaled = TS.deserialize_cdr(shift_header_stamp(data, 0, scale=0.5, origin_ns=1000 * 10**9), "geometry_msgs/msg/PoseStamped")
    assert stamp_seconds(scaled.header.stamp) == pytest.approx(1000.5)  # 0.25 s after the origin at half speed
    with pytest.raises(BagError, match="not a CDR message"):
        shift_header_stamp(b"\x05\x05" + bytes(20), 1)


def _truncated_copy(src: Path, dst: Path, keep: int) -> Path:
    dst.mkdir()
    data = (src / f"{src.name}.mcap").read_bytes()
    (dst / f"{dst.name}.mcap").write_bytes(data[:keep])
    (dst / "metadata.yaml").write_text((src / "metadata.yaml").read_text().replace(f"{src.name}.mcap", f"{dst.name}.mcap"))
    return dst


def test_bad_bags_give_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write_cell_bag(tmp_path / "good")
    size = (good / "good.mcap").stat().st_size
    cases = {
        tmp_path / "missing": "bag not found",
        good / "good.mcap": "is a directory",
        _truncated_copy(good, tmp_path / "cut", size // 2): "truncated\\? recover .*dp-bag recover",
    }
    random_dir = _truncated_copy(good, tmp_path / "random", 0)
    (random_dir / "random.mcap").write_bytes(np.random.default_rng(0).bytes(5000))
    cases[random_dir] = "not a readable rosbag2 bag: File magic is invalid"
    no_meta = tmp_path / "no_meta"
    no_meta.mkdir()
    (no_meta / "x.txt").write_text("hello")
    cases[no_meta] = "no metadata.yaml and no storage files"
    killed_sqlite = tmp_path / "killed_sqlite"
    killed_sqlite.mkdir()
    (killed_sqlite / "killed_sqlite_0.db3").write_bytes(b"SQLite format 3\x00")
    cases[killed_sqlite] = r"sqlite3 recording was not closed .*ros2 bag reindex"
    for path, pattern in cases.items():
        with pytest.raises(BagError, match=pattern) as info:
            with BagReader(path) as bag:
                list(bag.messages(["/robot/tcp_pose"]))
        assert str(path) in str(info.value)
        assert main(["info", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("dp-bag: error: ") and "Traceback" not in err
    with BagReader(good) as bag:
        with pytest.raises(BagError, match=r"topics \['/nope'\] not in the bag; it has: /camera_0"):
            list(bag.messages(["/nope"]))
        with pytest.raises(BagError, match="has type geometry_msgs/msg/PoseStamped, expected one of"):
            bag.require(["/robot/tcp_pose"], {"/robot/tcp_pose": ["Image"]})


def test_cut_inside_a_chunk_fails_while_reading(tmp_path: Path) -> None:
    """A bag whose summary is intact but whose chunk data is damaged fails with a BagError, not a traceback."""
    good = write_cell_bag(tmp_path / "good")
    data = bytearray((good / "good.mcap").read_bytes())
    payload = data.index(b"world") - 16  # the first message's CDR data (frame_id follows its stamp)
    data[payload - 30 : payload - 22] = (2**40).to_bytes(8, "little")  # that record's length: far past the end
    (good / "good.mcap").write_bytes(bytes(data))
    with pytest.raises(BagError, match="good"):
        with BagReader(good) as bag:
            list(bag.messages(["/robot/tcp_pose", "/camera_0/color/image_raw"]))


KILLED_WRITER = """
import os, signal
from dp_core.bag_io import BagWriter
with open({messages!r}, "rb") as f:
    blob = f.read()
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
writer = BagWriter({path!r}, "kilted", flush_period_s=1e9)  # flush only when told
zero = QosTime(sec=0, nsec=0)
best_effort = Qos(history=QosHistory.KEEP_LAST, depth=5, reliability=QosReliability.BEST_EFFORT,
                  durability=QosDurability.VOLATILE, deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
                  liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)
writer.add_topic("/p", "geometry_msgs/msg/PoseStamped", [best_effort])
size = len(blob) // 300
for i in range(300):
    writer.write("/p", 10**9 + i * 10**7, blob[i * size : (i + 1) * size])
    if i in (99, 199):
        writer.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_recording_is_refused_then_recovered_up_to_the_last_flush(tmp_path: Path) -> None:
    bag = tmp_path / "killed"
    messages = [_pose_bytes(1.0 + i * 0.01, float(i)) for i in range(300)]
    assert len({len(m) for m in messages}) == 1
    (tmp_path / "messages.bin").write_bytes(b"".join(messages))
    code = textwrap.dedent(KILLED_WRITER.format(messages=str(tmp_path / "messages.bin"), path=str(bag)))
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(REPO / "src"), "PATH": ""},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert not (bag / "metadata.yaml").exists()
    with pytest.raises(BagError, match="not closed .*dp-bag recover"):
        BagReader(bag)
    report = recover_bag(bag)
    assert report.output == tmp_path / "killed_recovered" and report.counts == {"/p": 200}
    assert report.problems == []  # the file ends after the second flushed chunk: nothing cut
    with BagReader(report.output) as out:
        assert [m.msg.pose.position.x for m in out.messages(["/p"])] == list(range(200))
        assert out.topics["/p"].msgtype == "geometry_msgs/msg/PoseStamped"
        assert [q.reliability.name for q in out.offered_qos("/p")] == ["BEST_EFFORT"]  # the publisher's QoS survives
    with pytest.raises(BagError, match="exists already"):
        recover_bag(bag)
    # cut the file inside the second chunk (a crash during a write): the first chunk is kept
    data = (bag / "killed.mcap").read_bytes()
    (bag / "killed.mcap").write_bytes(data[: int(len(data) * 0.75)])
    report = recover_bag(bag, tmp_path / "again")
    assert report.counts == {"/p": 100}
    assert len(report.problems) == 1 and "truncated record" in report.problems[0]


def test_recover_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "junk.mcap").write_bytes(b"\x89MCAP0\r\n" + np.random.default_rng(1).bytes(300))
    with pytest.raises(BagError, match="no intact messages"):
        recover_bag(junk)
    assert not (tmp_path / "junk_recovered").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["recover", str(empty)]) == 1
    assert "no .mcap files" in capsys.readouterr().err
