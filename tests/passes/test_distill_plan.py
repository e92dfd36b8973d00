"""`distill`'s plan counts its held-out evaluations against the time cap (passes/distill_plan.py)."""

import math
import time
from types import SimpleNamespace

import pytest
import torch

import passes.distill_plan as distill_plan
from compressor.kd.budget import auto_eval_every
from passes.distill import Distill, DistillConfig
from tests.helpers import FakeClock

STEP_SECONDS, EVAL_SECONDS_PER_ITEM, TOKENS_PER_BATCH = 0.1, 0.02, 256


class CountingState:
    """Stands in for the adaptive scheduler: the evaluation feeds it, the planner must leave it as it was."""

    def __init__(self):
        self.validations = 0

    def state_dict(self):
        return {"validations": self.validations}

    def load_state_dict(self, state):
        self.validations = state["validations"]


def planned(monkeypatch, lm: bool, **train):
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(distill_plan, "measure_step_seconds", lambda *a, **k: (STEP_SECONDS, TOKENS_PER_BATCH))
    distill = Distill(DistillConfig(train=dict(batch_size=16, **train)))
    state, evaluated = CountingState(), []

    def evaluate(model):
        assert not model.training  # evaluated as the training loop evaluates: in eval mode
        evaluated.append(distill.eval_count)
        state.validations += 1
        clock.now += EVAL_SECONDS_PER_ITEM * distill.eval_count
        return {"perplexity": 1.0}

    student = torch.nn.Linear(2, 2)
    data = SimpleNamespace(batch_size=16, world=1, usable=10**7)
    accelerator = SimpleNamespace(num_processes=1, device=torch.device("cpu"), is_main_process=True)
    ctx = SimpleNamespace(run_dir=None)
    plan = distill.plan(ctx, student, data, None, accelerator, state, None, evaluate, lm)
    assert student.training and state.validations == 0  # the timing evaluation left no trace
    return distill, plan, evaluated


