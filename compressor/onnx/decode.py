"""Decode speed as LLM users measure it (issue 14 §4): greedy generation with the KV cache at batch 1.

Figures: time to first token (prefill of the prompt and the first argmax) and decode tokens/s (the remaining
new tokens over their wall time), median over a few repeats. The prompt is token ids drawn from the vocabulary
(speed does not depend on which tokens), and generation never stops early: every run does the same work.

ONNX Runtime runs with IO binding: the `present.*` outputs stay as OrtValues on the provider's device and are
bound as the next step's `past_key_values.*`, so the cache is never copied through NumPy (on CUDA it never
leaves the GPU); only the logits come back to the host for the argmax.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from compressor.onnx.bench import token_ids

PROMPT_TOKENS = 128
NEW_TOKENS = 128


def session_device(session) -> str:
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def onnx_step(session, ids: np.ndarray, past: dict, past_len: int, device: str) -> tuple[np.ndarray, dict]:
    """One with-past decoder step through IO binding; returns last-position logits and the new cache."""
    from compressor.onnx.check import empty_past, input_names

    binding = session.io_binding()
    length = ids.shape[1]
    binding.bind_cpu_input("input_ids", ids)
    binding.bind_cpu_input("attention_mask", np.ones((1, past_len + length), dtype=np.int64))
    if "position_ids" in input_names(session):
        binding.bind_cpu_input("position_ids", np.arange(past_len, past_len + length, dtype=np.int64)[None])
    if past:
        for name, value in past.items():
            binding.bind_ortvalue_input(name, value)
    else:
        for name, value in empty_past(session, 1).items():
            binding.bind_cpu_input(name, value)
    names = [o.name for o in session.get_outputs()]
    for name in names:
        binding.bind_output(name, "cpu" if name == "logits" else device)
    session.run_with_iobinding(binding)
    outputs = dict(zip(names, binding.get_outputs(), strict=True))
    logits = outputs.pop("logits").numpy()[0, -1]
    return logits, {n.replace("present", "past_key_values"): v for n, v in outputs.items()}


def onnx_generate(session, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy tokens, time to first token (s) and time of the remaining steps (s)."""
    device = session_device(session)
    start = time.perf_counter()
    logits, past = onnx_step(session, prompt, {}, 0, device)
    tokens = [int(logits.argmax())]
    first = time.perf_counter() - start
    length = prompt.shape[1]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits, past = onnx_step(session, np.array([[tokens[-1]]], dtype=np.int64), past, length, device)
        length += 1
        tokens.append(int(logits.argmax()))
    return tokens, first, time.perf_counter() - start


@torch.inference_mode()
def torch_generate(model, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float, float]:
    """The same loop in PyTorch eager with the model's own cache (autocast-free: the model's dtype as loaded)."""
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ids = torch.from_numpy(prompt).to(device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    tokens = [int(out.logits[0, -1].argmax())]
    sync()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        step = torch.tensor([[tokens[-1]]], device=device)
        out = model(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    sync()
    return tokens, first, time.perf_counter() - start


def decode_speed(
    generate, vocab: int, prompt_tokens: int = PROMPT_TOKENS, new_tokens: int = NEW_TOKENS, repeats: int = 3
) -> dict:
    """Median time to first token and decode tokens/s of `generate(prompt, new_tokens)` over `repeats` runs
    (after one warm-up run that is not counted)."""
    prompt = token_ids(1, prompt_tokens, vocab, seed=2)
    generate(prompt, min(new_tokens, 4))
    firsts, rates = [], []
    for _ in range(repeats):
        _, first, rest = generate(prompt, new_tokens)
        firsts.append(first)
        rates.append((new_tokens - 1) / rest if rest > 0 else float("inf"))
    return {
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "time_to_first_token_ms": round(float(np.median(firsts)) * 1000, 2),
        "decode_tokens_per_s": round(float(np.median(rates)), 2),
    }


def onnx_decode_speed(session, vocab: int, **kwargs) -> dict:
    return {
        "runtime": f"ONNX Runtime ({', '.join(session.get_providers())}, IO binding)",
        **decode_speed(lambda p, n: onnx_generate(session, p, n), vocab, **kwargs),
    }


def torch_decode_speed(model, vocab: int, **kwargs) -> dict:
    device = next(model.parameters()).device
    return {
        "runtime": f"PyTorch eager ({device}, {next(model.parameters()).dtype})".replace("torch.", ""),
        **decode_speed(lambda p, n: torch_generate(model, p, n), vocab, **kwargs),
    }


def genai_generate(model, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float, float]:
    """The same greedy loop in ONNX Runtime GenAI (its own KV-cache management; a shared past/present buffer when
    the genai_config.json asks for one)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    length = prompt.shape[1] + new_tokens
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(prompt.astype(np.int32))
    generator.generate_next_token()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        generator.generate_next_token()
    rest = time.perf_counter() - start
    return [int(t) for t in generator.get_sequence(0)][prompt.shape[1] :], first, rest


def genai_decode_speed(onnx_dir, vocab: int, **kwargs) -> dict:
    """Decode speed of the folder's `genai_config.json` model file through ONNX Runtime GenAI."""
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    return {
        "runtime": f"ONNX Runtime GenAI {og.__version__}",
        **decode_speed(lambda p, n: genai_generate(model, p, n), vocab, **kwargs),
    }
