"""rosbag2 bags without ROS: read decoded messages (MCAP or sqlite3), write MCAP, recover a killed recording.

Built on the ``rosbags`` library (pure Python, no ROS install needed), so conversion and offline replay
run anywhere the core runs. Bags are rosbag2 directories (``metadata.yaml`` plus storage files), as
``ros2 bag record`` writes them; our recorder writes version 9 with MCAP storage.

What a kill does to a recording: :class:`BagWriter` keeps the current MCAP chunk in memory and writes
it out, synced to the disk, every ``flush_period_s`` (and at 1 MiB, unsynced). ``close`` writes the MCAP summary and footer and then
``metadata.yaml``. A recorder killed without closing (SIGKILL, power loss) leaves an MCAP file without
footer and no ``metadata.yaml``: :class:`BagReader` refuses it with a message saying so, and
:func:`recover_bag` (``dp-bag recover``) writes a new, complete bag from every intact record, losing
only the chunk that was still in memory (at most ``flush_period_s`` of data). The same recovery reads
unfinished MCAP files of ``ros2 bag record``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import Qos
from rosbags.rosbag2 import ReaderError, Writer, WriterError
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.rosbag2.storage_mcap import decompress, get_qos
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore

MCAP_MAGIC = b"\x89MCAP0\r\n"
_RECOVER_HINT = "recover what it holds with `dp-bag recover {path}`"


class BagError(RuntimeError):
    """A bag is missing, unreadable, truncated or lacks what was asked of it; names the bag."""


@dataclass(frozen=True)
class TopicInfo:
    topic: str
    msgtype: str  # full name, e.g. sensor_msgs/msg/Image
    count: int


@dataclass(frozen=True)
class BagMessage:
    topic: str
    log_time_ns: int  # when the recorder received it
    msgtype: str
    msg: Any  # rosbags' deserialised message (same field names as the ROS message)


def short_type(msgtype: str) -> str:
    """``sensor_msgs/msg/Image`` -> ``Image``."""
    return msgtype.rsplit("/", 1)[-1]


def _check_bag_dir(path: Path) -> None:
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    if not path.is_dir():
        raise BagError(f"{path}: a rosbag2 bag is a directory (with metadata.yaml and its storage files), not a file")
    if not (path / "metadata.yaml").is_file():
        storage = sorted(p.name for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
        if any(name.endswith(".mcap") for name in storage):
            raise BagError(f"{path}: no metadata.yaml: the recording was not closed (recorder killed?); "
                           + _RECOVER_HINT.format(path=path))
        if storage:
            raise BagError(f"{path}: no metadata.yaml beside {storage}: the sqlite3 recording was not closed "
                           f"(recorder killed?); `ros2 bag reindex {path}` rebuilds it")
        raise BagError(f"{path}: no metadata.yaml and no storage files: not a rosbag2 bag")


class BagReader:
    """Read a rosbag2 bag (MCAP or sqlite3 storage); message types come from the bag's own definitions.

    Use as a context manager. Every failure of the underlying reader, at open or while iterating,
    becomes a :class:`BagError` naming the bag.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _check_bag_dir(self.path)
        self._reader: AnyReader | None = None

    def __enter__(self) -> "BagReader":
        try:
            # Humble's sqlite3 bags hold no message definitions: those come from the typestore then.
            self._reader = AnyReader([self.path], default_typestore=typestore_for())
            self._reader.open()
        except (AnyReaderError, ReaderError, TypesysError, OSError, KeyError, ValueError, struct.error) as exc:
            self._reader = None
            raise BagError(f"{self.path}: not a readable rosbag2 bag: {exc}{self._hint(exc)}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _hint(self, exc: Exception) -> str:
        text = str(exc)
        if "magic" in text or "Truncated" in text or "footer" in text:
            return f" (truncated? {_RECOVER_HINT.format(path=self.path)})"
        return ""

    @property
    def reader(self) -> AnyReader:
        if self._reader is None:
            raise BagError(f"{self.path}: bag is not open (use BagReader as a context manager)")
        return self._reader

    @property
    def topics(self) -> dict[str, TopicInfo]:
        out: dict[str, TopicInfo] = {}
        for conn in self.reader.connections:
            prev = out.get(conn.topic)
            out[conn.topic] = TopicInfo(conn.topic, conn.msgtype, conn.msgcount + (prev.count if prev else 0))
        return out

    @property
    def start_ns(self) -> int:
        return self.reader.start_time

    @property
    def end_ns(self) -> int:
        return self.reader.end_time

    def require(self, topics: Iterable[str], types: dict[str, Sequence[str]] | None = None) -> None:
        """Raise :class:`BagError` unless every topic is in the bag (with a type among ``types[topic]``, short names)."""
        have = self.topics
        missing = [t for t in topics if t not in have]
        if missing:
            listing = ", ".join(f"{t} ({short_type(i.msgtype)}, {i.count})" for t, i in sorted(have.items())) or "none"
            raise BagError(f"{self.path}: topics {missing} not in the bag; it has: {listing}")
        for topic, allowed in (types or {}).items():
            if short_type(have[topic].msgtype) not in allowed:
                raise BagError(f"{self.path}: topic {topic} has type {have[topic].msgtype}, expected one of {list(allowed)}")
        empty = [t for t in topics if have[t].count == 0]
        if empty:
            raise BagError(f"{self.path}: topics {empty} have no messages")

    def has_messages(self, topic: str, type_name: str) -> bool:
        """Whether the bag holds messages on ``topic`` of type ``type_name`` (short name, e.g. ``DiagnosticArray``)."""
        info = self.topics.get(topic)
        return info is not None and info.count > 0 and short_type(info.msgtype) == type_name

    def messages(self, topics: Iterable[str], raw: bool = False) -> Iterator[BagMessage]:
        """Messages of ``topics`` in receive-time order, decoded (or as CDR bytes with ``raw``)."""
        topics = set(topics)
        self.require(topics)
        conns = [c for c in self.reader.connections if c.topic in topics]
        try:
            for conn, t_ns, data in self.reader.messages(connections=conns):
                yield BagMessage(conn.topic, t_ns, conn.msgtype, data if raw else self.reader.deserialize(data, conn.msgtype))
        except (AnyReaderError, ReaderError, SerdeError, OSError, KeyError, ValueError, struct.error) as exc:
            raise BagError(f"{self.path}: bag is corrupt or truncated while reading: {exc}{self._hint(exc)}") from None


    def has_header(self, msgtype: str) -> bool:
        """Whether ``msgtype``'s first field is a ``std_msgs/Header`` (so :func:`shift_header_stamp` applies)."""
        fields = self.reader.typestore.fielddefs[msgtype][1]
        return bool(fields) and fields[0][0] == "header" and fields[0][1][1] == "std_msgs/msg/Header"

    def offered_qos(self, topic: str) -> list[Qos]:
        """The QoS profiles the recorded publishers of ``topic`` offered (empty if not recorded)."""
        return [q for c in self.reader.connections if c.topic == topic for q in getattr(c.ext, "offered_qos_profiles", [])]


def shift_header_stamp(data: bytes, offset_ns: int, scale: float = 1.0, origin_ns: int = 0) -> bytes:
    """CDR bytes of a message whose first field is a Header, with its stamp moved to ``origin + (stamp - origin) / scale + offset``.

    Patches the 8 stamp bytes in place of deserialising: the stamp follows the 4-byte CDR encapsulation
    header (little- or big-endian as it says).
    """
    if len(data) < 12 or data[0] != 0 or data[1] not in (0, 1):
        raise BagError(f"not a CDR message with a header ({len(data)} bytes, encapsulation {bytes(data[:2]).hex()})")
    fmt = "<iI" if data[1] == 1 else ">iI"
    sec, nanosec = struct.unpack_from(fmt, data, 4)
    stamp = sec * 1_000_000_000 + nanosec
    stamp = origin_ns + round((stamp - origin_ns) / scale) + offset_ns
    out = bytearray(data)
    struct.pack_into(fmt, out, 4, stamp // 1_000_000_000, stamp % 1_000_000_000)
    return bytes(out)


def typestore_for(distro: str | None = None):
    """rosbags' typestore for a ROS 2 distribution name (``$ROS_DISTRO``); the newest for unknown names."""
    name = (distro or os.environ.get("ROS_DISTRO") or "").lower()
    store = getattr(Stores, f"ROS2_{name.upper()}", None) if name else None
    return get_typestore(store or Stores.LATEST)


class BagWriter:
    """Writes a rosbag2 bag (version 9, MCAP storage) from serialised CDR messages.

    ``flush_period_s``: completed data goes to disk at least this often (see the module docstring for
    what a kill loses). Message definitions come from rosbags' typestore of ``distro``.
    """

    def __init__(self, path: str | Path, distro: str | None = None, flush_period_s: float = 1.0) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; a bag is never overwritten")
        self.typestore = typestore_for(distro)
        self.flush_period_s = flush_period_s
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        try:
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(f"{self.path}: cannot create the bag: {exc}") from None
        self._connections: dict[str, Any] = {}
        self._last_flush = time.monotonic()
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] = ()) -> None:
        """Register ``topic`` with its full message type name, e.g. ``geometry_msgs/msg/PoseStamped``."""
        if topic in self._connections:
            raise BagError(f"{self.path}: topic {topic} added twice")
        if msgtype not in self.typestore.fielddefs:
            raise BagError(f"{self.path}: message type {msgtype} of {topic} is unknown to rosbags' typestore")
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.typestore,
                                                               offered_qos_profiles=list(qos))
        self.counts[topic] = 0

    def has_topic(self, topic: str) -> bool:
        return topic in self._connections

    def write(self, topic: str, t_ns: int, data: bytes) -> None:
        """One serialised message received at ``t_ns``; flushes when ``flush_period_s`` has passed."""
        if topic not in self._connections:
            raise BagError(f"{self.path}: topic {topic} was not added")
        self._writer.write(self._connections[topic], t_ns, data)
        self.counts[topic] += 1
        if time.monotonic() - self._last_flush >= self.flush_period_s:
            self.flush()

    def flush(self) -> None:
        """Write the chunk held in memory to the disk (relies on rosbags 0.11's MCAP writer)."""
        storage = self._writer.storage
        if storage is not None and storage.chunk.msgs:
            storage.close_chunk()
            storage.bio.flush()
            os.fsync(storage.bio.fileno())  # survives a power loss too, not only a killed process
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write the MCAP summary, footer and metadata.yaml: the bag is complete."""
        if self._writer.storage is not None:
            self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- recovery of unclosed MCAP files ------------------------------------------------------------------------

@dataclass
class RecoveryReport:
    output: Path
    messages: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why reading a file stopped early


class _Truncated(Exception):
    pass


def _read(bio: BinaryIO, size: int) -> bytes:
    data = bio.read(size)
    if len(data) != size:
        raise _Truncated(f"truncated record at offset {bio.tell() - len(data)}")
    return data


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return bytes(buf[pos + 4 : pos + 4 + n]).decode(), pos + 4 + n


def _records(bio: BinaryIO, size: int) -> Iterator[tuple[int, bytes]]:
    """``(opcode, content)`` of each complete record up to ``size`` bytes; raises _Truncated on a cut record."""
    while True:
        head = bio.read(9)
        if not head:
            return
        if len(head) < 9:
            raise _Truncated(f"truncated record header at offset {bio.tell() - len(head)}")
        op, length = head[0], struct.unpack("<Q", head[1:])[0]
        if length > size - bio.tell():
            raise _Truncated(f"truncated record at offset {bio.tell() - 9}: {length} bytes claimed, "
                             f"{size - bio.tell()} left")
        yield op, _read(bio, length)


class _Salvager:
    """Copies the schemas, channels and messages of MCAP records into a :class:`Writer`."""

    def __init__(self, writer: Writer, report: RecoveryReport) -> None:
        self.writer, self.report = writer, report
        self.schemas: dict[int, tuple[str, str, str]] = {}  # id -> (name, encoding, definition)
        self.channels: dict[int, Any] = {}  # mcap channel id -> writer connection
        self.topics_by_key: dict[tuple[str, str], Any] = {}

    def record(self, op: int, content: bytes) -> None:
        buf = memoryview(content)
        if op == 0x03:  # schema
            (sid,) = struct.unpack_from("<H", buf, 0)
            name, pos = _string(buf, 2)
            encoding, pos = _string(buf, pos)
            (n,) = struct.unpack_from("<I", buf, pos)
            self.schemas[sid] = (name, encoding, bytes(buf[pos + 4 : pos + 4 + n]).decode())
        elif op == 0x04:  # channel
            cid, sid = struct.unpack_from("<HH", buf, 0)
            topic, pos = _string(buf, 4)
            encoding, pos = _string(buf, pos)
            if cid not in self.channels and sid in self.schemas:
                (n,) = struct.unpack_from("<I", buf, pos)  # the metadata map: its byte length, then its entries
                self.channels[cid] = self._connection(topic, encoding, self.schemas[sid], bytes(buf[pos + 4 : pos + 4 + n]))
        elif op == 0x05:  # message
            cid, _seq, log_time = struct.unpack_from("<HIQ", buf, 0)
            conn = self.channels.get(cid)
            if conn is not None:
                self.writer.write(conn, log_time, bytes(buf[22:]))
                self.report.messages += 1
                self.report.counts[conn.topic] = self.report.counts.get(conn.topic, 0) + 1
        elif op == 0x06:  # chunk: decompress (checks its CRC) and copy the records inside
            start, end, size, crc = struct.unpack_from("<QQQI", buf, 0)
            compression, pos = _string(buf, 28)
            (n,) = struct.unpack_from("<Q", buf, pos)
            try:
                inner = decompress(bytes(buf[pos + 8 : pos + 8 + n]), compression, size, crc)
            except (ReaderError, ValueError, RuntimeError) as exc:
                raise _Truncated(f"corrupt chunk ({exc})") from None
            sub = _BytesReader(inner)
            for sub_op, sub_content in _records(sub, len(inner)):
                self.record(sub_op, sub_content)

    def _connection(self, topic: str, encoding: str, schema: tuple[str, str, str], metadata: bytes):
        name, schema_encoding, definition = schema
        key = (topic, name)
        if key in self.topics_by_key:
            return self.topics_by_key[key]
        store = get_typestore(Stores.EMPTY)
        try:
            types = get_types_from_msg(definition, name) if schema_encoding == "ros2msg" else get_types_from_idl(definition)
            store.register(types)
            rihs01 = store.hash_rihs01(name)
        except TypesysError as exc:
            raise BagError(f"message definition of {name} ({topic}) is unreadable: {exc}") from None
        try:
            qos = get_qos(metadata)
        except Exception:  # QoS metadata is informative only
            qos = []
        conn = self.writer.add_connection(topic, name, msgdef=definition, rihs01=rihs01,
                                          serialization_format=encoding, offered_qos_profiles=qos)
        self.topics_by_key[key] = conn
        return conn


class _BytesReader:
    """A minimal binary reader over bytes (``read`` only), for records inside a chunk."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def tell(self) -> int:
        return self.pos


