"""run_node: SIGINT/SIGTERM stop the spin between callbacks, failures are raised after the cleanup, exit codes and
parameter errors reach the process."""

from __future__ import annotations

import os
import re
import signal

import pytest
from conftest import unique_domain_id

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402

from dp_bringup.node_runner import check_parameters, run_node  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """Own domain; and the pytest process's signal handlers back afterwards (run_node leaves SIGINT ignored
    after a signal, which every later subprocess would inherit)."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(unique_domain_id(request)))
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


class _Failing(Node):
    def __init__(self) -> None:
        super().__init__("failing")
        self.create_timer(0.01, self._fail)

    def _fail(self) -> None:
        raise RuntimeError("Unable to convert call argument '0' to Python object")


def test_a_failing_callback_is_raised_after_the_cleanup() -> None:
    nodes: list[_Failing] = []
    cleaned: list[Node] = []

    def factory() -> _Failing:
        nodes.append(_Failing())
        return nodes[-1]

    with pytest.raises(RuntimeError, match="convert call argument"):
        run_node(factory, [], cleanup=cleaned.append)
    assert cleaned == nodes and not rclpy.ok()  # cleaned up and shut down all the same


class _Signalled(Node):
    """Sends its own process ``signals`` from a timer callback and records how far the callback got."""

    def __init__(self, signals: list[int]) -> None:
        super().__init__("signalled")
        self.signals = signals
        self.sent = 0
        self.ticks = 0
        self.create_timer(0.01, self._tick)

    def _tick(self) -> None:
        self.ticks += 1
        for sig in self.signals[self.sent:]:
            os.kill(os.getpid(), sig)
            self.sent += 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_spin_without_interrupting_a_callback(sig: int) -> None:
    """The handler runs inside the callback (main thread) and only asks the loop to stop: the callback
    finishes, the cleanup runs, nothing is raised. Afterwards SIGINT is ignored (the process is ending, and
    the launch's copy of the user's Ctrl-C must not kill it while the interpreter finalizes) and SIGTERM has
    its default action (launch's escalation ends an exit that hangs)."""
    nodes: list[_Signalled] = []
    cleaned: list[Node] = []

    def factory() -> _Signalled:
        nodes.append(_Signalled([sig]))
        return nodes[-1]

    run_node(factory, [], cleanup=cleaned.append)
    assert nodes[0].sent == 1 and nodes[0].ticks == 1  # the callback ran to its end; no second tick
    assert cleaned == nodes and not rclpy.ok()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_previous_handlers_come_back_without_a_signal() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit):
        run_node(lambda: _Ending(1), [])
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("signals, sent", [
    ([signal.SIGINT, signal.SIGINT], 2),  # terminal + launch copy of one Ctrl-C: one request
    ([signal.SIGINT, signal.SIGINT, signal.SIGINT], 2),  # a third SIGINT interrupts
    ([signal.SIGINT, signal.SIGTERM], 1),  # launch's escalation (or kill) interrupts
    ([signal.SIGTERM, signal.SIGTERM], 1),
])
def test_a_repeated_sigint_is_one_request_and_insisting_interrupts(signals: list[int], sent: int) -> None:
    """An interrupting signal raises KeyboardInterrupt where the main thread is (here: inside the callback,
    before the count went up); the cleanup still runs and run_node returns."""
    nodes: list[_Signalled] = []
    cleaned: list[Node] = []

    def factory() -> _Signalled:
        nodes.append(_Signalled(signals))
        return nodes[-1]

    run_node(factory, [], cleanup=cleaned.append)
    assert nodes[0].sent == sent
    assert cleaned == nodes and not rclpy.ok()


class _Declaring(Node):
    def __init__(self) -> None:
        super().__init__("declaring")
        self.declare_parameter("max_obs_age_s", 0.25)
        self.declare_parameter("warm_start", True)
        check_parameters(self)


