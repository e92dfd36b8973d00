"""`kd.step_time`: the optimizer step's cost, timed on copies so the model is untouched."""

import time

import torch

from compressor.kd.step_time import sampled, update_seconds


def test_the_sample_takes_the_largest_tensors_within_the_limit_and_at_least_one():
    big, mid, small = (torch.nn.Parameter(torch.zeros(n)) for n in (100, 30, 5))
    assert sampled([small, big, mid], limit=140) == [big, mid, small]
    assert sampled([small, big, mid], limit=110) == [big, small]  # mid would pass the limit; small still fits
    assert sampled([small, big, mid], limit=10) == [big]  # one tensor even above the limit


def test_timing_the_update_changes_neither_the_weights_nor_the_gradients_and_scales_the_sample(monkeypatch):
    ticks = iter(range(1000))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))  # every timed step takes one tick
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(500, 32), torch.nn.Linear(32, 8))
    model(torch.arange(10)).sum().backward()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    state = torch.random.get_rng_state()
    total = sum(p.numel() for p in model.parameters())
    assert update_seconds(model, limit=1_000) == total / (500 * 32)  # the embedding alone timed, scaled to all
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
    frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    assert update_seconds(frozen) == 0.0
