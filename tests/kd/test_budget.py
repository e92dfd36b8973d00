"""The training plan (issue 13 §1): what decides the length, and the parsers for budgets as users write them."""

from __future__ import annotations

import math

import pytest

from compressor.errors import UserError
from compressor.kd.budget import (
    Augmentation,
    TrainingPlan,
    auto_eval_every,
    parse_duration,
    parse_tokens,
    plan_training,
    replanned,
)


@pytest.mark.parametrize(
    "text,value", [("2000000", 2_000_000), ("500k", 500_000), ("12.3M", 12_300_000), ("1G", 10**9), (64, 64)]
)
def test_token_counts_as_users_write_them(text, value):
    assert parse_tokens(text) == value


@pytest.mark.parametrize("text", ["", "many", "-5", "0", "1.5x"])
def test_bad_token_counts_name_the_flag(text):
    with pytest.raises(UserError, match="--train-tokens"):
        parse_tokens(text)


@pytest.mark.parametrize("text,expected", [("90", 90), ("90s", 90), ("30m", 1800), ("1.5h", 5400), ("2min", 120)])
def test_durations_as_users_write_them(text, expected):
    parsed = parse_duration(text)
    assert parsed == expected


@pytest.mark.parametrize("text", ["soon", "0m", "-1h", "5d"])
def test_bad_durations_name_the_flag(text):
    with pytest.raises(UserError, match="--time-budget"):
        parse_duration(text)


def test_explicit_steps_fix_the_length_and_set_no_hard_stop():
    plan = plan_training(tokens_per_step=2048, steps_per_epoch=50, seconds_per_step=0.5, steps=300)
    assert (plan.steps, plan.reason, plan.time_limit) == (300, "steps", None)
    estimate = plan.estimated_seconds  # a product of the plan's inputs, not a timing
    assert plan.tokens == 300 * 2048 and plan.epochs == 6.0 and estimate == 150


def test_a_token_budget_is_rounded_up_to_whole_steps():
    plan = plan_training(tokens_per_step=1000, steps_per_epoch=10, seconds_per_step=None, train_tokens=10_500)
    assert plan.steps == 11 and plan.reason == "train_tokens" and plan.tokens >= 10_500


def test_default_length_is_max_epochs_when_it_fits_the_default_time():
    plan = plan_training(tokens_per_step=100, steps_per_epoch=7.5, seconds_per_step=0.1, max_epochs=4)
    assert plan.steps == 30 and plan.reason == "max_epochs"
    assert plan.time_limit == pytest.approx(600 * 1.2)


def test_default_length_is_capped_by_the_default_time():
    plan = plan_training(tokens_per_step=100, steps_per_epoch=1000, seconds_per_step=2.0, default_seconds=60)
    assert plan.steps == 30 and plan.reason == "default_time"


def test_a_time_budget_caps_a_token_budget_but_never_lengthens_it():
    capped = plan_training(
        tokens_per_step=100, steps_per_epoch=10, seconds_per_step=1.0, train_tokens=10_000, time_budget=20
    )
    assert capped.steps == 20 and capped.reason == "time_budget" and capped.time_limit == pytest.approx(24)
    short = plan_training(
        tokens_per_step=100, steps_per_epoch=10, seconds_per_step=1.0, train_tokens=500, time_budget=20
    )
    assert short.steps == 5 and short.reason == "train_tokens"


def test_the_plan_survives_a_restart(tmp_path):
    plan = plan_training(tokens_per_step=64, steps_per_epoch=3, seconds_per_step=0.25, time_budget=10)
    plan.save(tmp_path)
    assert TrainingPlan.load(tmp_path) == plan
    assert TrainingPlan.load(tmp_path / "elsewhere") is None
    assert "about" in plan.describe("cpu") and "time budget" in plan.describe("cpu")


@pytest.mark.parametrize("steps", [1, 19, 100, 1171])
def test_about_twenty_evaluations_per_run(steps):
    every = auto_eval_every(steps)
    assert every >= 5 and math.ceil(steps / every) <= 20


def test_augmentation_reads_each_data_sequence_at_most_its_cap_and_writes_the_rest():
    augment = Augmentation(real_items=100, items_per_step=8, max_data_epochs=4, seconds_per_sequence=0.01)
    plan = plan_training(
        tokens_per_step=8 * 32, steps_per_epoch=12.5, seconds_per_step=0.1, train_tokens=250 * 8 * 32, augment=augment
    )
    assert plan.reason == "train_tokens" and plan.steps == 250
    assert plan.generated == 250 * 8 - 4 * 100  # each of the 100 data sequences read 4 times, the teacher the rest
    assert plan.data_epochs == 4 and plan.generated_tokens == plan.generated * 32
    assert "teacher first writes" in plan.describe("cpu")


