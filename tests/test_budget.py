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
    with pytest.raises(ValidationError, match="either layers or params"):
        Budget(layers=0.5, params=0.5)


def test_training_budgets_are_parsed_as_users_write_them():
    budget = Budget(train_tokens="12.3M", time="30m")
    assert budget.train_tokens == 12_300_000 and budget.time == 1800
    assert not budget.sized and Budget(params=0.5).sized
