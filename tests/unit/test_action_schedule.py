import numpy as np
import pytest

from dp_core.control import ActionSchedule
from dp_core.control.action_schedule import CLOCK_STEP_BACK_S, FUTURE_TOLERANCE_S

DT = 0.1


def schedule(**kw) -> ActionSchedule:
    kw = {"workspace_min": [0.0, 0.0], "workspace_max": [100.0, 100.0]} | kw
    return ActionSchedule(DT, **kw)


def ramp(n: int = 8, start: float = 1.0) -> np.ndarray:
    """Chunk whose action i is (start + i, 0): easy to tell apart."""
    return np.stack([start + np.arange(n), np.zeros(n)], 1)


@pytest.mark.parametrize("latency, dropped", [(0.0, 0), (0.15, 1), (0.4, 4)])
def test_late_actions_are_dropped(latency: float, dropped: int) -> None:
    s = schedule(watchdog_s=1.0)  # the whole 0.8 s chunk plays out
    stats = s.add_chunk(10.0, ramp(), now=10.0 + latency)  # margin 0.01: due <= now + 0.01 dropped
    assert (stats.received, stats.dropped, s.pending) == (8, dropped, 8 - dropped)
    assert stats.first_due == pytest.approx(10.0 + (dropped + 1) * DT)
    sent = [a for k in range(1, 9) for a in s.pop_due(max(10.0 + k * DT, 10.0 + latency) + 1e-6)]  # time runs on
    assert [a.due for a in sent] == pytest.approx([10.0 + k * DT for k in range(dropped + 1, 9)])
    assert [a.action[0] for a in sent] == pytest.approx(list(ramp()[dropped:, 0]))
    assert (s.stats.dropped, s.stats.sent) == (dropped, 8 - dropped)
    assert s.stats.fraction_dropped == pytest.approx(dropped / 8)


def test_all_late_chunk_schedules_nothing_and_does_not_feed_the_watchdog() -> None:
    s = schedule()
    stats = s.add_chunk(10.0, ramp(), now=11.0)
    assert (stats.dropped, stats.late, stats.first_due, s.pending) == (8, 8, None, 0)
    assert s.hold(11.0)


def test_newest_chunk_wins_from_its_first_valid_action() -> None:
    s = schedule()
    s.add_chunk(0.0, ramp(start=1.0), now=0.0)  # due 0.1 .. 0.8
    assert [a.due for a in s.pop_due(0.25)] == pytest.approx([0.1, 0.2])
    # Chunk B from the observation at 0.2 arrives at 0.32: its 0.3 action is late, 0.4 is first valid.
    stats = s.add_chunk(0.2, ramp(start=50.0), now=0.32)
    assert (stats.dropped, stats.late, stats.replaced) == (1, 1, 5)  # A's 0.4 .. 0.8 replaced, A's 0.3 kept
    sent = s.pop_due(0.45)
    assert [a.due for a in sent] == pytest.approx([0.3, 0.4])
    assert [a.action[0] for a in sent] == [3.0, 51.0]
    assert [a.stamp for a in sent] == [0.0, 0.2]  # each action knows the observation it came from
    assert s.pending == 6  # B's 0.5 .. 1.0


def test_obs_stamp_is_carried_when_scheduling_from_arrival() -> None:
    s = schedule()
    s.add_chunk(0.3, ramp(n=2), now=0.3, obs_stamp=0.1)  # no latency compensation: due from arrival
    assert [(a.due, a.stamp) for a in s.pop_due(0.5)] == [(pytest.approx(0.4), 0.1), (pytest.approx(0.5), 0.1)]


def test_replacement_off_grid_keeps_earlier_actions() -> None:
    s = schedule()
    s.add_chunk(0.0, ramp(start=1.0), now=0.0)
    stats = s.add_chunk(0.25, ramp(n=4, start=50.0), now=0.26)  # due 0.35 .. 0.65, none late
    assert (stats.dropped, stats.replaced) == (0, 5)  # A's 0.4 .. 0.8
    sent = s.pop_due(0.7)
    assert [a.due for a in sent] == pytest.approx([0.1, 0.2, 0.3, 0.35, 0.45, 0.55, 0.65])
    assert [a.action[0] for a in sent] == [1.0, 2.0, 3.0, 50.0, 51.0, 52.0, 53.0]


