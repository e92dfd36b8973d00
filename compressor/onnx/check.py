"""ONNX Runtime against PyTorch (or against another ONNX model) on real inputs: the figures the export gates judge.

Causal LMs are run as they will be deployed: a prefill from an empty KV cache, then a continuation that feeds
the model's own `present.*` outputs back as `past_key_values.*`; and greedy generation token by token through
the cache, which must produce exactly PyTorch's tokens. That is what proves the exported cache works.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def open_session(onnx_path: Path, providers: list[str], options=None):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


def input_names(session) -> set[str]:
    return {spec.name for spec in session.get_inputs()}


def empty_past(session, batch: int) -> dict[str, np.ndarray]:
    """Zero-length past_key_values inputs shaped from the session's own input metadata (a graph that leaves the
    head size symbolic, as ONNX Runtime GenAI's builder does, has it in the genai_config.json beside it)."""
    feeds = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            _, heads, _, head_dim = spec.shape
            head_dim = head_dim if isinstance(head_dim, int) else genai_head_size(Path(session._model_path).parent)
            feeds[spec.name] = np.zeros((batch, heads, 0, head_dim), dtype=ORT_TO_NUMPY[spec.type])
    return feeds


@functools.lru_cache(maxsize=32)
def genai_head_size(folder: Path) -> int:
    """The head size from the genai_config.json in `folder` (read once per folder, not at every prefill)."""
    import json

    config = folder / "genai_config.json"
    try:
        return int(json.loads(config.read_text())["model"]["decoder"]["head_size"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder}: the KV cache head size is symbolic and {config} does not give it") from exc


def lm_step(session, ids: np.ndarray, past: dict[str, np.ndarray], past_len: int) -> tuple[np.ndarray, dict]:
    """One forward of a with-past decoder: logits for `ids` and the updated cache."""
    batch, length = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones((batch, past_len + length), dtype=np.int64), **past}
    if "position_ids" in input_names(session):
        feeds["position_ids"] = np.tile(np.arange(past_len, past_len + length, dtype=np.int64), (batch, 1))
    outputs = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    present = {
        n.replace("present", "past_key_values"): v
        for n, v in zip(names, outputs, strict=True)
        if n.startswith("present")
    }
    return outputs[names.index("logits")], present


def lm_logits(session, ids: np.ndarray, prefill: int) -> np.ndarray:
    """Logits for every position: prefill `ids[:, :prefill]`, then the rest through the returned cache.

    One sequence at a time: a continuation of several tokens over a cache is what chunked prefill and
    speculative decoding do, and graphs built for decoding (GroupQueryAttention) accept it only at batch 1."""
    rows = []
    for row in ids:
        first, past = lm_step(session, row[None, :prefill], empty_past(session, 1), 0)
        second, _ = lm_step(session, row[None, prefill:], past, prefill)
        rows.append(np.concatenate([first, second], axis=1))
    return np.concatenate(rows, axis=0).astype(np.float32)


def prefill_logits(session, ids: np.ndarray) -> np.ndarray:
    """Logits for every position of `ids` in one prefill from an empty cache."""
    return lm_step(session, ids, empty_past(session, ids.shape[0]), 0)[0].astype(np.float32)


def greedy_tokens(session, prompt: np.ndarray, new_tokens: int) -> list[int]:
    """Greedy decoding of one prompt [1, T] through the ONNX KV cache, one token per step."""
    logits, past = lm_step(session, prompt, empty_past(session, 1), 0)
    length, tokens = prompt.shape[1], []
    for _ in range(new_tokens):
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        logits, past = lm_step(session, np.array([[token]], dtype=np.int64), past, length)
        length += 1
    return tokens


def encoder_output(session, encoded: dict[str, np.ndarray]) -> np.ndarray:
    """last_hidden_state (feature extraction) or logits (classification) for a tokenized batch."""
    names = input_names(session)
    feeds = {k: v.astype(np.int64) for k, v in encoded.items() if k in names}
    if "token_type_ids" in names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    return (outputs["last_hidden_state"] if "last_hidden_state" in outputs else outputs["logits"]).astype(np.float32)


@torch.no_grad()
def torch_lm_logits(model, ids: np.ndarray) -> np.ndarray:
    return model(input_ids=torch.from_numpy(ids)).logits.float().numpy()


@torch.no_grad()
def torch_encoder_output(model, encoded: dict[str, np.ndarray]) -> np.ndarray:
    out = model(**{k: torch.from_numpy(v) for k, v in encoded.items()}, output_hidden_states=True)
    return (out.logits if hasattr(out, "logits") else out.hidden_states[-1]).float().numpy()


@torch.no_grad()
def torch_greedy_tokens(model, prompt: np.ndarray, new_tokens: int) -> list[int]:
    """Plain argmax decoding with PyTorch's own cache: no generation-config processors (which would, e.g.,
    suppress EOS), so both sides decode by the same rule."""
    out = model(input_ids=torch.from_numpy(prompt), use_cache=True)
    tokens = []
    for _ in range(new_tokens):
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def compare_logits(candidate: np.ndarray, reference: np.ndarray) -> dict:
    diff = np.abs(candidate - reference)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float((candidate.argmax(-1) == reference.argmax(-1)).mean()),
    }


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    return (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)


def compare_hidden(candidate: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict:
    """Differences on real tokens only, and the cosine of the mean-pooled sentence embeddings."""
    diff = np.abs(candidate - reference)[mask.astype(bool)]
    a, b = mean_pooled(candidate, mask), mean_pooled(reference, mask)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mean_embedding_cosine": float(cos.mean()),
        "min_embedding_cosine": float(cos.min()),
    }
