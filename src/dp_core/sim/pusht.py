"""A ROS-free Push-T simulator: pymunk 7 physics and OpenCV rendering, faithful to the Diffusion Policy task.

A disk agent (radius 15) follows commanded positions through a PD controller and pushes a T-shaped block
onto a fixed goal pose in a 512 x 512 workspace. Control runs at 10 Hz over 100 Hz physics. The physical
set-up (space, bodies, insertion order, initial positions) matches the environment that recorded
``pusht_cchi_v7_replay.zarr``: replaying a demonstration's actions reproduces its states to float32
precision, and the same seed gives the same initial state as the original environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pymunk

WORKSPACE = 512
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
AGENT_RADIUS = 15.0

# The T in its own frame (counter-clockwise): a 120 x 30 bar and a 30 x 90 stem below it (y down on screen).
_BAR = np.array([[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [-60.0, 30.0]])
_STEM = np.array([[-15.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0]])
_T_AREA = 120.0 * 30.0 + 30.0 * 90.0
_BLOCK_COG = (0.0, 45.0)  # mean of the two boxes' centroids, as in the original
# The original adds the bar's moment twice (a slip there); needed to reproduce the recorded rotations.
_BLOCK_MOMENT = 2.0 * pymunk.moment_for_poly(1.0, _BAR.tolist())
_WALLS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))

# Block-frame keypoints in the order of data/keypoint, recovered from pusht_cchi_v7_replay.zarr as
# R(-angle) @ (keypoint - block_xy) averaged over the 19,007 frames whose 9 points all agree to 1e-4 px
# (the other frames' keypoints are a rigid motion of these, offset by up to 2 px from data/state).
LOCAL_KEYPOINTS = np.array(
    [
        [9.26979, 90.04097],
        [-60.98347, -1.18673],
        [60.91276, -1.39336],
        [-0.27050, 25.54363],
        [-14.06493, 122.81585],
        [39.00274, 32.85741],
        [-39.96641, 32.72966],
        [-16.82434, 62.86318],
        [23.54146, -1.70029],
    ]
)

# Colours (RGB) of the original pygame rendering: LightGreen goal, LightSlateGray block outline over a fill
# 1.2x brighter, RoyalBlue agent with a 1.2x brighter core, LightGray walls.
_GOAL_RGB = (144, 238, 144)
_BLOCK_RGB = (119, 136, 153)
_BLOCK_FILL_RGB = (142, 163, 183)
_AGENT_RGB = (65, 105, 225)
_AGENT_CORE_RGB = (78, 126, 255)
_WALL_RGB = (211, 211, 211)


@dataclass
class PushTConfig:
    """Push-T settings; the defaults are the paper's task."""

    render_size: int = 96  # side of the ``image`` observation; 0 leaves it out (state-only use)
    max_steps: int = 300
    control_hz: float = 10
    physics_hz: float = 100
    kp: float = 100
    kd: float = 20
    success_threshold: float = 0.95


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _to_world(local: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return local @ _rotation(pose[2]).T + pose[:2]


def _convex_overlap(subject: np.ndarray, clip: np.ndarray) -> float:
    """Exact area of the intersection of two counter-clockwise convex polygons (Sutherland-Hodgman)."""
    poly = list(subject)
    for a, b in zip(clip, np.roll(clip, -1, axis=0)):
        edge = b - a
        side = [edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0]) for p in poly]
        out = []
        for i in range(len(poly)):
            j = (i + 1) % len(poly)
            if side[i] >= 0:
                out.append(poly[i])
            if (side[i] >= 0) != (side[j] >= 0):
                out.append(poly[i] + (poly[j] - poly[i]) * (side[i] / (side[i] - side[j])))
        poly = out
        if len(poly) < 3:
            return 0.0
    x, y = np.array(poly).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def t_coverage(block_pose: np.ndarray, goal_pose: np.ndarray = GOAL_POSE) -> float:
    """Fraction of the goal T's area covered by a T at ``block_pose`` (exact polygon intersection)."""
    block = [_to_world(p, np.asarray(block_pose, np.float64)) for p in (_BAR, _STEM)]
    goal = [_to_world(p, goal_pose) for p in (_BAR, _STEM)]
    # Bar and stem only share an edge, so the overlap of the two Ts is the sum of the box-box overlaps.
    return sum(_convex_overlap(b, g) for b in block for g in goal) / _T_AREA