def test_workspace_clamp() -> None:
    s = schedule()
    stats = s.add_chunk(0.0, np.array([[-5.0, 50.0], [50.0, 50.0], [120.0, 130.0]]), now=0.0)
    assert stats.clamped == 2
    assert [a.action.tolist() for a in s.pop_due(0.3)] == [[0.0, 50.0], [50.0, 50.0], [100.0, 100.0]]


def test_max_step_limits_the_norm_and_updates_from_sent_actions() -> None:
    s = schedule(max_step=5.0)
    s.add_chunk(0.0, np.array([[10.0, 10.0], [16.0, 18.0], [16.0, 17.0], [25.0, 17.0]]), now=0.0)
    first = s.pop_due(0.1)
    assert first[0].action.tolist() == [10.0, 10.0]  # no predecessor: not limited
    # The caller was late: both overdue actions come out, in order, each limited relative to the last sent.
    sent = s.pop_due(0.3)
    assert [a.due for a in sent] == pytest.approx([0.2, 0.3])
    np.testing.assert_allclose(sent[0].action, [13.0, 14.0])  # (6, 8) shortened to length 5
    np.testing.assert_allclose(sent[1].action, [16.0, 17.0])  # |(3, 3)| < 5 from the limited action
    np.testing.assert_allclose(s.pop_due(0.4)[0].action, [21.0, 17.0])
    assert s.stats.limited == 2


def test_watchdog_fires_discards_the_schedule_and_clears_on_a_new_chunk() -> None:
    s = schedule(watchdog_s=0.5)
    assert s.hold(0.0)  # no chunk yet
    s.add_chunk(0.0, ramp(), now=0.0)
    assert not s.hold(0.5)
    assert len(s.pop_due(0.45)) == 4
    assert s.hold(0.51)
    assert s.pop_due(0.6) == [] and s.pending == 0
    assert s.stats.expired == 4
    s.add_chunk(0.9, ramp(start=10.0), now=0.95)
    assert not s.hold(0.95)
    sent = s.pop_due(1.0)
    assert [a.due for a in sent] == pytest.approx([1.0]) and sent[0].action[0] == 10.0


def test_watchdog_is_judged_at_now_not_at_the_lead() -> None:
    # The executor sends actions lead_time ahead of their due time; the watchdog must still allow watchdog_s.
    s = schedule(watchdog_s=0.5)
    s.add_chunk(0.0, ramp(), now=0.0)
    sent = s.pop_due(0.45, lead=0.1)  # chunk 0.45 s old: not stale yet
    assert [a.due for a in sent] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5]) and s.stats.expired == 0
    assert s.pop_due(0.51, lead=0.1) == [] and s.stats.expired == 3


def test_a_fresh_chunk_never_revives_an_expired_schedule() -> None:
    s = schedule(watchdog_s=0.5)
    s.add_chunk(0.0, ramp(n=16), now=0.0)  # due 0.1 .. 1.6; nobody polls until after the watchdog
    s.add_chunk(1.2, ramp(n=4, start=50.0), now=1.2)  # due 1.3 .. 1.6
    sent = s.pop_due(1.35)
    assert [(a.due, a.stamp) for a in sent] == [(pytest.approx(1.3), 1.2)]  # nothing of the stale chunk
    assert (s.stats.expired, s.stats.replaced) == (16, 0)  # discarded whole before the fresh one was scheduled


def test_sent_waypoints_stay_in_time_order_and_within_the_speed_limit() -> None:
    s = schedule(max_step=10.0)
    s.add_chunk(0.0, ramp(start=1.0), now=0.0)  # due 0.1 .. 0.8
    assert [a.due for a in s.pop_due(0.15, lead=0.1)] == pytest.approx([0.1, 0.2])  # sent ahead of due
    # A chunk from an observation off the old grid: its 0.19 is not late by the margin, but 0.2 went out.
    stats = s.add_chunk(0.09, np.stack([np.full(8, 30.0), np.zeros(8)], 1), now=0.16)
    assert (stats.dropped, stats.late, stats.first_due) == (1, 0, pytest.approx(0.29))  # dropped, not late
    assert (s.stats.dropped, s.stats.late) == (1, 0)
    sent = s.pop_due(0.2, lead=0.1)
    assert [a.due for a in sent] == pytest.approx([0.29])
    # 0.09 s after the waypoint at 0.2 (x = 2): at most 0.9 * max_step, i.e. max_step per dt.
    np.testing.assert_allclose(sent[0].action, [2.0 + 9.0, 0.0])
    dues = [0.1, 0.2, 0.29] + [a.due for a in s.pop_due(1.0, lead=0.1)]
    assert all(b > a for a, b in zip(dues, dues[1:]))