def test_with_teacher_written_text_the_default_length_is_the_time_cap_not_the_epoch_cap():
    augment = Augmentation(real_items=100, items_per_step=8, max_data_epochs=4, seconds_per_sequence=0.01)
    settings = dict(tokens_per_step=8 * 32, steps_per_epoch=12.5, seconds_per_step=0.1, default_seconds=600.0)
    plain = plan_training(**settings)
    plan = plan_training(**settings, augment=augment)
    assert plain.reason == "max_epochs" and plain.steps == 250  # 20 epochs of the data
    assert plan.reason == "default_time" and plan.steps > plain.steps
    spent = plan.steps * 0.1 + plan.generated * 0.01
    one_more = (plan.steps + 1) * 0.1 + augment.generated(plan.steps + 1) * 0.01
    assert spent <= 600.0 < one_more  # every step the ten minutes afford, the writing paid from them
    assert plan.data_epochs == 4


def test_augmentation_is_not_used_while_the_data_covers_the_plan():
    augment = Augmentation(real_items=1000, items_per_step=8, max_data_epochs=4, seconds_per_sequence=0.01)
    plain = plan_training(tokens_per_step=256, steps_per_epoch=125, seconds_per_step=0.1, train_tokens=256 * 300)
    plan = plan_training(
        tokens_per_step=256, steps_per_epoch=125, seconds_per_step=0.1, train_tokens=256 * 300, augment=augment
    )
    assert plan == plain and plan.generated == 0


@pytest.mark.parametrize("seed", range(20))
def test_a_time_cap_pays_for_the_writing_too(seed):
    import random

    rng = random.Random(seed)
    augment = Augmentation(
        real_items=rng.randint(8, 400),
        items_per_step=rng.choice([4, 8, 16]),
        max_data_epochs=rng.randint(1, 4),
        seconds_per_sequence=rng.uniform(0.001, 0.2),
    )
    step = rng.uniform(0.01, 0.5)
    limit = rng.uniform(5, 120)
    plan = plan_training(
        tokens_per_step=256, steps_per_epoch=augment.real_items / augment.items_per_step, seconds_per_step=step,
        time_budget=limit, train_tokens=256 * 10_000, augment=augment,
    )  # fmt: skip
    spent = plan.steps * step + plan.generated * augment.seconds_per_sequence
    assert plan.steps == 1 or spent <= limit + 1e-9
    one_more = (plan.steps + 1) * step + augment.generated(plan.steps + 1) * augment.seconds_per_sequence
    assert plan.reason == "time_budget" and one_more > limit  # and it takes all the time it can


def time_capped_plan(**given) -> TrainingPlan:
    plan = plan_training(tokens_per_step=100, steps_per_epoch=1000, seconds_per_step=1.0, time_budget=200, **given)
    assert (plan.steps, plan.reason) == (200, "time_budget")
    return plan


def test_a_replan_keeps_the_planned_training_seconds():
    plan = time_capped_plan()
    slower = replanned(plan, done=20, seconds=25.0, most_steps=10**6)  # 1.25 s a step, not 1.0
    assert slower.steps == 160 and slower.steps * slower.seconds_per_step == pytest.approx(200)
    assert (slower.replanned_at, slower.probe_seconds_per_step, slower.reason) == (20, 1.0, "time_budget")
    assert "re-planned at step 20 to 160 steps" in slower.describe_replan()
    faster = replanned(plan, done=20, seconds=16.0, most_steps=230)  # 0.8 s a step: 250 fit, the cap allows 230
    assert faster.steps == 230


def test_a_replan_gives_the_writing_overrun_back_from_training():
    plan = time_capped_plan()  # 200 steps planned at 1.0 s
    on_time = replanned(plan, done=20, seconds=20.0, most_steps=10**6, writing_overrun=40.0)
    assert on_time.steps == 160  # the steps ran as probed; the 40 s the writing overran come out of training
    assert on_time.writing_overrun == 40.0 and "writing took 40 s more than estimated" in on_time.describe_replan()
    # 1.25 s a step alone would cut the plan to 160 steps; a cached pool saved the 100 s of writing, which pays
    # for the slower steps up to the pool's 200: the plan keeps its length
    assert replanned(plan, done=20, seconds=25.0, most_steps=200, writing_overrun=-100.0) is None
    assert replanned(plan, done=20, seconds=20.0, most_steps=10**6, writing_overrun=5.0) is None  # within 5 %


def test_a_replan_leaves_user_lengths_close_estimates_and_early_steps_alone():
    fixed = plan_training(tokens_per_step=100, steps_per_epoch=10, seconds_per_step=1.0, steps=300)
    assert replanned(fixed, done=30, seconds=90.0, most_steps=10**6) is None  # steps given: never re-sized
    plan = time_capped_plan()
    assert replanned(plan, done=20, seconds=20.8, most_steps=10**6) is None  # within 5 %
    assert replanned(plan, done=5, seconds=50.0, most_steps=10**6) is None  # too few steps to measure
    assert plan.describe_replan() is None
    squeezed = replanned(plan, done=20, seconds=400.0, most_steps=10**6)  # 20 s a step: 10 fit, 20 are done
    assert squeezed.steps == 21


def test_a_replanned_plan_survives_a_restart(tmp_path):
    new = replanned(time_capped_plan(), done=20, seconds=25.0, most_steps=10**6)
    new.save(tmp_path)
    assert TrainingPlan.load(tmp_path) == new