def evaluation_cost(distill: Distill, steps: int, lm: bool) -> float:
    """What the run's evaluations cost: one at step 0 and one every `eval_every` steps."""
    every = auto_eval_every(steps)
    return (steps // every + 1) * distill.evaluation_items(every, lm) * EVAL_SECONDS_PER_ITEM


@pytest.mark.parametrize("lm", [True, False])
def test_a_time_capped_plan_fits_its_evaluations_in_the_cap(monkeypatch, lm):
    distill, plan, evaluated = planned(monkeypatch, lm, time=120.0)
    assert len(evaluated) == 2  # one evaluation was timed, twice (the faster, warm call counts)
    total = plan.steps * STEP_SECONDS + evaluation_cost(distill, plan.steps, lm)
    assert total <= 120.0 * 1.02  # the run fits the cap with its evaluations counted (within the rounding)
    assert total > 120.0 * 0.9  # and is not cut far short of it
    assert plan.steps < math.floor(120.0 / STEP_SECONDS)  # shorter than a plan that forgot them
    assert plan.estimated_seconds == pytest.approx(total, rel=0.02)  # the printed estimate includes them


def test_evaluation_size_is_a_share_of_the_items_trained_between_two_within_bounds():
    distill = Distill(DistillConfig(train=dict(batch_size=16)))
    assert distill.evaluation_items(10, causal_lm=True) == math.ceil(0.15 * 10 * 16)  # 24 blocks
    assert distill.evaluation_items(1, causal_lm=True) == 8
    assert distill.evaluation_items(1000, causal_lm=True) == 64
    assert distill.evaluation_items(100, causal_lm=False) == math.ceil(0.15 * 100 * 16)  # 240 sentences
    assert distill.evaluation_items(10, causal_lm=False) == 128
    assert distill.evaluation_items(1000, causal_lm=False) == 512
    fixed = Distill(DistillConfig(train=dict(eval_blocks=5)))
    assert fixed.evaluation_items(10, causal_lm=True) == 5 and fixed.evaluation_items(10, causal_lm=False) == 40


def test_a_length_the_user_gave_is_kept_and_its_estimate_counts_the_evaluations(monkeypatch):
    distill, plan, _ = planned(monkeypatch, True, steps=400)
    assert plan.steps == 400 and plan.reason == "steps"
    assert plan.estimated_seconds == pytest.approx(400 * STEP_SECONDS + evaluation_cost(distill, 400, True))


def test_the_evaluation_is_timed_warm_not_on_its_first_call(monkeypatch):
    """A first evaluation that pays a one-off cost (10 s) must not be charged to each of the run's evaluations."""
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    distill = Distill(DistillConfig())
    calls = []

    def evaluate(model):
        clock.now += (10.0 if not calls else 0.0) + EVAL_SECONDS_PER_ITEM * distill.eval_count
        calls.append(1)

    seconds = distill.evaluation_seconds(torch.nn.Linear(2, 2), evaluate, CountingState())
    assert seconds == pytest.approx(EVAL_SECONDS_PER_ITEM * distill.eval_count)
    assert len(calls) == 2


def replan_after(train: dict, plan, seconds_per_step: float, writes: bool = False, run_dir=None):
    """What `distill`'s re-plan hook makes of `plan` when its first 20 steps took `seconds_per_step` each."""
    distill = Distill(DistillConfig(train=dict(batch_size=16, **train)))
    accelerator = SimpleNamespace(is_main_process=True)
    hook = distill.replanner(SimpleNamespace(run_dir=run_dir), plan, accelerator, writes)
    return distill, hook(20, 20 * seconds_per_step)


def test_a_replan_may_lengthen_a_run_up_to_the_data_cap_and_the_users_tokens(tmp_path):
    from compressor.kd.budget import TrainingPlan, plan_training

    plan = plan_training(tokens_per_step=100, steps_per_epoch=10, seconds_per_step=1.0, time_budget=100)
    assert (plan.steps, plan.reason) == (100, "time_budget")
    distill, steps = replan_after({}, plan, 0.5, run_dir=tmp_path)  # twice as fast: 200 steps fit, 20 epochs
    assert steps == 200 and distill.total_steps == 200 and TrainingPlan.load(tmp_path) == distill.plan_now
    assert replan_after({"max_epochs": 15}, plan, 0.5)[1] == 150
    assert replan_after({}, plan, 0.5, writes=True)[1] is None  # 10 epochs: past the 4 reads when the teacher writes
    assert replan_after({"tokens": 12_000}, plan, 0.5)[1] == 120  # the user's 12k tokens, capped by time: not past
    assert replan_after({}, plan, 2.0)[1] == 50  # slower: shorter


def test_a_replan_never_reads_past_the_teacher_written_pool():
    from dataclasses import replace

    from compressor.kd.budget import plan_training

    plan = replace(
        plan_training(tokens_per_step=100, steps_per_epoch=10, seconds_per_step=1.0, time_budget=100), generated=500
    )
    assert replan_after({}, plan, 0.5, writes=True)[1] is None  # the pool holds 100 steps: kept
    assert replan_after({}, plan, 2.0, writes=True)[1] == 50


def test_the_teachers_writing_overrun_comes_out_of_training(monkeypatch):
    from dataclasses import replace

    from compressor.kd.budget import plan_training

    clock = FakeClock()
    monkeypatch.setattr(distill_plan, "time", SimpleNamespace(perf_counter=clock))
    plan = replace(
        plan_training(tokens_per_step=100, steps_per_epoch=10, seconds_per_step=1.0, time_budget=100),
        generated=5,
        max_data_epochs=4,
        seconds_per_generated=2.0,  # 10 s of writing planned
        sequence_tokens=25,  # 4 sequences a step
    )
    distill = Distill(DistillConfig(train=dict(batch_size=4)))
    distill.real_blocks = torch.zeros(3, 8, dtype=torch.long)

    def teacher_generated(ctx, teacher, blocks, sequences):
        clock.now += 25.0  # the writing took 15 s more than planned
        return torch.ones(sequences, 8, dtype=torch.long)

    distill.teacher_generated = teacher_generated
    data = distill.augmented(SimpleNamespace(metrics={}, seed=0), None, plan, (0, 1))
    assert data.n_items == 3 * 4 + 5 and distill.writing_overrun == pytest.approx(15.0)
    hook = distill.replanner(SimpleNamespace(run_dir=None), plan, SimpleNamespace(is_main_process=True), True)
    assert hook(20, 20.0) == 85  # steps ran as probed: 100 s of training less the 15 s overrun
    assert "writing took 15 s more than estimated" in distill.plan_now.describe_replan()


def test_a_shorter_augmented_plan_trains_on_fewer_written_sequences_and_keeps_the_datas_reads(tmp_path):
    """100 planned steps of 4 sequences: 3 data blocks read 4 times (12) plus 388 written ones. Steps twice as slow:
    50 steps, 200 sequences, so 188 of the written ones; the data is still read 4 times, not 200 × 12/400 = 6."""
    from dataclasses import replace

    from compressor.kd.budget import TrainingPlan, plan_training

    plan = replace(
        plan_training(tokens_per_step=100, steps_per_epoch=10, seconds_per_step=1.0, time_budget=100),
        generated=388,
        max_data_epochs=4,
        sequence_tokens=25,
    )
    distill = Distill(DistillConfig(train=dict(batch_size=4)))
    distill.real_blocks = torch.zeros(3, 8, dtype=torch.long)
    distill.teacher_generated = lambda ctx, teacher, blocks, sequences: torch.ones(sequences, 8, dtype=torch.long)
    ctx = SimpleNamespace(metrics={}, seed=0, run_dir=tmp_path)
    pool = distill.augmented(ctx, None, plan, (0, 1))
    assert pool.n_items == 400
    hook = distill.replanner(ctx, plan, SimpleNamespace(is_main_process=True), True)
    assert hook(20, 40.0) == 50
    assert (distill.plan_now.generated, distill.plan_now.written, pool.n_items) == (188, 388, 200)
    assert ctx.metrics["data_mix"]["teacher_blocks"] == 188 and ctx.metrics["data_mix"]["data_reads"] == 4
    data_rows = sum(int((pool(i)["input_ids"].sum(dim=1) == 0).sum()) for i in range(50))  # one pass of the pool
    assert data_rows == 12  # each of the 3 data blocks 4 times
    assert "trains on 188 of the 388 sequences the teacher wrote" in distill.plan_now.describe_replan()
    resumed = Distill(DistillConfig(train=dict(batch_size=4)))  # a restart reads the stored, trimmed plan
    resumed.real_blocks = distill.real_blocks
    asked = []
    resumed.teacher_generated = lambda ctx, teacher, blocks, n: asked.append(n) or torch.ones(n, 8, dtype=torch.long)
    again = resumed.augmented(ctx, None, TrainingPlan.load(tmp_path), (0, 1))
    assert asked == [388] and again.n_items == 200  # the cached 388 are opened, 188 of them read
    assert all(torch.equal(again(i)["input_ids"], pool(i)["input_ids"]) for i in range(60))
