"""`distill`'s section of REPORT.md: how long it trained and why, on what, and which checkpoint it kept, so a
reader can tell a short run from a converged one and real data from teacher-written text."""

from __future__ import annotations

from compressor.kd.budget import LENGTH_REASONS, human_count, human_duration


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
    return lines + [""]
