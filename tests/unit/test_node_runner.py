"""run_node: a failure while rclpy shuts down (SIGINT) ends quietly; any other failure is raised."""

from __future__ import annotations

import re
import threading

import pytest
from conftest import unique_domain_id

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402

from dp_bringup.node_runner import check_parameters, run_node  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(unique_domain_id(request)))


class _Failing(Node):
    """Fails in a callback; with ``shutdown_after`` the default context is shut down that much later from
    another thread, as rclpy's SIGINT handler does while the spinning thread trips over a message."""

    def __init__(self, shutdown_after: float | None) -> None:
        super().__init__("failing")
        self.cleaned = False
        self.shutdown_after = shutdown_after
        self.create_timer(0.01, self._fail)

    def _fail(self) -> None:
        if self.shutdown_after is not None:
            threading.Timer(self.shutdown_after, rclpy.try_shutdown).start()
        raise RuntimeError("Unable to convert call argument '0' to Python object")


def test_failure_during_shutdown_ends_quietly() -> None:
    nodes: list[_Failing] = []

    def factory() -> _Failing:
        nodes.append(_Failing(shutdown_after=0.2))
        return nodes[-1]

    run_node(factory, [], cleanup=lambda n: setattr(n, "cleaned", True))
    assert nodes[0].cleaned and not rclpy.ok()


def test_failure_without_shutdown_is_raised() -> None:
    nodes: list[_Failing] = []

    def factory() -> _Failing:
        nodes.append(_Failing(shutdown_after=None))
        return nodes[-1]

    with pytest.raises(RuntimeError, match="convert call argument"):
        run_node(factory, [], cleanup=lambda n: setattr(n, "cleaned", True))
    assert nodes[0].cleaned and not rclpy.ok()  # cleaned up and shut down all the same


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
