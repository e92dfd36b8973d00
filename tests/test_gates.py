"""Hard-concrete gates and the expected-size Lagrangian (ALGORITHMS §4)."""

import math

import pytest
import torch

from compressor.gates import BETA, LEFT, RIGHT, HardConcrete, lagrangian, target_at


def test_log_alpha_plus_ten_keeps_everything_at_eval():
    gate = HardConcrete(7)
    with torch.no_grad():
        gate.log_alpha.fill_(10.0)
    gate.eval()
    mask = gate()
    assert torch.all(mask > 0.999) and float(gate.l0()) == pytest.approx(7, abs=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_eval_mask_has_exactly_round_n_minus_l0_zeros(seed):
    generator = torch.Generator().manual_seed(seed)
    gate = HardConcrete(40)
    with torch.no_grad():
        gate.log_alpha.copy_(3 * torch.randn(40, generator=generator))
    gate.eval()
    zeros = int((gate() == 0).sum())
    assert zeros == round(40 - float(gate.l0()))
    assert 0 < zeros < 40  # the draw exercises both sides


def test_expected_l0_is_the_closed_form_and_differentiable():
    gate = HardConcrete(3)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-2.0, 0.0, 2.0]))
    expected = sum(1 / (1 + math.exp(-(a - BETA * math.log(-LEFT / RIGHT)))) for a in (-2.0, 0.0, 2.0))
    l0 = gate.l0()
    assert float(l0) == pytest.approx(expected, rel=1e-6)
    l0.backward()
    assert torch.all(gate.log_alpha.grad > 0)  # opening any gate raises the expected count


def test_training_samples_are_in_the_unit_interval_and_follow_log_alpha():
    torch.manual_seed(0)
    gate = HardConcrete(2)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-3.0, 3.0]))
    samples = torch.stack([gate() for _ in range(400)])
    assert samples.min() >= 0 and samples.max() <= 1
    assert samples[:, 0].mean() < 0.2 < 0.8 < samples[:, 1].mean()
    assert (samples == 0).any() and (samples == 1).any()  # the stretch makes exact zeros and ones reachable


def test_initial_drop_rate_sets_log_alpha():
    gate = HardConcrete(1000, init_drop=0.5)
    assert abs(float(gate.log_alpha.mean())) < 0.01
    assert float(HardConcrete(1000, init_drop=0.01).log_alpha.mean()) == pytest.approx(math.log(99), abs=0.01)


def test_one_ascent_step_below_target_makes_lambda_1_negative():
    lambdas = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.AdamW([lambdas], lr=0.02, weight_decay=0.0, maximize=True)
    lagrangian(torch.tensor(0.1), 0.5, lambdas[0], lambdas[1]).backward()
    optimizer.step()
    assert lambdas[0] < 0 and lambdas[1] > 0
    assert float(lagrangian(torch.tensor(0.5), 0.5, lambdas[0], lambdas[1])) == 0.0  # zero on target


def test_target_ramps_linearly_then_holds():
    assert [target_at(s, 0.5, 10) for s in (0, 5, 10, 20)] == [0.0, 0.25, 0.5, 0.5]
