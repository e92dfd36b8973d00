"""The run's budget: layer and parameter shares turned into a layer count, and its validation."""

import pytest
from pydantic import ValidationError

from compressor.budget import Budget, layers_for_budget
from compressor.errors import UserError
from compressor.ir import ModelIR
from tests.helpers import STORIES


def test_layer_budgets():
    ir = ModelIR.load(STORIES)
    assert layers_for_budget(ir, Budget(layers=0.6)) == 3
    with pytest.raises(UserError, match="fewer than one"):
        layers_for_budget(ir, Budget(layers=0.05))
    count = layers_for_budget(ir, Budget(params=0.7))
    assert ir.drop_layers(range(count)).summary()["totals"]["params"] <= 0.7 * ir.summary()["totals"]["params"]
    assert ir.drop_layers(range(count + 1)).summary()["totals"]["params"] > 0.7 * ir.summary()["totals"]["params"]


def test_a_budget_outside_zero_to_one_or_of_both_kinds_is_refused_when_made():
    with pytest.raises(ValidationError, match="greater than 0"):
        Budget(layers=0.0)
    with pytest.raises(ValidationError, match="give one of layers, params, flops or latency, not more than one"):
        Budget(layers=0.5, params=0.5)


def test_training_budgets_are_parsed_as_users_write_them():
    budget = Budget(train_tokens="12.3M", time="30m")
    assert budget.train_tokens == 12_300_000 and budget.time == 1800
    assert not budget.sized and Budget(params=0.5).sized


def test_budget_forms_as_users_write_them():
    from compressor.budget import parse_budget

    assert parse_budget("0.5") == {"params": 0.5} and parse_budget("layers=0.25") == {"layers": 0.25}
    assert parse_budget("params=0.5") == {"params": 0.5} and parse_budget("params=60M") == {"params": 60e6}
    assert parse_budget("60M") == {"params": 60e6} and parse_budget("flops=0.4") == {"flops": 0.4}
    for bad, fragment in [("depth=0.5", "unknown budget kind"), ("flops=half", "expected a parameter share"),
                          ("layers=1.5", "(0, 1]"), ("flops=1.5", "(0, 1]"),
                          ("params=1.5", "a count is a whole number")]:  # fmt: skip
        with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            parse_budget(bad)


def test_a_flops_budget_keeps_the_layers_whose_flops_fit():
    ir = ModelIR.load(STORIES)
    whole = ir.summary()["totals"]["flops_per_token"]
    count = layers_for_budget(ir, Budget(flops=0.6))
    assert ir.drop_layers(range(count)).summary()["totals"]["flops_per_token"] <= 0.6 * whole
    assert ir.drop_layers(range(count + 1)).summary()["totals"]["flops_per_token"] > 0.6 * whole
    with pytest.raises(ValidationError, match="not more than one"):
        Budget(flops=0.5, params=0.5)


def test_an_absolute_parameter_budget_is_a_share_of_the_teacher():
    ir = ModelIR.load(STORIES)
    total = ir.summary()["totals"]["params"]
    assert layers_for_budget(ir, Budget(params="200k")) == layers_for_budget(ir, Budget(params=200_000 / total))
    with pytest.raises(UserError, match="more than the teacher's"):
        layers_for_budget(ir, Budget(params="1M"))
