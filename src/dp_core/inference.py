"""Closed-loop inference: numpy observations in, action chunks out, warm-started.

:class:`PolicyRunner` is the one code path used by the simulator evaluation, the ROS 2
policy node and bag replay: it batches the To observations, runs the policy on its
device, and warm-starts each chunk from the previous one when that is recent enough.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import ShapeMeta
from .fast_inference import InferenceOptions
from .policy import DiffusionPolicy, shift_chunk


@dataclass
class ChunkResult:
    chunk: np.ndarray  # (Tp, A), index To - 1 is the action for the newest observation's step
    latency_s: float
    warm: bool


@dataclass
class PolicyRunner:
    """Runs ``policy`` on ``{key: (To, ...)}`` numpy observations taken ``dt`` apart.

    ``infer(obs, t)``: ``t`` is the time of the newest observation (seconds or steps * dt).
    The previous chunk, shifted by the elapsed time rounded to whole steps, is reused as a warm
    start when that is 1 to ``horizon - n_obs_steps`` steps; otherwise sampling starts cold.
    ``inference``, when given, selects the policy's sampling path (fast by default, or the reference).
    Warm starts are opt-in: replanning every Ta steps from noise scored higher in closed loop (docs/performance.md).
    """

    policy: DiffusionPolicy
    dt: float = 0.1
    warm_start: bool = False
    seed: int | None = None
    inference: InferenceOptions | None = None
    _prev: torch.Tensor | None = field(default=None, init=False, repr=False)
    _prev_t: float = field(default=0.0, init=False, repr=False)
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.policy.eval()
        if self.inference is not None:
            self.policy.configure_inference(self.inference)
        self.reset()

    @property
    def shape_meta(self) -> ShapeMeta:
        return self.policy.cfg.shape_meta

    def reset(self) -> None:
        """Forget the previous chunk (new episode)."""
        self._prev = None
        if self.seed is not None:
            self._generator = torch.Generator(device=self.policy.device).manual_seed(self.seed)

    def warmup(self) -> float:
        """Sample a cold and a warm-started chunk from blank observations; returns the seconds it took.

        First calls build what later ones reuse (CUDA graphs, autotuned kernels, an ONNX Runtime
        session): doing it before the first real observation keeps the first chunks on time.
        """
        start = time.perf_counter()
        cfg = self.policy.cfg
        blank = {k: np.zeros((cfg.n_obs_steps, *spec.shape), np.uint8 if spec.type == "rgb" else np.float32)
                 for k, spec in self.shape_meta.obs.items()}
        self.infer(blank, 0.0)
        if self.warm_start:
            self.infer(blank, self.dt)
        self.reset()
        return time.perf_counter() - start

    def _warm_guess(self, t: float) -> torch.Tensor | None:
        if not self.warm_start or self._prev is None:
            return None
        shift = round((t - self._prev_t) / self.dt)  # live stamps jitter: snap to the nearest step
        cfg = self.policy.cfg
        if not 0 < shift <= cfg.horizon - cfg.n_obs_steps:
            return None
        return shift_chunk(self._prev, shift)

    def infer(self, obs: dict[str, np.ndarray], t: float) -> ChunkResult:
        start = time.perf_counter()
        device = self.policy.device
        batch = {}
        n_obs = self.policy.cfg.n_obs_steps
        for key, spec in self.shape_meta.obs.items():
            if key not in obs:
                raise KeyError(f"observation '{key}' missing; policy expects {list(self.shape_meta.obs)}")
            value = np.asarray(obs[key])
            if value.shape != (n_obs, *spec.shape):  # e.g. images of another size: the encoder would take them
                raise ValueError(f"observation '{key}' has shape {value.shape}; the policy expects "
                                 f"{(n_obs, *spec.shape)} (n_obs_steps x {spec.type} shape)")
            batch[key] = torch.as_tensor(value)[None].to(device, non_blocking=True)
        guess = self._warm_guess(t)
        pred = self.policy.predict_action(batch, warm_start=guess, generator=self._generator)["action_pred"]
        self._prev, self._prev_t = pred, t
        chunk = pred[0].float().cpu().numpy()
        return ChunkResult(chunk, time.perf_counter() - start, guess is not None)


def stack_history(history: list[dict[str, np.ndarray]], shape_meta: ShapeMeta, n_obs_steps: int) -> dict[str, np.ndarray]:
    """Stack the last ``n_obs_steps`` per-step observations, repeating the oldest if fewer."""
    if not history:
        raise ValueError("no observations yet")
    steps = list(history[-n_obs_steps:])
    steps = [steps[0]] * (n_obs_steps - len(steps)) + steps
    return {k: np.stack([s[k] for s in steps]) for k in shape_meta.obs}


def observation_from_sources(sources: dict[str, np.ndarray], shape_meta: ShapeMeta) -> dict[str, np.ndarray]:
    """One step's observation by the same mapping the dataset uses (``source`` and ``columns``)."""
    out = {}
    for key, spec in shape_meta.obs.items():
        if spec.source not in sources:
            raise KeyError(f"observation '{key}' needs source '{spec.source}'; have {sorted(sources)}")
        value = np.asarray(sources[spec.source])
        if spec.type == "low_dim":
            value = value.reshape(-1).astype(np.float32)
            if spec.columns is not None:
                value = value[spec.columns[0] : spec.columns[1]]
        out[key] = value
    return out
