"""Timing of the UR servo loop at the servo rate, against a stand-in RTDE interface, printed as JSON.

    python benchmarks/bench_servo_timing.py --rates 125 500 --seconds 10

Runs :class:`dp_core.drivers.ur_servo.URServoController` in its own thread exactly as the driver node
does, with RTDE replaced by an object that answers at once and records the host time of every
``servoL`` call, while another thread feeds waypoints at 10 Hz, as the action executor does. With a
real controller each servoL call blocks until the controller's next cycle; here it returns at once,
so this measures what the host contributes: the scheduling error of the loop (|interval between
consecutive servoL calls - period|, p50/p99/max), how many intervals ran more than half a period
late, and the cycles missed over the whole span (interval errors that do not cancel out). The CPU load
average is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

from dp_core.drivers.ur_servo import ServoConfig, URServoController

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/machine.py
from machine import code_version, cpu_model  # noqa: E402

HOME = [0.4, 0.0, 0.3, 0.0, 3.14159, 0.0]


class RecordingRTDE:
    """Answers the RTDE methods the controller uses and timestamps each servoL call."""

    def __init__(self) -> None:
        self.tcp = list(HOME)
        self.servo_times: list[float] = []

    def servoL(self, pose, speed, acceleration, time_, lookahead_time, gain) -> bool:  # noqa: N802 (RTDE's name)
        self.servo_times.append(time.monotonic())
        self.tcp = list(pose)
        return True

    def servoStop(self) -> bool:  # noqa: N802
        return True

    def stopScript(self) -> None:  # noqa: N802
        pass

    def isConnected(self) -> bool:  # noqa: N802
        return True

    def reconnect(self) -> bool:
        return True

    def disconnect(self) -> None:
        pass

    def getActualTCPPose(self) -> list[float]:  # noqa: N802
        return list(self.tcp)

    def getActualQ(self) -> list[float]:  # noqa: N802
        return [0.0] * 6


def measure(rate: float, seconds: float) -> dict:
    rtde = RecordingRTDE()
    controller = URServoController(
        ServoConfig(frequency=rate, state_rate=rate), control_factory=lambda ip, f: rtde,
        receive_factory=lambda ip, f: rtde,
    )
    controller.start()
    stop = threading.Event()

    def feed() -> None:  # a 4 cm circle, one waypoint every 0.1 s, each due 0.1 s ahead
        k = 0
        while not stop.is_set():
            angle = 2 * np.pi * k / 40
            pose = [HOME[0] + 0.04 * np.cos(angle), HOME[1] + 0.04 * np.sin(angle), *HOME[2:]]
            controller.schedule_waypoint(pose, time.monotonic() + 0.1)
            k += 1
            stop.wait(0.1)

    time.sleep(0.5)  # connect
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(seconds)
    stop.set()
    feeder.join()
    controller.stop()

    t = np.asarray(rtde.servo_times)
    period = 1.0 / rate
    err_ms = (np.diff(t) - period) * 1e3
    return {
        "rate_hz": rate,
        "servo_calls": int(t.size),
        "achieved_rate_hz": float((t.size - 1) / (t[-1] - t[0])) if t.size > 1 else 0.0,
        "interval_error_ms": {q: float(np.percentile(np.abs(err_ms), p)) for q, p in (("p50", 50), ("p99", 99))}
        | {"max": float(np.abs(err_ms).max())},
        "late_by_over_half_a_period": int(np.count_nonzero(err_ms > 0.5 * period * 1e3)),
        # periods in the measured span without a servoL call: interval errors that did not cancel out (the loop
        # restarts its schedule after an overrun, so a lateness against one fixed grid would blame every later call)
        "missed_cycles": int(round((t[-1] - t[0]) / period)) + 1 - int(t.size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[125.0, 500.0], help="servo rates (Hz)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per rate")
    args = parser.parse_args()
    rows = []
    for rate in args.rates:
        row = measure(rate, args.seconds)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps({"commit": code_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                      "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "loadavg": os.getloadavg(), "seconds_per_rate": args.seconds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
