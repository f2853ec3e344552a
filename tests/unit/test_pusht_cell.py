import numpy as np
import pytest

from dp_core.sim.pusht import PushTConfig, PushTEnv
from dp_core.sim.pusht_cell import PushTCell


def test_cell_follows_target_like_the_stepped_env() -> None:
    """100 physics ticks toward one target equal 10 control steps of PushTEnv."""
    cell = PushTCell(PushTConfig(render_size=0), seed=7, episode_s=100.0)
    env = PushTEnv(PushTConfig(render_size=0))
    env.reset(seed=7)
    target = np.array([300.0, 200.0])
    cell.set_target(target)
    for i in range(100):
        cell.tick(now=i * 0.01)
    for _ in range(10):
        obs, *_ = env.step(target)
    cell_obs, coverage, episode = cell.snapshot()
    assert np.array_equal(cell_obs["agent_pos"], obs["agent_pos"]) and np.array_equal(cell_obs["block_pose"], obs["block_pose"])
    assert episode == 0 and coverage == pytest.approx(env.coverage())


def test_episode_ends_on_timeout_and_next_seed_starts() -> None:
    ended = []
    cell = PushTCell(PushTConfig(render_size=0), seed=3, episode_s=0.5, on_episode_end=ended.append, clock=lambda: 0.0)
    first = cell.snapshot()[0]["state"].copy()
    for i in range(60):
        cell.tick(now=(i + 1) * 0.01)
    assert len(ended) == 1 and ended[0].seed == 3 and not ended[0].success
    assert ended[0].duration_s == pytest.approx(0.5)
    second = cell.snapshot()[0]["state"]
    assert not np.array_equal(first, second)  # seed 4
    assert cell.score() == pytest.approx(min(ended[0].max_coverage / 0.95, 1.0))


def test_the_start_states_coverage_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The score is the max over the states after each action (as dp-eval and the original's runner score):
    a start state that happens to cover the goal well must not count if the first pushes move the block off."""
    stepped = [False]  # 0.9 in the reset state, 0.1 after the physics steps
    monkeypatch.setattr(PushTEnv, "coverage", lambda self: 0.1 if stepped[0] else 0.9)
    ended = []
    cell = PushTCell(PushTConfig(render_size=0), seed=3, episode_s=0.2, on_episode_end=ended.append, clock=lambda: 0.0)
    assert cell.snapshot()[1] == 0.9
    stepped[0] = True
    for i in range(30):
        cell.tick(now=(i + 1) * 0.01)
    assert len(ended) == 1 and ended[0].max_coverage == 0.1


def test_episode_clock_can_wait_for_the_first_command() -> None:
    ended = []
    cell = PushTCell(PushTConfig(render_size=0), seed=3, episode_s=0.5, on_episode_end=ended.append,
                     clock=lambda: 0.0, start_on_command=True)
    for i in range(100):  # 1 s without a command: the episode has not started
        cell.tick(now=(i + 1) * 0.01)
    assert not ended
    cell.set_target(cell.snapshot()[0]["agent_pos"])
    for i in range(100, 160):
        cell.tick(now=(i + 1) * 0.01)
    assert len(ended) == 1 and ended[0].duration_s == pytest.approx(0.5)
    for i in range(160, 300):  # the next episode waits for its own first command
        cell.tick(now=(i + 1) * 0.01)
    assert len(ended) == 1


def test_bad_target_rejected() -> None:
    cell = PushTCell(PushTConfig(render_size=0))
    with pytest.raises(ValueError, match="finite"):
        cell.set_target(np.array([np.nan, 1.0]))


def test_real_time_thread_runs_and_stops() -> None:
    cell = PushTCell(PushTConfig(render_size=0), seed=1)
    start = cell.snapshot()[0]["agent_pos"].copy()
    cell.set_target(start + 50.0)
    cell.start()
    import time

    time.sleep(0.3)
    cell.stop()
    assert np.linalg.norm(cell.snapshot()[0]["agent_pos"] - start) > 5.0


def test_without_auto_reset_only_reset_ends_an_episode() -> None:
    ended = []
    cell = PushTCell(PushTConfig(render_size=0), seed=3, episode_s=0.5, on_episode_end=ended.append,
                     clock=lambda: 0.0, auto_reset=False)
    for i in range(100):
        assert cell.tick(now=(i + 1) * 0.01) is None  # well past episode_s
    done = cell.reset()
    assert ended == [done] and done.seed == 3 and done.index == 0
    env = PushTEnv(PushTConfig(render_size=0))
    assert np.array_equal(cell.snapshot()[0]["state"], env.reset(seed=4)["state"])


def test_automatic_reset_holds_targets_an_operator_reset_does_not() -> None:
    clock = [0.0]
    ended = []
    cell = PushTCell(PushTConfig(render_size=0), seed=3, episode_s=0.5, on_episode_end=ended.append,
                     clock=lambda: clock[0], start_on_command=True, reset_hold_s=1.0)
    assert cell.set_target(cell.snapshot()[0]["agent_pos"])  # the first episode does not hold
    for i in range(60):  # past episode_s: automatic reset at 0.51 s, holding until 1.51 s
        clock[0] = (i + 1) * 0.01
        cell.tick(clock[0])
    assert len(ended) == 1
    start = cell.snapshot()[0]["agent_pos"].copy()
    assert not cell.set_target(start + 100.0)  # planned for the previous episode: ignored
    for i in range(60, 150):  # 1.5 s: still holding; the agent has not moved and the episode has not started
        clock[0] = (i + 1) * 0.01
        cell.tick(clock[0])
    assert np.array_equal(cell.snapshot()[0]["agent_pos"], start) and len(ended) == 1
    for i in range(155, 200):  # from 1.51 s targets count, and the episode clock starts with the first (1.56 s)
        clock[0] = (i + 1) * 0.01
        assert cell.set_target(start + 50.0)
        cell.tick(clock[0])
    assert np.linalg.norm(cell.snapshot()[0]["agent_pos"] - start) > 5.0 and len(ended) == 1
    done = cell.reset()  # an operator's reset: no hold
    assert done.duration_s == pytest.approx(2.00 - 1.56) and cell.set_target(start)
    with pytest.raises(ValueError, match="reset_hold_s"):
        PushTCell(PushTConfig(render_size=0), reset_hold_s=-1.0)
