"""The speed figures every `compress model` report carries (issue 13 §4): the teacher as people run it today
(PyTorch eager) against the student as it ships (the deploy ONNX file on the target), measured on this machine.

A quick measurement (few runs; `compress bench` is the thorough one), beside the FLOPs ratio, so a reader sees
at once whether the FLOPs saved became time saved. When the target's hardware is absent it says so.
"""

from __future__ import annotations

from pathlib import Path


def measure_run_speed(
    teacher_model, deploy_file: Path, target, causal: bool, vocab: int, flops_ratio: float, runs: int = 10
) -> dict:
    """Teacher PyTorch vs student ONNX: latency (batch 1), throughput, per-token latency (LMs), speedups."""
    from compressor.onnx.bench import measure_torch

    result: dict = {
        "target": target.name,
        "seq": target.latency_seq,
        "throughput_batch": target.throughput_batch,
        "runs": runs,
        "flops_speedup": round(1 / flops_ratio, 3) if flops_ratio else None,
        "student_file": deploy_file.name,
    }
    student = target.measure(deploy_file, causal, vocab, runs=runs)
    if not student.get("measured"):
        return {**result, "measured": False, "reason": student.get("reason", "not measured")}
    device = next(teacher_model.parameters()).device
    teacher = measure_torch(
        teacher_model, causal, vocab, target.latency_seq, target.throughput_batch, warmup=2, runs=runs
    )
    result.update({"measured": True, "teacher": {"runtime": f"PyTorch eager ({device})", **teacher}})
    result["student"] = {"runtime": f"ONNX Runtime ({', '.join(student['providers'])})", **student}
    result["speedup"] = speedups(teacher, student, causal)
    if causal:
        result["decode"] = decode_speeds(teacher_model, deploy_file, target, vocab)
    return result


def decode_speeds(teacher_model, deploy_file: Path, target, vocab: int) -> dict:
    """Greedy decoding with the KV cache at batch 1 (issue 14 §4): teacher PyTorch, the fp32 ONNX student and
    the shipped file when it is another (a quantized variant)."""
    from compressor.onnx.check import open_session
    from compressor.onnx.decode import onnx_decode_speed, torch_decode_speed

    files = {"student_fp32": deploy_file.with_name("model.onnx")}
    if deploy_file.name != "model.onnx":
        files["student_shipped"] = deploy_file
    result = {"teacher": torch_decode_speed(teacher_model, vocab)}
    for name, file in files.items():
        session = open_session(file, target.available_providers(), target.session_options())
        result[name] = {"file": file.name, **onnx_decode_speed(session, vocab)}
    return result


def speedups(teacher: dict, student: dict, causal: bool) -> dict:
    """Teacher time ÷ student time (latency, per token) and student ÷ teacher throughput: above 1 is faster."""
    out = {
        "latency": round(teacher["latency"]["p50_ms"] / student["latency"]["p50_ms"], 3),
        "throughput": round(student["throughput_seq_per_s"] / teacher["throughput_seq_per_s"], 3),
    }
    if causal:
        out["per_token"] = round(teacher["per_token"]["p50_ms"] / student["per_token"]["p50_ms"], 3)
    return out


def speed_rows(speed: dict | None) -> list[str]:
    """Rows for the report's first table (teacher | student | ratio), and a line naming the measurement."""
    if not speed:
        return []
    if not speed.get("measured"):
        return [f"| measured speed | not measured: {speed.get('reason')} | | |"]
    t, s, up = speed["teacher"], speed["student"], speed["speedup"]
    rows = [
        f"| latency p50, batch 1 × {speed['seq']} (ms) | {t['latency']['p50_ms']} | {s['latency']['p50_ms']} "
        f"| **{up['latency']}× faster** |",
        f"| throughput, batch {speed['throughput_batch']} (sequences/s) | {t['throughput_seq_per_s']} "
        f"| {s['throughput_seq_per_s']} | **{up['throughput']}×** |",
    ]
    if "per_token" in up:
        rows.append(
            f"| per-token latency p50, cache of {speed['seq']} (ms) | {t['per_token']['p50_ms']} "
            f"| {s['per_token']['p50_ms']} | **{up['per_token']}× faster** |"
        )
    return rows + decode_rows(speed.get("decode"))


def decode_rows(decode: dict | None) -> list[str]:
    """Decode tokens/s and time to first token: teacher vs the shipped student (and the fp32 student beside it)."""
    if not decode:
        return []
    teacher = decode["teacher"]
    shipped = decode.get("student_shipped") or decode["student_fp32"]
    what = f"batch 1, prompt {teacher['prompt_tokens']}, {teacher['new_tokens']} new"
    rows = [
        f"| decode tokens/s, {what} | {teacher['decode_tokens_per_s']} | {shipped['decode_tokens_per_s']} "
        f"| **{shipped['decode_tokens_per_s'] / teacher['decode_tokens_per_s']:.2f}×** |",
        f"| time to first token (ms) | {teacher['time_to_first_token_ms']} | {shipped['time_to_first_token_ms']} "
        f"| {teacher['time_to_first_token_ms'] / shipped['time_to_first_token_ms']:.2f}× faster |",
    ]
    if "student_shipped" in decode:
        fp32 = decode["student_fp32"]
        rows.append(
            f"| decode tokens/s of the fp32 ONNX student | | {fp32['decode_tokens_per_s']} "
            f"| shipped {shipped['file']} is {shipped['decode_tokens_per_s'] / fp32['decode_tokens_per_s']:.2f}× it |"
        )
    return rows


def speed_note(speed: dict | None) -> list[str]:
    if not speed or not speed.get("measured"):
        return []
    return [
        "",
        f"Speed measured on this machine: teacher in {speed['teacher']['runtime']}, student `{speed['student_file']}` "
        f"in {speed['student']['runtime']}, {speed['runs']} runs each, target {speed['target']}. The FLOPs ratio "
        f"alone would predict {speed['flops_speedup']}× (`--no-bench` skips this; `compress bench` measures more).",
        *latency_budget_line(speed.get("latency_budget")),
    ]


def latency_budget_line(check: dict | None) -> list[str]:
    """Whether the shipped file met the `--budget latency=` asked for, as measured here."""
    if not check:
        return []
    verdict = "**met**" if check["met"] else "**not met** (the search measured fp32 shapes; see the search section)"
    return [
        "",
        f"Latency budget {check['ms']:g} ms: the shipped file measured {check['shipped_ms']} ms at batch 1, {verdict}.",
    ]
