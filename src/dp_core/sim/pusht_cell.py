"""Push-T as a real-time cell: physics at its own rate toward the latest commanded target.

The ROS node wraps this class; it is plain Python so that the episode logic is tested
without ROS. ``tick`` advances one physics step; ``run`` calls it in real time from a thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .pusht import PushTConfig, PushTEnv, pusht_score


@dataclass
class CellEpisode:
    index: int
    seed: int
    max_coverage: float
    duration_s: float
    success: bool


class PushTCell:
    """One Push-T episode after another, in real time.

    Episode ``k`` starts from seed ``seed + k`` and ends on success (coverage above the
    threshold) or after ``episode_s`` seconds (300 control steps at 10 Hz by default); with
    ``auto_reset`` false (data collection) only :meth:`reset` ends it. Until a target arrives,
    the agent holds its position. With ``start_on_command`` an episode's clock starts at the first
    target set after its reset, so a policy that is slow to come up (model loading on a busy
    machine) does not lose the first episode's time. After an automatic reset the cell ignores targets for
    ``reset_hold_s`` (:meth:`set_target` returns False): the commands still in flight then were planned
    for the previous episode's scene, and a policy replanning every Ta steps sends them for up to Ta
    steps; a hold longer than that (plus inference) lets the new episode start from its own plan.
    :meth:`reset` (an operator's reset, e.g. between demonstrations) does not hold.
    """

    def __init__(
        self,
        config: PushTConfig | None = None,
        seed: int = 100_000,
        episode_s: float = 30.0,
        on_episode_end: Callable[[CellEpisode], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        start_on_command: bool = False,
        auto_reset: bool = True,
        reset_hold_s: float = 0.0,
    ) -> None:
        if not reset_hold_s >= 0:
            raise ValueError(f"reset_hold_s must be >= 0; got {reset_hold_s}")
        self.env = PushTEnv(config)
        self.seed = seed
        self.episode_s = episode_s
        self.on_episode_end = on_episode_end
        self.clock = clock
        self.start_on_command = start_on_command
        self.auto_reset = auto_reset
        self.reset_hold_s = reset_hold_s
        self.results: list[CellEpisode] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_episode(self.clock(), hold=False)

    def _start_episode(self, now: float, hold: bool) -> None:
        self._episode_seed = self.seed + len(self.results)
        obs = self.env.reset(seed=self._episode_seed)
        self._target = obs["agent_pos"].astype(np.float64)
        self._episode_start: float | None = None if self.start_on_command else now
        self._commanded = False
        self._hold_until = now + self.reset_hold_s if hold else -math.inf
        self._coverage = self.env.coverage()
        self._max_coverage = 0.0  # the paper's score: the max over the states the policy's actions reach
        self._obs = obs

    @property
    def physics_dt(self) -> float:
        return 1.0 / self.env.config.physics_hz

    def set_target(self, xy: np.ndarray) -> bool:
        """Follow ``xy`` from now on; False (ignored) while the cell holds after an automatic reset."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1)[:2]
        if xy.shape != (2,) or not np.all(np.isfinite(xy)):
            raise ValueError(f"target must be 2 finite numbers, got {xy!r}")
        with self._lock:
            if self.clock() < self._hold_until:
                return False
            self._target = xy
            self._commanded = True
        return True

    def snapshot(self) -> tuple[dict[str, np.ndarray], float, int]:
        """(latest observation, coverage, episode index), consistent with each other."""
        with self._lock:
            return self._obs, self._coverage, len(self.results)

    def tick(self, now: float) -> CellEpisode | None:
        """Advance one physics step; returns the finished episode when one ends."""
        with self._lock:
            self.env.advance(self._target, 1)
            self._coverage = self.env.coverage()
            self._max_coverage = max(self._max_coverage, self._coverage)
            self._obs = self.env.observe()
            if self._episode_start is None:
                if not self._commanded:
                    return None
                self._episode_start = now
            success = self._coverage > self.env.config.success_threshold
            if not self.auto_reset or (not success and now - self._episode_start < self.episode_s):
                return None
            done = self._end_episode(now, hold=True)
        if self.on_episode_end:
            self.on_episode_end(done)
        return done

    def reset(self) -> CellEpisode:
        """End the current episode now and start the next one (seed + 1)."""
        with self._lock:
            done = self._end_episode(self.clock(), hold=False)
        if self.on_episode_end:
            self.on_episode_end(done)
        return done

    def _end_episode(self, now: float, hold: bool) -> CellEpisode:
        success = self._max_coverage > self.env.config.success_threshold
        duration = 0.0 if self._episode_start is None else now - self._episode_start  # None: never commanded
        done = CellEpisode(len(self.results), self._episode_seed, self._max_coverage, duration, success)
        self.results.append(done)
        self._start_episode(now, hold)
        return done

    def score(self) -> float:
        return pusht_score([r.max_coverage for r in self.results]) if self.results else 0.0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pusht-physics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        next_t = self.clock()
        while not self._stop.is_set():
            self.tick(self.clock())
            next_t += self.physics_dt
            delay = next_t - self.clock()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.5:  # fell far behind (machine overloaded): do not try to catch up
                next_t = self.clock()
