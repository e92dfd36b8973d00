import math

from compressor.kd.schedules import DTSState, TAIDState


def test_taid_never_decreases_and_stays_above_the_linear_ramp():
    state = TAIDState(t_start=0.4, t_end=1.0, alpha=0.05)
    losses = [5.0, 4.0, 4.5, 3.0, 3.1, 2.0, 2.5, 1.0] * 5
    previous = state.t
    total = len(losses)
    for step, loss in enumerate(losses):
        t = state.update(loss, step, total)
        linear = 0.4 + 0.6 * step / total
        assert t >= previous - 1e-12 and t >= linear - 1e-12 and t <= 1.0
        previous = t


def test_taid_first_update_only_stores_the_loss():
    state = TAIDState()
    state.update(3.0, 0, 100)
    assert state.previous_loss == 3.0 and state.momentum == 0.0 and state.t == 0.4


def test_dts_follows_the_ema_of_the_cosine_schedule_when_the_gap_is_small():
    state = DTSState(initial=4.0, minimum=1.0)
    expected = 4.0
    for step in range(50):
        progress = step / 50
        target = min(4.0, max(1.0, 4.0 * 0.5 * (1 + math.cos(math.pi * progress))))
        expected = 0.9 * expected + 0.1 * target
        assert math.isclose(state.update(2.0, 1.5, progress), expected, rel_tol=1e-12)


def test_dts_stays_within_bounds_for_any_gap():
    state = DTSState(initial=4.0, minimum=1.0, maximum=4.0)
    for step, gap in enumerate([0.1, 1.2, 3.0, 50.0, 1.01, -2.0] * 10):
        temperature = state.update(gap + 1.0, 1.0, step / 60)
        assert temperature >= 1.0 and temperature <= 4.0
