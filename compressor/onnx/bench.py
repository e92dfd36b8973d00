"""Latency and throughput of ONNX Runtime sessions and PyTorch models on synthetic inputs of fixed shape.

Figures: batch-1 latency p50/p90 at a sequence length, throughput at a larger batch, and for causal LMs the
first-token (prefill) and per-token (one decode step over a full cache) latency. Inputs are token ids drawn
from the vocabulary; speed does not depend on which tokens they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from compressor.onnx.check import empty_past, input_names, lm_step


def timed(fn: Callable[[], object], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3)}


def token_ids(batch: int, seq: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, max(4, vocab), size=(batch, seq), dtype=np.int64)


def encoder_feeds(session, ids: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in input_names(session):
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def measure_session(
    session, causal: bool, vocab: int, seq: int = 128, throughput_batch: int = 16, warmup: int = 3, runs: int = 20
) -> dict:
    """Latency (batch 1), throughput (`throughput_batch`), and for causal LMs first- and per-token latency."""
    one, many = token_ids(1, seq, vocab), token_ids(throughput_batch, seq, vocab, seed=1)
    result: dict = {"seq": seq, "throughput_batch": throughput_batch, "runs": runs}
    if causal:

        def prefill(ids):
            return lambda: lm_step(session, ids, empty_past(session, ids.shape[0]), 0)

        latency = timed(prefill(one), warmup, runs)
        _, past = lm_step(session, one, empty_past(session, 1), 0)
        step = np.array([[5]], dtype=np.int64)
        per_token = timed(lambda: lm_step(session, step, past, seq), warmup, runs)
        result["first_token"] = summary(latency)
        result["per_token"] = summary(per_token)
        batch_times = timed(prefill(many), 1, max(3, runs // 4))
    else:
        latency = timed(lambda: session.run(None, encoder_feeds(session, one)), warmup, runs)
        feeds = encoder_feeds(session, many)
        batch_times = timed(lambda: session.run(None, feeds), 1, max(3, runs // 4))
    result["latency"] = summary(latency)
    result["throughput_seq_per_s"] = round(throughput_batch / float(np.median(batch_times)), 2)
    return result


@torch.no_grad()
def measure_torch(
    model, causal: bool, vocab: int, seq: int = 128, throughput_batch: int = 16, warmup: int = 3, runs: int = 20
) -> dict:
    """The same figures for a PyTorch model in eager mode (the teacher as people run it today)."""
    device = next(model.parameters()).device
    one = torch.from_numpy(token_ids(1, seq, vocab)).to(device)
    many = torch.from_numpy(token_ids(throughput_batch, seq, vocab, seed=1)).to(device)

    def forward(ids):
        return lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids))

    result: dict = {
        "seq": seq,
        "throughput_batch": throughput_batch,
        "runs": runs,
        "latency": summary(timed(forward(one), warmup, runs)),
    }
    if causal:
        result["first_token"] = result["latency"]
        cache = model(input_ids=one, use_cache=True).past_key_values
        step = torch.tensor([[5]], device=device)
        mask = torch.ones(1, seq + 1, dtype=torch.long, device=device)

        def decode():
            model(input_ids=step, past_key_values=cache, attention_mask=mask)
            cache.crop(seq)  # back to a full prompt cache, so every step measures the same work

        result["per_token"] = summary(timed(decode, warmup, runs))
    batch_times = timed(forward(many), 1, max(3, runs // 4))
    result["throughput_seq_per_s"] = round(throughput_batch / float(np.median(batch_times)), 2)
    return result
