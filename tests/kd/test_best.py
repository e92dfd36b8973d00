"""Best held-out weights and early stopping (issue 13 §1)."""

from __future__ import annotations

import pytest
import torch

from compressor.kd.best import BestKeeper, BestState, improves
from compressor.kd.train import IndexedBatches, TrainConfig, train


@pytest.mark.parametrize(
    "value,best,mode,expected",
    [(9.0, 10.0, "min", True), (9.995, 10.0, "min", False), (11.0, 10.0, "max", True), (5.0, None, "max", True)],
)
def test_improvement_needs_more_than_the_relative_margin(value, best, mode, expected):
    assert improves(value, best, mode, 1e-3) is expected


def test_the_keeper_restores_the_best_weights_and_counts_patience(tmp_path):
    model = torch.nn.Linear(2, 1)
    keeper = BestKeeper("min", patience=2, run_dir=tmp_path)
    keeper.observe(10, 1.0, model)
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(5.0)
    keeper.observe(20, 2.0, model)
    assert not keeper.should_stop
    keeper.observe(30, 1.5, model)
    assert keeper.should_stop and keeper.state == BestState(10, 1.0, 2)
    assert keeper.restore(model) and torch.equal(model.weight, best)


def test_a_best_file_newer_than_the_resumed_checkpoint_is_dropped(tmp_path):
    model = torch.nn.Linear(2, 1)
    keeper = BestKeeper("min", patience=0, run_dir=tmp_path)
    keeper.observe(40, 1.0, model)
    resumed = BestKeeper("min", patience=0, run_dir=tmp_path)
    resumed.resume(BestState(20, 1.2, 0))  # the checkpoint was written before step 40's evaluation
    assert resumed.saved_step() is None and not resumed.restore(model)


def overfitting_problem():
    """A model that gets worse on held-out data as it trains: held-out targets are the negated training ones."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(-1, keepdim=True)
    data = IndexedBatches(64, 16, 0, lambda i: {"input_ids": x[i], "y": y[i]})

    def loss_fn(m, batch, step):
        return ((m(batch["input_ids"]) - batch["y"]) ** 2).mean(), {}

    def held_out(m):
        with torch.no_grad():
            return {"mse": float(((m(x) + y) ** 2).mean())}

    return model, data, loss_fn, held_out


def test_training_stops_early_and_returns_its_best_evaluation():
    model, data, loss_fn, held_out = overfitting_problem()
    start = held_out(model)["mse"]
    config = TrainConfig(steps=200, lr=0.05, eval_every=5, patience=3)
    result = train(model, data, loss_fn, config, show_progress=False, evaluate=held_out)
    assert result.stopped and "early stopping" in result.stopped
    assert result.steps_done < 200 and result.best.step is not None
    assert result.restored_best and held_out(model)["mse"] == pytest.approx(result.best.value)
    assert result.best.value <= start  # the step-0 evaluation is a floor


def test_a_time_limit_stops_the_run():
    model, data, loss_fn, held_out = overfitting_problem()
    result = train(model, data, loss_fn, TrainConfig(steps=10_000, lr=0.01, time_limit=0.0), show_progress=False)
    assert result.steps_done == 1 and "time budget" in result.stopped
