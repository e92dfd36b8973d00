"""`passes.search_share`: the share of the run a default search may take (issue 12, Build 4)."""

import pytest

from passes.search_share import Probe, RunLength, affordable_scores, run_seconds


def never_probed():
    raise AssertionError("the step time was measured although the run's length did not need it")


def test_a_stated_time_or_the_default_cap_is_the_run_without_measuring_a_step():
    assert run_seconds(RunLength(time=90.0, steps=5), never_probed) == (90.0, "the time budget")
    seconds, source = run_seconds(RunLength(default_minutes=10.0), never_probed)
    assert seconds == 600.0 and "default time cap" in source


def test_steps_and_tokens_are_priced_at_the_measured_step_time_scaled_to_distills_batch():
    probe = Probe(seconds_per_step=0.5, tokens_per_step=1024.0, batch_size=8)  # 8 blocks of 128 tokens
    seconds, _ = run_seconds(RunLength(steps=100, batch_size=16), lambda: probe)
    assert seconds == pytest.approx(100 * 0.5 * 2)  # twice the batch: twice the step time
    seconds, _ = run_seconds(RunLength(tokens=2048 * 100, batch_size=16), lambda: probe)
    assert seconds == pytest.approx(100 * 0.5 * 2)  # the same tokens, whatever the batch


def test_a_search_goes_on_when_prunes_candidates_and_min_scores_fit_its_time_and_else_says_why():
    assert affordable_scores(150.0, 6.0, needed=15, source="25% of the run") == (25, None)
    count, why = affordable_scores(60.0, 6.0, needed=15, source="25% of the run")
    assert count == 10 and why.startswith("25% of the run leaves 60 s for scoring: 10 scores") and "15" in why
    assert affordable_scores(-3.0, 6.0, needed=1, source="x")[0] == 0  # the share was spent before scoring
