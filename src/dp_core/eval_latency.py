"""Latency robustness: Push-T score with an observation-to-chunk delay, compensation on or off.

The closed loop of the ROS stack on a virtual clock: the policy sees the observation of time t,
its chunk (stamped t) reaches the executor's :class:`ActionSchedule` at t + delay, and the
schedule feeds the simulator the action due one control period ahead, exactly as the executor
node does with ``lead_time_s = dt``. With compensation the chunk is scheduled from its stamp
(late actions dropped); without it, from its arrival (every action executed ``delay`` late).
Running on a virtual clock makes the table reproducible and independent of machine load.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from .control.action_schedule import ActionSchedule
from .eval_pusht import pusht_render_size, pusht_sources
from .inference import PolicyRunner, observation_from_sources, stack_history
from .policy import DiffusionPolicy
from .sim.pusht import PushTConfig, PushTEnv, pusht_score


def run_delayed_episode(
    env: PushTEnv, runner: PolicyRunner, seed: int, delay_s: float, compensate: bool, replan_steps: int
) -> tuple[float, int, int]:
    """One episode; returns (max coverage, actions received, actions dropped: late, or not after one already sent)."""
    cfg = runner.policy.cfg
    sm, dt = cfg.shape_meta, runner.dt
    runner.reset()
    obs = env.reset(seed=seed)
    history = [observation_from_sources(pusht_sources(obs), sm)]
    schedule = ActionSchedule(dt, workspace_min=[0.0, 0.0], workspace_max=[512.0, 512.0], watchdog_s=1e9)
    target = obs["agent_pos"].astype(np.float64)
    pending: list[tuple[float, float, np.ndarray]] = []  # (arrival, stamp, actions)
    max_cov = 0.0  # over the states after each action, as dp-eval pusht and the original's runner score
    for k in range(env.config.max_steps):
        now = round(k * dt, 9)
        if k % replan_steps == 0:
            chunk = runner.infer(stack_history(history, sm, cfg.n_obs_steps), t=now).chunk
            pending.append((round(now + delay_s, 9), now, chunk[cfg.n_obs_steps - 1 :]))
        for item in [p for p in pending if p[0] <= now + 1e-9]:
            arrival, stamp, actions = item
            schedule.add_chunk(stamp if compensate else arrival, actions, now=arrival)
            pending.remove(item)
        for sent in schedule.pop_due(now, dt):
            target = sent.action
        obs, coverage, done, _ = env.step(target)
        history = (history + [observation_from_sources(pusht_sources(obs), sm)])[-cfg.n_obs_steps :]
        max_cov = max(max_cov, coverage)
        if done:
            break
    return max_cov, schedule.stats.received, schedule.stats.dropped


def latency_table(
    policy: DiffusionPolicy, delays_s: list[float], episodes: int, seed: int, replan_steps: int | None = None,
    warm_start: bool = False,
) -> list[dict]:
    """Score for every delay, with and without compensation (one row for delay 0, where they agree).

    A chunk every ``replan_steps`` steps (default: the policy's n_action_steps) from noise, or with
    ``warm_start`` from the previous chunk: the policy node's defaults.
    """
    env = PushTEnv(PushTConfig(render_size=pusht_render_size(policy.cfg.shape_meta)))
    runner = PolicyRunner(policy, dt=1.0 / env.config.control_hz, warm_start=warm_start, seed=seed)
    replan = replan_steps or policy.cfg.n_action_steps
    available = policy.cfg.horizon - policy.cfg.n_obs_steps + 1
    if not 1 <= replan <= available:
        raise ValueError(f"replan_steps must be 1 to {available} (the actions a chunk holds); got {replan}")
    cases = [(delay, compensate) for delay in delays_s for compensate in ([True] if delay == 0 else [True, False])]
    rows = []
    progress = tqdm(total=len(cases) * episodes, desc="latency table", unit="episode")
    for delay, compensate in cases:
        results = []
        for i in range(episodes):
            progress.set_postfix(delay=delay, compensation=compensate)
            results.append(run_delayed_episode(env, runner, seed + i, delay, compensate, replan))
            progress.update()
        covs = [r[0] for r in results]
        received, dropped = sum(r[1] for r in results), sum(r[2] for r in results)
        rows.append({
            "delay_s": delay,
            "delay_steps": round(delay / runner.dt, 3),
            "compensation": compensate,
            "score": pusht_score(covs),
            "mean_max_coverage": float(np.mean(covs)),
            "fraction_dropped": dropped / received if received else 0.0,
        })
    progress.close()
    return rows