def recover_bag(src: str | Path, dst: str | Path | None = None) -> RecoveryReport:
    """Write a complete MCAP bag at ``dst`` from every intact record of the MCAP files in ``src``.

    ``src`` is left untouched. Reading a file stops at the first truncated or corrupt record (the
    problem is reported); everything before it is kept. ``dst`` defaults to ``<src>_recovered``.
    """
    src = Path(src)
    if not src.is_dir():
        raise BagError(f"{src}: not a bag directory")
    files = sorted(src.glob("*.mcap"))
    if not files:
        raise BagError(f"{src}: no .mcap files to recover (only MCAP storage can be recovered)")
    dst = Path(dst) if dst is not None else src.with_name(src.name + "_recovered")
    if dst.exists():
        raise BagError(f"{dst} exists already; choose another output")
    report = RecoveryReport(dst)
    writer = Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        salvager = _Salvager(writer, report)
        for path in files:
            report.files.append(path.name)
            salvager.schemas.clear()  # ids are per file; topics map onto the same output connection
            salvager.channels.clear()
            with open(path, "rb") as bio:
                if bio.read(8) != MCAP_MAGIC:
                    report.problems.append(f"{path.name}: not an MCAP file (bad magic); skipped")
                    continue
                try:
                    for op, content in _records(bio, path.stat().st_size):
                        if op == 0x02:  # footer: the file was complete
                            break
                        salvager.record(op, content)
                except (_Truncated, struct.error, UnicodeDecodeError) as exc:
                    report.problems.append(f"{path.name}: stopped at {exc}")
        if not report.messages:
            raise BagError(f"{src}: no intact messages to recover ({'; '.join(report.problems) or 'empty'})")
        writer.close()
    except BaseException:
        writer.abort()
        shutil.rmtree(dst, ignore_errors=True)  # ours, and incomplete
        raise
    return report


# --- CLI ------------------------------------------------------------------------------------------------------

def _info(path: str) -> None:
    with BagReader(path) as bag:
        duration = max(0, bag.end_ns - bag.start_ns) * 1e-9
        print(f"{bag.path}: {duration:.2f} s, {sum(t.count for t in bag.topics.values())} messages")
        for topic, info in sorted(bag.topics.items()):
            rate = info.count / duration if duration > 0 else 0.0
            print(f"  {topic:<40} {info.msgtype:<36} {info.count:>8}  {rate:7.1f} Hz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-bag", description="Inspect rosbag2 bags; recover a killed MCAP recording.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="topics, types, counts and rates").add_argument("bag")
    rec = sub.add_parser("recover", help="write a complete bag from an unclosed or truncated MCAP recording")
    rec.add_argument("bag")
    rec.add_argument("-o", "--output", default=None, help="new bag directory (default: <bag>_recovered)")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            _info(args.bag)
        else:
            report = recover_bag(args.bag, args.output)
            for problem in report.problems:
                print(f"note: {problem}")
            print(f"recovered {report.messages} messages into {report.output}: {report.counts}")
    except BagError as exc:
        print(f"dp-bag: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