def test_unknown_parameters_stop_the_node_with_their_names(tmp_path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("declaring:\n  ros__parameters:\n    max_obs_age: 0.05\n    warm_start: false\n")
    nodes: list[_Declaring] = []

    def factory() -> _Declaring:
        nodes.append(_Declaring())
        return nodes[-1]

    with pytest.raises(SystemExit) as exc:
        run_node(factory, ["--ros-args", "--params-file", str(params)])
    assert exc.value.code == 1 and not nodes  # the constructor stopped before it returned a node
    err = capsys.readouterr().err
    assert re.search(r"error: node 'declaring': unknown parameters 'max_obs_age' \(did you mean 'max_obs_age_s'\?\)", err)
    assert "Traceback" not in err


class _Ending(Node):
    def __init__(self, code: int) -> None:
        super().__init__("ending")
        self.cleaned = False
        self.create_timer(0.01, lambda: (_ for _ in ()).throw(SystemExit(code)))


@pytest.mark.parametrize("code", [0, 1])
def test_a_node_ending_itself_gives_its_exit_status(code: int) -> None:
    nodes: list[_Ending] = []

    def factory() -> _Ending:
        nodes.append(_Ending(code))
        return nodes[-1]

    if code:
        with pytest.raises(SystemExit) as exc:
            run_node(factory, [], cleanup=lambda n: setattr(n, "cleaned", True))
        assert exc.value.code == code
    else:
        run_node(factory, [], cleanup=lambda n: setattr(n, "cleaned", True))
    assert nodes[0].cleaned and not rclpy.ok()


def test_nodes_check_their_parameters_before_any_effect(tmp_path) -> None:
    """The bag recorder creates no bag and the UR driver opens no connection when a parameter is misspelt."""
    from rclpy.parameter import Parameter

    from dp_bringup.nodes.bag_recorder_node import BagRecorderNode
    from dp_bringup.nodes.ur_driver_node import URDriverNode

    rclpy.init()
    try:
        bag = tmp_path / "bag"
        with pytest.raises(ValueError, match=r"'flush_period' \(did you mean 'flush_period_s'\?\)"):
            BagRecorderNode(parameter_overrides=[Parameter("output", value=str(bag)), Parameter("flush_period", value=0.1)])
        assert not bag.exists()
        connections: list[str] = []

        def connect(ip: str, frequency: float) -> None:
            connections.append(ip)
            raise ConnectionError("the test connects to no robot")

        with pytest.raises(ValueError, match=r"'max_sped' \(did you mean 'max_speed'\?\)"):
            URDriverNode(control_factory=connect, receive_factory=connect,
                         parameter_overrides=[Parameter("robot_ip", value="10.0.0.9"), Parameter("max_sped", value=9.0)])
        assert connections == []
    finally:
        rclpy.try_shutdown()


HUNG_TEARDOWN = """
import os, signal, sys, time
sys.path.insert(0, {src!r})
from rclpy.node import Node
from dp_bringup import node_runner
node_runner.TEARDOWN_TIMEOUT_S = 1.0

class Hung(Node):
    def __init__(self):
        super().__init__("hung_teardown")
        self.create_timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT))

    def destroy_node(self):
        print("cleanup done, teardown hangs", flush=True)
        time.sleep(60)  # as Fast DDS's destroy_participant deadlock (there with the GIL held)

node_runner.run_node(Hung, [])
"""


def test_a_hung_teardown_ends_the_process_after_the_timeout(request: pytest.FixtureRequest) -> None:
    """Fast DDS can deadlock while the node's participant is destroyed (the main thread holding the GIL, so no
    Python handler runs): the teardown has a deadline, after which the process prints its stacks and exits 1."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "ROS_DOMAIN_ID": str(unique_domain_id(request)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HUNG_TEARDOWN.format(src=src)], capture_output=True, text=True,
                          timeout=30, env=env)
    assert proc.returncode == 1 and time.monotonic() - start < 20
    assert "cleanup done, teardown hangs" in proc.stdout
    assert "Timeout" in proc.stderr and "destroy_node" in proc.stderr  # the stacks say where it hung
