"""SpaceMouse readings to a twist: deadzone, per-axis scaling, and button press detection.

The device reports six axes in [-1, 1] (x, y, z, roll, pitch, yaw in the ROS convention: x forward,
y left, z up). :class:`SpaceMouseMapping` removes a deadzone around rest (rescaling the remainder so
the output still reaches full scale), routes device axis ``axis_map[i]`` to twist component ``i`` (to
match the robot's or the screen's frame), multiplies it by ``scale[i]`` (units per second: m/s and
rad/s on a robot, pixels/s in the simulated Push-T cell; a negative scale flips it) and returns the
twist ``[vx, vy, vz, wx, wy, wz]``. :func:`open_spacemouse` wraps pyspacemouse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

AXES = ("x", "y", "z", "roll", "pitch", "yaw")


@dataclass
class SpaceMouseMapping:
    deadzone: float = 0.05  # fraction of full deflection treated as rest
    scale: list[float] = field(default_factory=lambda: [1.0] * 6)  # per twist component, units/s at full deflection
    axis_map: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])  # device axis of each component

    def __post_init__(self) -> None:
        if sorted(self.axis_map) != list(range(6)):
            raise ValueError(f"axis_map must be a permutation of 0..5; got {list(self.axis_map)}")
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1); got {self.deadzone}")
        if len(self.scale) != 6 or not all(np.isfinite(self.scale)):
            raise ValueError(f"scale needs 6 finite values ({', '.join(AXES)}); got {list(self.scale)}")

    def twist(self, axes: Sequence[float]) -> np.ndarray:
        """``[vx, vy, vz, wx, wy, wz]`` for six raw axis values (clipped to [-1, 1])."""
        a = np.clip(np.asarray(axes, dtype=float), -1.0, 1.0)
        if a.shape != (6,) or not np.all(np.isfinite(a)):
            raise ValueError(f"need 6 finite axis values ({', '.join(AXES)}); got {list(axes)}")
        magnitude = np.maximum(np.abs(a) - self.deadzone, 0.0) / (1.0 - self.deadzone)
        return (np.sign(a) * magnitude)[list(self.axis_map)] * np.asarray(self.scale, dtype=float)


class ButtonEdges:
    """Which buttons went from released to pressed since the previous reading."""

    def __init__(self) -> None:
        self._previous: list[int] = []

    def pressed(self, buttons: Sequence[int]) -> list[int]:
        current = [1 if b else 0 for b in buttons]
        previous = self._previous + [0] * (len(current) - len(self._previous))
        self._previous = current
        return [i for i, (now, before) in enumerate(zip(current, previous)) if now and not before]


def read_latest(device, max_reports: int = 64):
    """The device's state after every HID report waiting in the queue (pyspacemouse's ``read`` takes one per
    call): a device that reports faster than the caller polls would otherwise lag further and further
    behind, and a released stick could keep moving the robot. ``max_reports`` bounds one call (the
    kernel's hidraw queue holds 64)."""
    state = device.read()
    for _ in range(max_reports - 1):
        stamp = state.t
        state = device.read()
        if state.t == stamp:  # no new report
            break
    return state


class ReportWatch:
    """Axes of the latest reading, or rest once the device has sent no report for ``timeout_s``.

    A deflected SpaceMouse reports every 8-16 ms (it sends a few zero reports on release, then stops); a
    wireless one whose radio link drops, or a lost release report, leaves pyspacemouse holding the last
    deflection with no error, and it would go on driving the robot. Silence is judged by the reading's
    ``t`` (the time of its last report) not changing, on the caller's clock.
    """

    def __init__(self, timeout_s: float = 0.2) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0; got {timeout_s}")
        self.timeout_s = timeout_s
        self.lost = 0  # times a deflection was dropped for want of reports
        self._t: float | None = None
        self._changed = 0.0
        self._holding = False

    def axes(self, state, now: float) -> list[float]:
        """``[x, y, z, roll, pitch, yaw]`` of ``state``, zeros when its last report is older than ``timeout_s``."""
        if state.t != self._t:
            self._t, self._changed = state.t, now
        axes = [float(getattr(state, name)) for name in AXES]
        if now - self._changed <= self.timeout_s:
            self._holding = False
            return axes
        if any(axes) and not self._holding:
            self.lost += 1
        self._holding = True
        return [0.0] * len(AXES)


def open_spacemouse(device: str = ""):
    """Open the first (or the named) connected SpaceMouse with pyspacemouse in the ROS axis convention.

    Raises ``RuntimeError`` with what to check when pyspacemouse, the HID library or a device is missing.
    """
    try:
        import pyspacemouse
        from pyspacemouse.types import AxisConvention
    except ImportError as exc:
        raise RuntimeError(f"pyspacemouse is not installed ({exc}); pip install -r requirements/hw.txt") from exc
    try:
        connected = pyspacemouse.get_connected_devices()
    except Exception as exc:  # easyhid raises AttributeError/OSError when libhidapi is missing
        raise RuntimeError(f"cannot enumerate HID devices ({exc}); install libhidapi-hidraw0 "
                           "(scripts/setup.sh does as root)") from exc
    if not connected:
        raise RuntimeError("no SpaceMouse found: plug one in and give your user access to /dev/hidraw* "
                           "(a udev rule, see README 'Collecting demonstrations'), or teleoperate with "
                           "input:=topic")
    if device and device not in connected:
        raise RuntimeError(f"SpaceMouse {device!r} not connected; connected: {connected}")
    name = device or connected[0]
    try:
        return pyspacemouse.open(device=name, nonblocking=True, axis_convention=AxisConvention.ROS)
    except Exception as exc:
        raise RuntimeError(f"cannot open SpaceMouse {name!r} ({exc}); check /dev/hidraw* permissions") from exc
