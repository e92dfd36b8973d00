"""The quantized variants of `export`, each behind a gate against the fp32 student (issue 14 §1, §3).

With the target's choice, candidates are tried smallest first and the first that passes ships (the others are
never written); with an explicit list (`export: {quantize: [int4, int8w, fp32]}`), every listed variant that
passes is kept and the smallest passing one ships. A variant that fails its gate is deleted and its figures and
the reason stay in the report: the gate fails closed. When nothing passes, the fp32 `model.onnx` ships.

Gates: causal LMs by held-out perplexity against the fp32 ONNX student (relative increase within
`max_perplexity_increase`; mean KL and top-1 agreement reported beside it); encoders by mean embedding cosine;
classifiers by top-1 agreement; fp16 by the fp16 tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from compressor.data import builtin_documents, lm_blocks
from compressor.kd.train import say
from compressor.onnx.check import open_session, prefill_logits
from compressor.onnx.lm_gate import lm_gate_figures, lm_gate_verdict
from compressor.onnx.variants import write_variant

Judge = Callable[[object], tuple[bool, str, dict]]


def candidates(requested: str | list[str], causal: bool, target) -> tuple[list[str], bool]:
    """The variant names to try, and whether all are kept (an explicit list) or only the first that passes."""
    if requested == "none":
        return [], False
    if requested == "target":
        if causal and target.lm_weight_only:
            return list(target.lm_weight_only), False
        kind = {"dynamic-int8": "int8", "none": None}.get(target.quantization, target.quantization)
        return ([kind] if kind else []), False
    names = [requested] if isinstance(requested, str) else list(requested)
    return [n for n in names if n != "fp32"], True


def held_out_documents(ctx) -> list[str]:
    """The text every export check reads: the run's held-out share, else the tail of the built-in corpus."""
    return list(ctx.corpus.eval) if ctx.corpus else list(builtin_documents()[-200:])


def lm_gate_ids(ctx, sequences: int, length: int) -> np.ndarray:
    return lm_blocks(ctx.tokenizer, held_out_documents(ctx), length, max_blocks=sequences).numpy()


def make_judge(causal: bool, cfg, ctx, checker, fp32_session) -> Judge:
    """A function judging one quantized session against the fp32 student: (passed, sentence, figures)."""
    target = ctx.target
    if causal:
        ids = lm_gate_ids(ctx, cfg.gate_sequences, cfg.gate_length)
        reference = prefill_logits(fp32_session, ids)

        def judge_lm(session):
            figures = lm_gate_figures(reference, prefill_logits(session, ids), ids)
            return (*lm_gate_verdict(figures, cfg.max_perplexity_increase), figures)

        return judge_lm
    reference = checker.outputs(fp32_session)

    def judge(session):
        figures = checker.compare(checker.outputs(session), reference)
        if checker.task == "feature-extraction":
            value, bound, what = figures["mean_embedding_cosine"], target.int8_min_cosine, "mean embedding cosine"
        else:
            value, bound, what = figures["top1_agreement"], target.int8_min_top1, "top-1 agreement"
        ok = value >= bound
        return ok, f"{what} to fp32 {value:.4f} {'>=' if ok else '<'} {bound}", figures

    return judge


def fp16_judge(checker, fp32_session, target) -> Judge:
    reference = checker.outputs(fp32_session)

    def judge(session):
        figures = checker.compare(checker.outputs(session), reference)
        ok = figures["max_abs_diff"] <= target.tolerance("fp16") and figures.get("top1_agreement", 1.0) >= 0.99
        sentence = f"fp16 max abs diff to fp32 {figures['max_abs_diff']:.3g} (tolerance {target.tolerance('fp16')})"
        return ok, sentence, figures

    return judge


