"""Streaming Cartesian servo control of a UR arm over RTDE (ur_rtde), without ROS.

:class:`URServoController` owns an RTDE control and receive interface (built by injected factories, so
tests pass fakes) and a loop at ``frequency`` Hz whose body is :meth:`URServoController.tick`. Each tick:

1. reads the actual TCP pose and joints and hands them to ``on_state`` at ``state_rate`` Hz;
2. while servoing, evaluates the waypoint trajectory one servo period ahead (the pose ``servoL`` should
   reach by the end of the period), clamps it to the workspace box and to ``max_speed`` /
   ``max_rot_speed`` over the time since the last command (at most a period), and sends ``servoL``.
   Waypoints are clipped into the box when they arrive, so the trajectory never runs outside it.

Waypoints come from :meth:`URServoController.schedule_waypoint` with a target time on the controller's
clock (``time.monotonic`` unless injected). A ROS node converts a message stamp ``s`` received when ROS
time reads ``r`` and this clock reads ``m`` into ``m + (s - r)``, and a state stamp ``t`` back into
``r - (m - t)``.

Safety: servoing starts from the actual pose when the first waypoint arrives; if no waypoint arrives
within ``watchdog_s`` the controller calls ``servoStop`` once and sends nothing until the next waypoint,
which again starts from the actual pose. When RTDE reports a lost connection or a call raises, servoing
stops and a reconnect is tried every ``reconnect_period_s`` by the same loop; afterwards the controller
holds the actual pose (idle) until a new waypoint arrives.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .pose_interpolator import PoseTrajectoryInterpolator, as_pose
from .rotations import quat_angle, quat_slerp, quat_to_rotvec, rotvec_to_quat

log = logging.getLogger(__name__)

class RTDEControl(Protocol):
    """The part of ``rtde_control.RTDEControlInterface`` this controller uses."""

    def servoL(
        self, pose: list[float], speed: float, acceleration: float, time: float, lookahead_time: float, gain: float
    ) -> bool: ...
    def servoStop(self) -> bool: ...
    def stopScript(self) -> None: ...
    def isConnected(self) -> bool: ...
    def reconnect(self) -> bool: ...
    def disconnect(self) -> None: ...


class RTDEReceive(Protocol):
    """The part of ``rtde_receive.RTDEReceiveInterface`` this controller uses."""

    def getActualTCPPose(self) -> list[float]: ...
    def getActualQ(self) -> list[float]: ...
    def isConnected(self) -> bool: ...
    def reconnect(self) -> bool: ...
    def disconnect(self) -> None: ...


def rtde_control_factory(robot_ip: str, frequency: float) -> RTDEControl:
    """Connect a real ``RTDEControlInterface`` (uploads the control script)."""
    import rtde_control

    return rtde_control.RTDEControlInterface(robot_ip, frequency)


def rtde_receive_factory(robot_ip: str, frequency: float) -> RTDEReceive:
    """Connect a real ``RTDEReceiveInterface``."""
    import rtde_receive

    return rtde_receive.RTDEReceiveInterface(robot_ip, frequency)


@dataclass(frozen=True)
class ServoConfig:
    """Servo loop settings; speeds in m/s and rad/s, workspace in metres in the robot base frame."""

    robot_ip: str = "192.168.1.10"
    frequency: float = 125.0  # 125 on CB3, up to 500 on e-series
    lookahead_time: float = 0.1  # servoL smoothing, 0.03 .. 0.2 s
    gain: float = 300.0  # servoL proportional gain, 100 .. 2000
    max_speed: float = 0.25
    max_rot_speed: float = 1.0
    workspace_min: tuple[float, float, float] = (-math.inf, -math.inf, -math.inf)
    workspace_max: tuple[float, float, float] = (math.inf, math.inf, math.inf)
    watchdog_s: float = 0.5
    reconnect_period_s: float = 1.0
    state_rate: float = 125.0

    def __post_init__(self) -> None:
        checks = {
            "finite frequency > 0": 0 < self.frequency < math.inf,
            "0.03 <= lookahead_time <= 0.2": 0.03 <= self.lookahead_time <= 0.2,
            "100 <= gain <= 2000": 100 <= self.gain <= 2000,
            "finite max_speed > 0": 0 < self.max_speed < math.inf,
            "finite max_rot_speed > 0": 0 < self.max_rot_speed < math.inf,
            "workspace_min and workspace_max have 3 values": len(self.workspace_min) == len(self.workspace_max) == 3,
            "workspace_min <= workspace_max": all(a <= b for a, b in zip(self.workspace_min, self.workspace_max)),
            "finite watchdog_s > 0": 0 < self.watchdog_s < math.inf,
            "reconnect_period_s > 0": self.reconnect_period_s > 0,
            "state_rate > 0": self.state_rate > 0,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid ServoConfig: need {', '.join(failed)}")


class ServoState(enum.Enum):
    DISCONNECTED = "disconnected"
    IDLE = "idle"  # connected, not servoing: no waypoint yet, watchdog tripped, or just reconnected
    SERVOING = "servoing"


@dataclass(frozen=True)
class RobotState:
    stamp: float  # controller clock, seconds
    tcp_pose: np.ndarray  # (6,) [x, y, z, rx, ry, rz] in the base frame
    joint_positions: np.ndarray  # (6,) rad, base to wrist 3


@dataclass(frozen=True)
class ControllerStatus:
    state: ServoState
    watchdog_tripped: bool
    loop_rate_hz: float  # measured tick rate, 0 before two ticks
    connect_failures: int  # consecutive failed connection attempts
    last_error: str


class URServoController:
    """Cartesian servoing of a UR arm along timestamped waypoints; see the module docstring."""

    def __init__(
        self,
        config: ServoConfig,
        on_state: Callable[[RobotState], None] | None = None,
        control_factory: Callable[[str, float], RTDEControl] = rtde_control_factory,
        receive_factory: Callable[[str, float], RTDEReceive] = rtde_receive_factory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.period = 1.0 / config.frequency
        self._on_state = on_state
        self._control_factory = control_factory
        self._receive_factory = receive_factory
        self._clock = clock
        self._ws_min = np.asarray(config.workspace_min, dtype=np.float64)
        self._ws_max = np.asarray(config.workspace_max, dtype=np.float64)

        self._ctrl: RTDEControl | None = None
        self._recv: RTDEReceive | None = None
        self._lock = threading.Lock()  # guards the fields below, shared with schedule_waypoint
        self._state = ServoState.DISCONNECTED
        self._actual: np.ndarray | None = None
        self._traj: PoseTrajectoryInterpolator | None = None
        self._last_cmd: np.ndarray | None = None
        self._last_cmd_at: float | None = None  # controller time of the last servoL (None: none since idle)
        self._last_waypoint_at = -math.inf
        self._watchdog_tripped = False
        self._last_error = ""
        # touched by the loop thread only
        self._next_connect_at = -math.inf
        self._connect_failures = 0
        self._next_state_at = -math.inf
        self._last_tick: float | None = None
        self._tick_interval: float | None = None

        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- public API -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the servo loop thread (it connects, and reconnects, by itself)."""
        if self._thread is not None:
            raise RuntimeError("controller already started")
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="ur_servo", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, then always try servoStop, stopScript and disconnect (errors are logged)."""
        self._stop_event.set()
        try:
            if self._thread is not None:
                self._thread.join()
                self._thread = None
        finally:  # an interrupted join (a second Ctrl-C) still stops the arm
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._state = ServoState.DISCONNECTED
            self._traj = None
        ctrl, recv = self._ctrl, self._recv
        self._ctrl = self._recv = None
        if ctrl is not None:
            _best_effort(ctrl.servoStop, "servoStop")
            _best_effort(ctrl.stopScript, "stopScript")
            _best_effort(ctrl.disconnect, "control disconnect")
        if recv is not None:
            _best_effort(recv.disconnect, "receive disconnect")

    def schedule_waypoint(self, pose: np.ndarray | list[float], target_time: float) -> bool:
        """Reach ``pose`` ([x, y, z, rx, ry, rz]) at ``target_time`` (controller clock).

        Returns False (and drops the waypoint) while disconnected. Raises ValueError on a bad pose.
        """
        pose = as_pose(pose)
        now = self._clock()
        with self._lock:
            if self._state is ServoState.DISCONNECTED or self._actual is None:
                return False
            if self._state is ServoState.IDLE:
                self._traj = PoseTrajectoryInterpolator([now], [self._actual])
                self._last_cmd, self._last_cmd_at = self._actual.copy(), None
                self._state = ServoState.SERVOING
                self._watchdog_tripped = False
            assert self._traj is not None
            pose[:3] = np.clip(pose[:3], self._ws_min, self._ws_max)  # the trajectory itself stays in the box
            self._traj.schedule_waypoint(pose, target_time, now, self.config.max_speed)
            self._last_waypoint_at = now
        return True

    def status(self) -> ControllerStatus:
        with self._lock:
            state, tripped, error = self._state, self._watchdog_tripped, self._last_error
        interval = self._tick_interval
        return ControllerStatus(
            state=state,
            watchdog_tripped=tripped,
            loop_rate_hz=1.0 / interval if interval else 0.0,
            connect_failures=self._connect_failures,
            last_error=error,
        )

    def tick(self, now: float) -> None:
        """One loop iteration at controller time ``now`` (called by the loop thread, or by tests)."""
        if self._last_tick is not None:
            dt = now - self._last_tick
            self._tick_interval = dt if self._tick_interval is None else 0.95 * self._tick_interval + 0.05 * dt
        self._last_tick = now

        with self._lock:
            disconnected = self._state is ServoState.DISCONNECTED
        if disconnected:
            if now >= self._next_connect_at:
                self._connect(now)
            return
        try:
            self._step(now)
        except Exception as exc:  # any RTDE failure: stop servoing and reconnect
            self._lose_connection(now, f"{type(exc).__name__}: {exc}")

    # ---- loop internals ---------------------------------------------------------------------
    def _run(self) -> None:
        next_t = self._clock()
        while not self._stop_event.is_set():
            self.tick(self._clock())
            next_t += self.period
            delay = next_t - self._clock()
            if delay > 0:
                self._stop_event.wait(delay)
            elif delay < -self.period:  # overran by more than a period: resynchronise, don't catch up
                next_t = self._clock()

    def _step(self, now: float) -> None:
        ctrl, recv = self._ctrl, self._recv
        assert ctrl is not None and recv is not None
        if not (ctrl.isConnected() and recv.isConnected()):
            self._lose_connection(now, "RTDE connection lost")
            return
        actual = as_pose(recv.getActualTCPPose())
        joints = np.asarray(recv.getActualQ(), dtype=np.float64)
        with self._lock:
            self._actual = actual
        self._publish_state(now, actual, joints)

        with self._lock:
            if self._state is not ServoState.SERVOING:
                return
            tripped = now - self._last_waypoint_at > self.config.watchdog_s
            if tripped:
                self._state = ServoState.IDLE
                self._watchdog_tripped = True
                self._traj = None
            else:
                assert self._traj is not None
                # A late tick followed by an early one must not send two full steps within one period.
                since = self.period if self._last_cmd_at is None else min(max(now - self._last_cmd_at, 0.0), self.period)
                command = self._clamp(self._traj(now + self.period), since)
                self._last_cmd, self._last_cmd_at = command, now
        if tripped:
            log.warning("no waypoint for %.2f s: servoStop, holding until the next one", self.config.watchdog_s)
            ctrl.servoStop()
            return
        cfg = self.config
        if ctrl.servoL(command.tolist(), 0.0, 0.0, self.period, cfg.lookahead_time, cfg.gain) is False:
            raise RuntimeError("servoL was refused (control script not running?)")

    def _clamp(self, target: np.ndarray, dt: float) -> np.ndarray:
        """Clip the position to the workspace, then limit the step from the last command (sent ``dt`` ago)."""
        assert self._last_cmd is not None
        last = self._last_cmd
        pos = np.clip(target[:3], self._ws_min, self._ws_max)
        step = pos - last[:3]
        dist, max_dist = float(np.linalg.norm(step)), self.config.max_speed * dt
        if dist > max_dist:
            pos = last[:3] + step * (max_dist / dist)
        q_last, q = rotvec_to_quat(last[3:]), rotvec_to_quat(target[3:])
        angle, max_angle = quat_angle(q_last, q), self.config.max_rot_speed * dt
        if angle > max_angle:
            q = quat_slerp(q_last, q, max_angle / angle)
        return np.concatenate([pos, quat_to_rotvec(q)])

    def _publish_state(self, now: float, actual: np.ndarray, joints: np.ndarray) -> None:
        if self._on_state is None or now + 0.5 * self.period < self._next_state_at:
            return
        self._next_state_at += 1.0 / self.config.state_rate
        if self._next_state_at < now:
            self._next_state_at = now + 1.0 / self.config.state_rate
        try:
            self._on_state(RobotState(now, actual, joints))
        except Exception:
            log.exception("state callback failed")

    def _lose_connection(self, now: float, reason: str) -> None:
        log.error("UR connection lost (%s); reconnecting every %.1f s", reason, self.config.reconnect_period_s)
        with self._lock:
            self._state = ServoState.DISCONNECTED
            self._traj = None
            self._last_error = reason
        self._next_connect_at = now + self.config.reconnect_period_s
        ctrl = self._ctrl
        if ctrl is not None and _best_effort(ctrl.isConnected, "isConnected"):
            _best_effort(ctrl.servoStop, "servoStop")

    def _connect(self, now: float) -> None:
        cfg = self.config
        try:
            if self._ctrl is None:
                self._ctrl = self._control_factory(cfg.robot_ip, cfg.frequency)
            else:
                self._ctrl.reconnect()  # also re-uploads the control script
            if self._recv is None:
                self._recv = self._receive_factory(cfg.robot_ip, cfg.frequency)
            elif not self._recv.isConnected():
                self._recv.reconnect()
            if not (self._ctrl.isConnected() and self._recv.isConnected()):
                raise ConnectionError("still not connected")
            actual = as_pose(self._recv.getActualTCPPose())
        except Exception as exc:
            self._connect_failures += 1
            self._next_connect_at = now + cfg.reconnect_period_s
            with self._lock:
                self._last_error = f"connect to {cfg.robot_ip}: {type(exc).__name__}: {exc}"
            n = self._connect_failures
            level = logging.WARNING if n in (1, 10) or n % 100 == 0 else logging.DEBUG  # don't flood the log
            log.log(level, "cannot connect to the UR at %s (attempt %d): %s", cfg.robot_ip, n, exc)
            return
        self._connect_failures = 0
        with self._lock:
            self._state = ServoState.IDLE
            self._actual = actual
            self._watchdog_tripped = False
        log.info("connected to the UR at %s; holding %s until a waypoint arrives", cfg.robot_ip, np.round(actual, 4))


def _best_effort(fn: Callable[[], object], what: str) -> object:
    """Call ``fn``; log and swallow any exception (returns None then)."""
    try:
        return fn()
    except Exception as exc:
        log.warning("%s failed: %s", what, exc)
        return None
