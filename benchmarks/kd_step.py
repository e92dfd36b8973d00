"""KD step cost against a CE-only step, and the peak memory of the logit loss (issue: distillation engine).

Teacher about 2x the student (llama-style, hidden 512, 12 vs 3 layers, vocabulary 32k), one batch of
4 x 256 tokens, CPU fp32. Steps run in interleaved rounds; each ratio is the median over rounds of the KD
step against the CE step of the same round, with its spread. Prints one JSON object with ce_step_s,
kd_online_step_s, kd_cached_step_s, flop_bound (1 + N_teacher / (3 N_student), N = matmul parameters per
token), online_ratio, cached_ratio and loss_peak_mem_ratio (peak extra memory of KD-loss forward+backward
over CE's, each in a fresh process).

    python benchmarks/kd_step.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch

from compressor.onnx.bench import timed

VOCAB, HIDDEN, FFN, HEADS = 32000, 512, 1376, 8
HEAD_SCALE = 12.0
BATCH, SEQ = 4, 256


def model(layers: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        tie_word_embeddings=False,
        max_position_embeddings=SEQ,
    )
    return LlamaForCausalLM(config)


def matmul_params(m) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)


def interleaved(steps, warmup: int = 2, rounds: int = 12) -> list[list[float]]:
    """Times of each step, measured in alternating rounds so drift on the machine hits all alike."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for index, step in enumerate(steps):
            start = time.perf_counter()
            step()
            times[index].append(time.perf_counter() - start)
    return times


def ratio_spread(numerator: list[float], denominator: list[float]) -> dict:
    """Per-round ratios (each against the CE step of the same round): median, quartiles, min and max."""
    ratios = sorted(n / d for n, d in zip(numerator, denominator, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {
        "median": round(statistics.median(ratios), 4),
        "q1": round(q1, 4),
        "q3": round(q3, 4),
        "min": round(ratios[0], 4),
        "max": round(ratios[-1], 4),
    }


def step_times() -> dict:
    from compressor.kd.losses import lm_cross_entropy
    from compressor.kd.objective import LMObjective
    from compressor.kd.sparse import ce_and_sparse_kd, random_sampling_targets

    teacher, student = model(12, 0).eval(), model(3, 1)
    with torch.no_grad():  # a trained LM is confident: sharpen the random head to a realistic entropy (~2 nats)
        teacher.lm_head.weight.mul_(HEAD_SCALE)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        flat = teacher(input_ids=ids).logits[:, :-1].reshape(-1, VOCAB)
    cached_ids, cached_weights = random_sampling_targets(flat, 50, generator=torch.Generator().manual_seed(3))
    width = int((cached_ids >= 0).sum(-1).max())
    cached_ids, cached_weights = cached_ids[:, :width].contiguous(), cached_weights[:, :width].half()
    objective = LMObjective("fkl", alpha=0.5)

    def update(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def ce_step():
        update(lm_cross_entropy(student(input_ids=ids).logits[:, :-1], ids[:, 1:]))

    def online_step():
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids).logits[:, :-1]
        loss, _ = objective(student(input_ids=ids).logits[:, :-1], teacher_logits, ids[:, 1:], 0, 1)
        update(loss)

    def cached_step():
        logits = student(input_ids=ids).logits[:, :-1].reshape(-1, VOCAB)
        ce, kd = ce_and_sparse_kd(logits, ids[:, 1:].reshape(-1), cached_ids, cached_weights.float())
        update(0.5 * ce + 0.5 * kd)

    ce_times, online_times, cached_times = interleaved([ce_step, online_step, cached_step])
    ce, online, cached = (statistics.median(t) for t in (ce_times, online_times, cached_times))
    online_spread, cached_spread = ratio_spread(online_times, ce_times), ratio_spread(cached_times, ce_times)
    with torch.no_grad():
        teacher_forward = statistics.median(timed(lambda: teacher(input_ids=ids), warmup=2, runs=6))
        probs = torch.softmax(flat, -1)
        entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean())
    n_teacher, n_student = matmul_params(teacher), matmul_params(student)
    bound = 1 + n_teacher / (3 * n_student)
    return {
        "ce_step_s": round(ce, 4),
        "kd_online_step_s": round(online, 4),
        "kd_cached_step_s": round(cached, 4),
        "flop_bound": round(bound, 4),
        "online_ratio": online_spread["median"],
        "cached_ratio": cached_spread["median"],
        "online_over_flop_bound": round(online_spread["median"] / bound, 4),
        "online_ratio_spread": online_spread,
        "cached_ratio_spread": cached_spread,
        "rounds": len(ce_times),
        "teacher_forward_s": round(teacher_forward, 4),
        "teacher_entropy_nats": round(entropy, 3),
        "teacher_matmul_params": n_teacher,
        "student_matmul_params": n_student,
        "cached_tokens_per_position": round(float((cached_ids >= 0).sum(-1).float().mean()), 2),
        "batch": BATCH,
        "seq": SEQ,
        "vocab": VOCAB,
        "threads": torch.get_num_threads(),
    }


def resident_kib(field: str) -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def loss_memory(kind: str) -> int:
    """Peak extra resident memory (bytes) of one loss forward+backward on fixed logits, in this process.

    Inputs and the gradient buffer are allocated and touched first; then the kernel's high-water mark is reset
    (/proc/self/clear_refs = 5) so the peak measured is the loss's own.
    """
    from compressor.kd.losses import forward_kl, lm_cross_entropy

    tokens = BATCH * (SEQ - 1)
    student = torch.randn(tokens, VOCAB, requires_grad=True)
    teacher = torch.randn(tokens, VOCAB)
    labels = torch.randint(0, VOCAB, (tokens,))
    student.grad = torch.empty_like(student).fill_(0.0)  # exists in both cases: not the loss's cost
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    base = resident_kib("VmRSS")
    loss = lm_cross_entropy(student, labels) if kind == "ce" else forward_kl(student, teacher)
    loss.backward()
    return (resident_kib("VmHWM") - base) * 1024


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        print(loss_memory(sys.argv[2]))
        return 0
    result = step_times()
    peaks = {}
    for kind in ("ce", "kd"):
        out = subprocess.run([sys.executable, __file__, "--memory", kind], capture_output=True, text=True, check=True)
        peaks[kind] = int(out.stdout.strip().splitlines()[-1])
    result.update(
        {
            "loss_peak_bytes_ce": peaks["ce"],
            "loss_peak_bytes_kd": peaks["kd"],
            "loss_peak_mem_ratio": round(peaks["kd"] / max(1, peaks["ce"]), 3),
        }
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