def test_chunks_on_one_grid_replace_each_other_at_clock_time_stamps() -> None:
    # Observations 0.1 s apart at clock times: the newer chunk's due times come out a float step (~2.4e-7 s at
    # 1.7e9 s) off the older one's and must still replace them, not be sent beside them.
    for i in range(50):
        base = 1_712_345_679.0 + i * 0.0137
        s = schedule()
        s.add_chunk(base, ramp(), now=base)  # due base + 0.1 .. 0.8
        stats = s.add_chunk(base + 0.1, ramp(start=50.0), now=base + 0.1)  # due base + 0.2 .. 0.9
        assert (stats.dropped, stats.replaced) == (0, 7)
        assert [a.action[0] for a in s.pop_due(base + 0.35)] == [1.0, 50.0, 51.0]


@pytest.mark.parametrize(
    "actions, match",
    [
        (np.array([[1.0, np.nan], [1.0, 1.0]]), r"NaN/inf values in rows \[0\]"),
        (np.array([[1.0, 1.0], [np.inf, 1.0]]), r"NaN/inf values in rows \[1\]"),
        (np.zeros((3, 3)), r"shape \(N >= 1, 2\); got \(3, 3\)"),
        (np.zeros(2), r"got \(2,\)"),
        (np.zeros((0, 2)), r"got \(0, 2\)"),
    ],
)
def test_bad_chunks_raise_and_change_nothing(actions: np.ndarray, match: str) -> None:
    s = schedule()
    s.add_chunk(0.0, ramp(), now=0.0)
    before = (s.pending, s.stats.chunks, s.stats.received, s.last_chunk_time)
    with pytest.raises(ValueError, match=match):
        s.add_chunk(0.1, actions, now=0.2)
    assert (s.pending, s.stats.chunks, s.stats.received, s.last_chunk_time) == before


def test_a_chunk_stamped_in_the_future_is_refused() -> None:
    s = schedule()
    s.add_chunk(10.0 + FUTURE_TOLERANCE_S, ramp(), now=10.0)  # within the clocks' tolerance
    with pytest.raises(ValueError, match="in the future"):
        s.add_chunk(15.0, ramp(), now=10.05)
    assert s.last_chunk_time == 10.0 and s.stats.chunks == 1


def test_the_clock_stepping_back_discards_the_schedule_and_waits_for_a_fresh_chunk() -> None:
    s = schedule(watchdog_s=0.5)
    s.add_chunk(100.0, ramp(), now=100.0)  # due 100.1 .. 100.8
    assert len(s.pop_due(100.35)) == 3
    # The system clock is set back 10 s: nothing of the old schedule goes out, the watchdog holds ...
    assert s.pop_due(90.4) == [] and s.hold(90.4)
    assert (s.stats.clock_steps_back, s.stats.expired, s.pending) == (1, 5, 0)
    # ... and a chunk on the new time base runs at once (its actions are not "before one already sent").
    stats = s.add_chunk(90.4, ramp(start=4.0), now=90.42)
    assert stats.first_due == pytest.approx(90.5) and not s.hold(90.45)
    sent = s.pop_due(90.6)
    assert [a.due for a in sent] == pytest.approx([90.5, 90.6])
    # A step back within the tolerance (timer jitter, a slewing clock) changes nothing.
    s.pop_due(90.6 - CLOCK_STEP_BACK_S / 2)
    assert s.stats.clock_steps_back == 1 and s.pending == 6


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="workspace"):
        schedule(workspace_min=[0.0, 10.0], workspace_max=[1.0, 5.0])
    with pytest.raises(ValueError, match="max_step"):
        schedule(max_step=0.0)
    with pytest.raises(ValueError, match="watchdog_s"):
        schedule(watchdog_s=float("inf"))