def write_and_judge(name: str, onnx_dir: Path, target, judge: Judge) -> dict:
    """Write one variant, run its gate, delete it when it fails; its figures either way."""
    file, settings = write_variant(name, onnx_dir / "model.onnx", onnx_dir, target)
    result = {"kind": name, "file": file.name, "bytes": graph_bytes(onnx_dir, file.name), "settings": settings}
    try:
        session = open_session(file, target.available_providers(), target.session_options())
    except Exception as exc:  # the CPU provider lacks some fp16 kernels: say so, do not pretend
        if name != "fp16":
            file.unlink()
            raise
        result.update(
            {
                "passed": True,
                "validated": False,
                "reason": f"fp16 model could not run on {', '.join(target.available_providers())} here "
                f"({type(exc).__name__}: {str(exc)[:160]}); not validated on this machine",
            }
        )
        return result
    ok, sentence, figures = judge(session)
    result.update({"passed": ok, "validated": True, "gate": sentence, "providers": session.get_providers(), **figures})
    if not ok:
        file.unlink()
        result["reason"] = f"{name} model failed its accuracy gate ({sentence}): not shipped"
    return result


def quantize_variants(cfg, causal: bool, ctx, onnx_dir: Path, checker, fp32_session, vocab: int = 0) -> dict:
    """Write and gate the variants asked for in `onnx_dir`; {"deploy_file", "tried"} (and "latency_choice" under a
    latency budget, where the file is chosen by its measured latency rather than its size)."""
    names, keep_all = candidates(cfg.quantize, causal, ctx.target)
    tried: list[dict] = []
    judge = make_judge(causal, cfg, ctx, checker, fp32_session) if names else None
    for name in names:
        gate = fp16_judge(checker, fp32_session, ctx.target) if name == "fp16" else judge
        result = write_and_judge(name, onnx_dir, ctx.target, gate)
        verdict = "passes" if result.get("passed") else "dropped"
        say(f"export: {name} {verdict}: {result.get('gate') or result.get('reason', '')}", "dim")
        tried.append(result)
        if result.get("passed") and not keep_all:
            break
    passing = [r for r in tried if r.get("passed")]
    deploy = min(passing, key=lambda r: r["bytes"])["file"] if passing else "model.onnx"
    if tried and not passing:
        tried[-1]["shipped_instead"] = "model.onnx (fp32): no quantized variant passed its gate"
    if ctx.budget.latency is None:
        return {"deploy_file": deploy, "tried": tried}
    files = ["model.onnx", *(r["file"] for r in passing)]
    deploy, choice = within_latency(onnx_dir, ctx.target, causal, vocab, files, float(ctx.budget.latency))
    say(f"export: latency budget {choice['budget_ms']:g} ms: ships {deploy} ({choice['p50_ms'][deploy]:.3f} ms)", "dim")
    return {"deploy_file": deploy, "tried": tried, "latency_choice": choice}


def within_latency(onnx_dir: Path, target, causal: bool, vocab: int, files: list[str], budget_ms: float):
    """Under a latency budget the smallest file is not the answer: a weight-only int8 graph dequantizes its
    weights at every call, and on a small model at batch 1 it measured 2.5× slower than fp32 here (stories260K
    student: 4.57 vs 1.83 ms). So the fp32 file and every variant that passed its gate are timed (batch 1, the
    target's sequence, p50 of 30), and the smallest that meets the budget ships; when none does, the fastest."""
    from compressor.onnx.bench import measure_session

    timed = {}
    for name in files:
        session = open_session(onnx_dir / name, target.available_providers(), target.session_options())
        figures = measure_session(session, causal, vocab, target.latency_seq, 1, warmup=3, runs=30)
        timed[name] = round(float(figures["latency"]["p50_ms"]), 4)
    meeting = [f for f in files if timed[f] <= budget_ms]
    deploy = min(meeting, key=lambda f: graph_bytes(onnx_dir, f)) if meeting else min(files, key=timed.get)
    return deploy, {"budget_ms": budget_ms, "p50_ms": timed, "met": bool(meeting), "seq": target.latency_seq}


def graph_bytes(directory: Path, name: str) -> int:
    """Size of an ONNX graph plus its external-data file, if any."""
    return sum(f.stat().st_size for f in directory.glob(f"{name}*") if f.is_file())