def pusht_score(max_coverages: np.ndarray | list[float], success_threshold: float = 0.95) -> float:
    """The paper's Push-T score: mean over episodes of clip(max coverage / threshold, 0, 1)."""
    cov = np.asarray(max_coverages, dtype=np.float64)
    if cov.ndim != 1 or cov.size == 0:
        raise ValueError(f"max_coverages must be a non-empty 1-D sequence, got shape {cov.shape}")
    return float(np.mean(np.clip(cov / success_threshold, 0.0, 1.0)))


class PushTEnv:
    """The Push-T task: ``reset()`` then ``step(target_xy)`` until ``done``."""

    def __init__(self, config: PushTConfig | None = None) -> None:
        self.config = config or PushTConfig()
        substeps = self.config.physics_hz / self.config.control_hz
        if substeps < 1 or substeps != round(substeps):
            raise ValueError(f"physics_hz / control_hz must be a positive integer, got {substeps}")
        self._substeps = int(round(substeps))
        self._dt = 1.0 / self.config.physics_hz
        self._space: pymunk.Space | None = None
        self._steps = 0

    def reset(self, seed: int | None = None, state: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Start an episode at ``state`` (agent x, y, block x, y, angle) or at a state drawn from ``seed``.

        Seeded states follow the original environment: agent x, y ~ randint(50, 450), block x, y ~
        randint(100, 400), angle ~ 2 pi N(0, 1) - pi (uniform once wrapped), from ``np.random.RandomState(seed)``,
        with the block placed position-then-angle (so it turns about its centre of gravity). Seeds 0-205 give
        exactly the first states of the 206 recorded demonstrations. A state that already satisfies the task
        is redrawn from the same stream (none does for seeds 0-30000 and 100000-100500).
        """
        if state is not None:
            state = np.asarray(state, dtype=np.float64)
            if state.shape != (5,) or not np.all(np.isfinite(state)):
                raise ValueError(f"state must be 5 finite numbers (agent x, y, block x, y, angle), got {state!r}")
            self._build(state, angle_first=True)
        else:
            if seed is None:
                seed = int(np.random.default_rng().integers(0, 2**31))
            rs = np.random.RandomState(seed)
            while True:
                xy = [rs.randint(50, 450), rs.randint(50, 450), rs.randint(100, 400), rs.randint(100, 400)]
                self._build(np.array([*xy, rs.randn() * 2 * np.pi - np.pi], dtype=np.float64), angle_first=False)
                if self.coverage() <= self.config.success_threshold:
                    break
        self._steps = 0
        return self._obs()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict[str, float | bool | int]]:
        """Drive the agent toward ``action`` (target x, y in pixels) for one control period."""
        self.advance(action, self._substeps)
        self._steps += 1
        coverage = self.coverage()
        success = coverage > self.config.success_threshold
        done = success or self._steps >= self.config.max_steps
        return self._obs(), coverage, done, {"coverage": coverage, "success": success, "step": self._steps}

    def advance(self, action: np.ndarray, substeps: int = 1) -> None:
        """Run ``substeps`` physics steps (1 / physics_hz each) with the PD controller toward ``action``.

        ``step`` is ``advance`` for one control period plus bookkeeping; a real-time simulator
        calls ``advance(target, 1)`` at the physics rate with the latest commanded target.
        """
        if self._space is None:
            raise RuntimeError("call reset() before step()")
        target = np.asarray(action, dtype=np.float64)
        if target.shape != (2,):
            raise ValueError(f"action must have shape (2,) (target x, y), got shape {target.shape}")
        if not np.all(np.isfinite(target)):
            raise ValueError(f"action must be finite, got {target}")
        kp, kd, dt = self.config.kp, self.config.kd, self._dt
        tx, ty = float(target[0]), float(target[1])
        for _ in range(substeps):
            (px, py), (vx, vy) = self._agent.position, self._agent.velocity
            ax, ay = kp * (tx - px) + kd * (0.0 - vx), kp * (ty - py) + kd * (0.0 - vy)
            self._agent.velocity = (vx + ax * dt, vy + ay * dt)
            self._space.step(dt)

    def observe(self) -> dict[str, np.ndarray]:
        """The current observation (as returned by ``reset`` and ``step``)."""
        return self._obs()

    def coverage(self) -> float:
        """Fraction of the goal area covered by the block."""
        return t_coverage(self._block_pose())

    def render(self, size: int = 96) -> np.ndarray:
        """An RGB ``size`` x ``size`` frame drawn like the dataset images (goal, block, agent, walls)."""
        if self._space is None:
            raise RuntimeError("call reset() before render()")
        # Draw at >= 512 px with the original's integer-pixel geometry, then resize like the original.
        canvas_size = max(WORKSPACE, int(size))
        scale = canvas_size / WORKSPACE
        img = np.full((canvas_size, canvas_size, 3), 255, np.uint8)

        def px(points: np.ndarray) -> np.ndarray:
            return np.round(np.asarray(points, np.float64) * scale).astype(np.int32)

        line = max(1, round(4 * scale))
        dot = max(1, round(2 * scale))

        def fat_segment(a: np.ndarray, b: np.ndarray, color: tuple[int, int, int]) -> None:
            cv2.line(img, tuple(map(int, a)), tuple(map(int, b)), color, line)
            for p in (a, b):
                cv2.circle(img, tuple(map(int, p)), dot, color, -1)

        for local in (_BAR, _STEM):
            cv2.fillPoly(img, [px(_to_world(local, GOAL_POSE))], _GOAL_RGB)
        pose = self._block_pose()
        for local in (_BAR, _STEM):
            corners = px(_to_world(local, pose))
            cv2.fillPoly(img, [corners], _BLOCK_FILL_RGB)
            for a, b in zip(corners, np.roll(corners, -1, axis=0)):
                fat_segment(a, b, _BLOCK_RGB)
        center = tuple(map(int, px(self._agent.position)))
        cv2.circle(img, center, round(AGENT_RADIUS * scale), _AGENT_RGB, -1)
        cv2.circle(img, center, round((AGENT_RADIUS - 4) * scale), _AGENT_CORE_RGB, -1)
        for a, b in _WALLS:
            fat_segment(px(a), px(b), _WALL_RGB)
        if canvas_size != size:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        return img

    def _build(self, state: np.ndarray, angle_first: bool) -> None:
        """A fresh space laid out like the original (same insertion order and start poses), then ``state``."""
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        space.damping = 0.0  # velocities die out every substep: quasi-static pushing
        space.add(*[pymunk.Segment(space.static_body, a, b, 2) for a, b in _WALLS])
        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        agent.position = (256, 400)
        space.add(agent, pymunk.Circle(agent, AGENT_RADIUS))
        block = pymunk.Body(1.0, _BLOCK_MOMENT)
        shapes = [pymunk.Poly(block, part.tolist()) for part in (_BAR, _STEM)]
        block.center_of_gravity = _BLOCK_COG
        block.position = (256, 300)
        space.add(block, *shapes)

        agent.position = state[:2].tolist()
        # pymunk turns a body about its centre of gravity: angle then position puts the origin at state[2:4].
        if angle_first:
            block.angle = state[4]
            block.position = state[2:4].tolist()
        else:
            block.position = state[2:4].tolist()
            block.angle = state[4]
        space.step(self._dt)  # as the original: resolves contacts, leaves positions unchanged
        self._space, self._agent, self._block = space, agent, block

    def _block_pose(self) -> np.ndarray:
        return np.array([*self._block.position, self._block.angle % (2 * np.pi)])

    def _obs(self) -> dict[str, np.ndarray]:
        agent = np.array(self._agent.position, dtype=np.float32)
        pose = self._block_pose()
        obs = {
            "agent_pos": agent,
            "block_pose": pose.astype(np.float32),
            "keypoint": _to_world(LOCAL_KEYPOINTS, pose).astype(np.float32),
            "state": np.concatenate([agent, pose.astype(np.float32)]),
        }
        if self.config.render_size > 0:
            obs["image"] = self.render(self.config.render_size)
        return obs
