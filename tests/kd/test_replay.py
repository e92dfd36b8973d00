import torch

from compressor.kd.replay import ReplayScheduler


def test_decisions_follow_the_rule_and_are_reproducible():
    scheduler = ReplayScheduler(phi=0.5, capacity=4, seed=3)
    first = [scheduler.decide(step, 100) for step in range(100)]
    assert first == [ReplayScheduler(phi=0.5, capacity=4, seed=3).decide(step, 100) for step in range(100)]
    assert "replay" not in first  # an empty buffer is never replayed from
    assert 0.3 < first.count("generate") / 100 < 0.7
    scheduler.push(torch.zeros(4, 8, dtype=torch.long))
    full = [scheduler.decide(step, 100) for step in range(100)]
    assert "replay" in full and full.count("generate") < first.count("generate")  # φ_s decays with the step
    assert all(d == "data" for d in [ReplayScheduler(phi=0.0).decide(s, 10) for s in range(10)])


def test_ring_buffer_keeps_the_newest_rows_and_phi_rises_on_worse_validation():
    scheduler = ReplayScheduler(capacity=3, loss_eps=0.1)
    scheduler.push(torch.arange(5)[:, None].repeat(1, 2))
    assert sorted(int(row[0]) for row in scheduler.buffer) == [2, 3, 4]
    scheduler.after_validation(2.0)
    scheduler.after_validation(2.05)
    assert scheduler.phi == 0.2
    scheduler.after_validation(2.2)
    assert abs(scheduler.phi - 0.3) < 1e-12


def test_state_round_trip_including_the_buffer():
    scheduler = ReplayScheduler(capacity=2)
    scheduler.push(torch.randint(0, 9, (3, 5)))
    scheduler.after_validation(1.0)
    restored = ReplayScheduler(capacity=2)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.phi == scheduler.phi and restored.cursor == scheduler.cursor
    assert all(torch.equal(a, b) for a, b in zip(restored.buffer, scheduler.buffer, strict=True))
