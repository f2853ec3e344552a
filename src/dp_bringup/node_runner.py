"""What every dp_bringup node's ``main`` does: init, spin, always clean up; and diagnostics."""

from __future__ import annotations

import difflib
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.signals import SignalHandlerOptions

N = TypeVar("N", bound=Node)


def run_node(factory: Callable[[], N], args: list[str] | None = None, cleanup: Callable[[N], None] | None = None) -> None:
    """Build the node and spin it until SIGINT, SIGTERM or shutdown; ``cleanup`` runs in every case. A node ends
    itself by raising ``SystemExit(code)``; a non-zero code becomes the process's exit status after the cleanup.
    A constructor that refuses its parameters (``ValueError``) ends the process with its message, status 1.

    The first SIGINT or SIGTERM only asks the spin loop to stop (see ``_StopSignals``): rclpy's own handlers
    raise ``KeyboardInterrupt`` wherever the main thread happens to be, e.g. half-way through the executor
    building a Task, whose ``__del__`` then prints a traceback at exit."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")  # dp_core's logs
    node = None
    exit_code = None
    with _StopSignals() as stop:  # from the start: loading a model takes seconds
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        try:
            try:
                node = factory()
            except ValueError as exc:  # bad parameters (ConfigError, DatasetError too): the message, not a traceback
                print(f"{os.path.basename(sys.argv[0]) or 'node'}: error: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            while rclpy.ok() and not stop.requested:
                executor.spin_once(timeout_sec=SIGNAL_POLL_S)
        except SystemExit as exc:
            exit_code = exc.code
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            if node is not None and cleanup is not None:
                cleanup(node)
            _teardown(node)
    if exit_code:
        raise SystemExit(exit_code)


SIGNAL_POLL_S = 0.1  # the spin loop sees a stop request this late at most
TEARDOWN_TIMEOUT_S = 3.0  # destroying the node and the context: normally well under 0.5 s; below launch's 5 s


def _teardown(node: Node | None) -> None:
    """Destroy the node and shut rclpy down, within ``TEARDOWN_TIMEOUT_S``.

    Destroying the DDS participant can deadlock inside Fast DDS: ``DomainParticipant::set_listener`` waits for a
    participant-listener callback that waits for the participant's mutex it holds (a remote reader removed at
    that moment; gdb stacks of a hung action executor, 1 in 25 Ctrl-C stops of the sim launch). The main thread
    then holds the GIL in C++, where no Python signal handler runs: launch's SIGTERM did nothing and SIGKILL
    came 15 s after the Ctrl-C. faulthandler's watchdog thread needs no GIL: past the timeout it prints every
    thread's stack to stderr and ends the process with status 1. The node's own cleanup has run by then."""
    try:  # onto the process's real stderr (a captured sys.stderr has no file descriptor)
        faulthandler.dump_traceback_later(TEARDOWN_TIMEOUT_S, exit=True, file=sys.__stderr__)
    except (OSError, ValueError, RuntimeError) as exc:  # no usable stderr: tear down without the deadline
        logging.getLogger(__name__).warning("no teardown deadline: %s", exc)
    try:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    finally:
        faulthandler.cancel_dump_traceback_later()


class _StopSignals:
    """While entered, the first SIGINT or SIGTERM sets ``requested``; nothing is raised in the interrupted code.
    One Ctrl-C in a terminal running ``ros2 launch`` reaches a node twice (from the terminal, and from launch
    when it shuts the nodes down), so the second SIGINT is the same request. A third SIGINT, or a SIGTERM
    after the first signal (launch escalates to it 5 s after its SIGINT; ``kill``), raises
    ``KeyboardInterrupt``: a node stuck in its cleanup still ends. On exit the previous handlers come back,
    unless a stop was requested: the process is ending then, cleaned up; SIGINT is ignored (the launch's copy
    can come this late, and Python restores the default handler while the interpreter finalizes: a node died
    by SIGINT, 'process has died' in the launch log, in 1 of 8 tries) and SIGTERM gets its default action, so
    launch's escalation ends an exit that hangs. Signal handlers can only be set from the main thread;
    elsewhere (a test spinning a node in a thread) this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    INTERRUPT_AFTER_SIGINTS = 3

    def __init__(self) -> None:
        self.requested = False
        self._sigints = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self._sigints += signum == signal.SIGINT
        if self.requested and (signum == signal.SIGTERM or self._sigints >= self.INTERRUPT_AFTER_SIGINTS):
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        if self.requested and self._previous:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler)


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


def diagnostic_status(name: str, level: bytes, message: str, values: Mapping[str, object], hardware_id: str = "") -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def publish_diagnostics(node: Node, publisher: Publisher, statuses: list[DiagnosticStatus]) -> None:
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(msg)
