"""What every dp_bringup node's ``main`` does: init, spin, always clean up; and diagnostics."""

from __future__ import annotations

import difflib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.publisher import Publisher

N = TypeVar("N", bound=Node)


def run_node(factory: Callable[[], N], args: list[str] | None = None, cleanup: Callable[[N], None] | None = None) -> None:
    """Build the node and spin it until Ctrl-C or shutdown; ``cleanup`` runs in every case. A node ends itself
    by raising ``SystemExit(code)``; a non-zero code becomes the process's exit status after the cleanup.
    A constructor that refuses its parameters (``ValueError``) ends the process with its message, status 1."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")  # dp_core's logs
    rclpy.init(args=args)
    node = None
    exit_code = None
    try:
        try:
            node = factory()
        except ValueError as exc:  # bad parameters (ConfigError, DatasetError too): the message, not a traceback
            print(f"{os.path.basename(sys.argv[0]) or 'node'}: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        rclpy.spin(node)
    except SystemExit as exc:
        exit_code = exc.code
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if not _shutdown_follows():  # a real failure; not rclpy tripping over a message while SIGINT tears it down
            raise
    finally:
        if node is not None:
            if cleanup is not None:
                cleanup(node)
            node.destroy_node()
        rclpy.try_shutdown()
    if exit_code:
        raise SystemExit(exit_code)


def check_parameters(node: Node) -> None:
    """Raise ``ValueError`` naming every parameter given to ``node`` (parameter file, ``-p``, launch) that it
    does not declare: rclpy ignores those silently, so a misspelt safety limit would leave the default in force.
    Nodes call it right after their declarations, before they open a file, a connection or a model."""
    given = node._parameter_overrides  # rclpy keeps them here; there is no public accessor
    declared = set(node._parameters)
    unknown = sorted(name for name in given if name not in declared and not name.startswith("qos_overrides."))
    if unknown:
        hints = [f"'{name}'" + (f" (did you mean '{close[0]}'?)" if (close := difflib.get_close_matches(name, declared, 1)) else "")
                 for name in unknown]
        raise ValueError(f"node '{node.get_name()}': unknown parameters {', '.join(hints)}; it declares {sorted(declared)}")


def _shutdown_follows(wait_s: float = 1.0) -> bool:
    """Whether rclpy is shutting down, or does within ``wait_s``: its SIGINT handler shuts the context down
    from another thread, so a take that fails in the spinning thread can come first (seen in the container)."""
    deadline = time.monotonic() + wait_s
    while rclpy.ok():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def diagnostic_status(name: str, level: bytes, message: str, values: Mapping[str, object], hardware_id: str = "") -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def publish_diagnostics(node: Node, publisher: Publisher, statuses: list[DiagnosticStatus]) -> None:
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(msg)
