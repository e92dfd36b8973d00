"""`distill`'s section of REPORT.md: how long it trained and why, on what, and which checkpoint it kept, so a
reader can tell a short run from a converged one and real data from teacher-written text."""

from __future__ import annotations

from compressor.kd.budget import LENGTH_REASONS, human_count, human_duration

STILL_IMPROVING = 0.01  # relative gain over the last fifth of the evaluations that says "train longer"


def more_training_verdict(evaluations: list[dict], mode: str, stopped: str | None) -> str | None:
    """Would more training help this student? Read off its held-out curve (issue 13 §1: "nothing tells the user
    whether more training would help"): early stopping says no; a best figure at the last evaluation that gained
    more than 1 % over the last fifth of the evaluations says yes; anything else has flattened. The cosine
    schedule's annealing also lowers the end of a curve, so "still improving" is a likely gain, not a promise.
    `mode`: "min" when lower is better (perplexity), "max" when higher is (cosine, accuracy, agreement)."""
    if stopped:
        return (
            "Held-out quality stopped improving, so the run stopped early: more training of this student is "
            "unlikely to help."
        )
    if len(evaluations) < 3:
        return None
    name = next(k for k in evaluations[-1] if k != "step")
    values = [e[name] for e in evaluations]
    start = values[-1 - max(1, len(values) // 5)]
    best_at_end = values[-1] == (min(values) if mode == "min" else max(values))
    gain = (start - values[-1]) / abs(start) if mode == "min" else (values[-1] - start) / abs(start)
    if best_at_end and gain > STILL_IMPROVING:
        return (
            f"Still improving when the planned length ran out ({name} {start:.4g} → {values[-1]:.4g} over the last "
            "fifth of the evaluations): a longer budget would likely give a better student (`--train-tokens` or "
            "`--time-budget`)."
        )
    return f"Held-out {name} had flattened by the end (under {STILL_IMPROVING:.0%} better over the last fifth)."


def distill_section(metrics: dict) -> list[str]:
    plan = metrics.get("plan")
    if not plan:
        return []
    lines = [
        "## Training",
        "",
        f"Planned {human_count(plan['tokens'])} tokens ({plan['steps']:,} steps of {plan['tokens_per_step']:,}), "
        f"set by the {LENGTH_REASONS.get(plan['reason'], plan['reason'])}"
        + (f", estimated {human_duration(plan['estimated_seconds'])}" if plan.get("estimated_seconds") else "")
        + ".",
    ]
    if metrics.get("replan"):
        lines.append(f"The probe's estimate was off: {metrics['replan']}.")
    mix = metrics.get("data_mix")
    if mix:
        lines.append(
            f"Data: your {mix['data_blocks']:,} blocks read {mix['data_reads']} times each, plus "
            f"{mix['teacher_blocks']:,} blocks ({human_count(mix['teacher_tokens'])} tokens) that the teacher wrote "
            "from prompts taken from your data (sequence-level KD): repeating a small data set many times overfits, "
            "fresh text from the teacher does not."
        )
    else:
        lines.append(f"Data: {plan.get('data_epochs', plan.get('epochs', 0)):.2f} passes over your data.")
    done = metrics.get("steps_done", plan["steps"])
    ran = f"Trained {done:,} steps ({human_count(metrics.get('tokens', 0))} tokens, {metrics.get('seconds', 0):.0f} s)"
    if metrics.get("stopped"):
        ran += f"; stopped early: {metrics['stopped']}"
    lines.append(ran + ".")
    best = metrics.get("best_step")
    if best is not None and metrics.get("evaluations"):
        name = next((k for k in metrics["evaluations"][-1] if k != "step"), "value")
        value = metrics.get("best_heldout") or 0.0
        lines.append(
            f"Kept the weights of step {best:,} (best {name} on the validation share, {value:.4g}); "
            "the validation share is a part of the training data, never the held-out part this report measures."
        )
    verdict = metrics.get("more_training")  # `more_training_verdict`, computed once by the run
    return lines + ([verdict] if verdict else []) + [""]
