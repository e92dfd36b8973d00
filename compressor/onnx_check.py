"""ONNX Runtime vs PyTorch on real inputs: the figures the export gate judges (DESIGN §1.3).

Causal LMs are checked twice: a prefill from an empty KV cache, then a continuation that feeds the ONNX
model's own `present.*` outputs back as `past_key_values.*`, compared with PyTorch on the full sequence.
That second step is what proves the exported KV cache works, not just the first forward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compressor.kd.losses import mean_pool

ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def open_session(onnx_path: Path, providers: list[str], options=None):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


def empty_past(session, batch: int) -> dict[str, np.ndarray]:
    """Zero-length past_key_values inputs shaped from the session's own input metadata."""
    feeds = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            _, heads, _, head_dim = spec.shape
            feeds[spec.name] = np.zeros((batch, heads, 0, head_dim), dtype=ORT_TO_NUMPY[spec.type])
    return feeds


def lm_step(session, ids: np.ndarray, past: dict[str, np.ndarray], past_len: int) -> tuple[np.ndarray, dict]:
    batch, length = ids.shape
    names = {spec.name for spec in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": np.ones((batch, past_len + length), dtype=np.int64), **past}
    if "position_ids" in names:
        feeds["position_ids"] = np.tile(np.arange(past_len, past_len + length, dtype=np.int64), (batch, 1))
    outputs = session.run(None, feeds)
    out_names = [o.name for o in session.get_outputs()]
    logits = outputs[out_names.index("logits")]
    present = {
        name.replace("present", "past_key_values"): value
        for name, value in zip(out_names, outputs, strict=True)
        if name.startswith("present")
    }
    return logits, present


@torch.no_grad()
def check_causal_lm(session, model, ids: torch.Tensor, prefill: int) -> dict:
    """Prefill `ids[:, :prefill]`, then continue with the rest through the ONNX KV cache."""
    reference = model(input_ids=ids).logits.float().numpy()
    first, past = lm_step(session, ids[:, :prefill].numpy(), empty_past(session, ids.shape[0]), 0)
    second, _ = lm_step(session, ids[:, prefill:].numpy(), past, prefill)
    onnx_logits = np.concatenate([first, second], axis=1).astype(np.float32)
    diff = np.abs(onnx_logits - reference)
    agreement = float((onnx_logits.argmax(-1) == reference.argmax(-1)).mean())
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff_kv_cache_step": float(diff[:, prefill:].max()),
        "top1_agreement": agreement,
        "positions": int(ids.numel()),
        "kv_cache_checked": True,
    }


@torch.no_grad()
def check_encoder(session, model, encoded: dict[str, torch.Tensor]) -> dict:
    """last_hidden_state on real tokens, and the cosine of the pooled sentence embeddings."""
    names = {spec.name for spec in session.get_inputs()}
    feeds = {k: v.numpy().astype(np.int64) for k, v in encoded.items() if k in names}
    if "token_type_ids" in names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    out_names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(out_names, session.run(None, feeds), strict=True))
    mask = encoded["attention_mask"].bool()
    reference = model(**{k: v for k, v in encoded.items()}, output_hidden_states=True)
    if "last_hidden_state" in outputs:
        onnx_hidden = torch.from_numpy(outputs["last_hidden_state"].astype(np.float32))
        ref_hidden = reference.hidden_states[-1].float()
        diff = (onnx_hidden - ref_hidden).abs()[mask]
        cos = F.cosine_similarity(
            mean_pool(onnx_hidden, encoded["attention_mask"]), mean_pool(ref_hidden, encoded["attention_mask"]), dim=-1
        )
        return {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "min_embedding_cosine": float(cos.min()),
            "sentences": int(mask.shape[0]),
        }
    onnx_logits = torch.from_numpy(outputs["logits"].astype(np.float32))
    ref_logits = reference.logits.float()
    return {
        "max_abs_diff": float((onnx_logits - ref_logits).abs().max()),
        "top1_agreement": float((onnx_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
        "sentences": int(mask.shape[0]),
    }
