"""Quality figures of a quantized causal LM against its fp32 self on held-out text (issue 14 §3).

Top-1 agreement alone says little about an LM: on flat next-token distributions a harmless rounding flips the
argmax, and a damaged model can keep the argmax while its probabilities go wrong. What users feel is held-out
perplexity, and what distillation measures is KL between next-token distributions, so the gate reports all
three and judges on the relative perplexity increase (default bound 3 %). Pure NumPy on logits arrays.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def next_token_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean negative log-likelihood of ids[:, 1:] under logits[:, :-1] (nats per token)."""
    logp = log_softmax(logits[:, :-1].astype(np.float64))
    picked = np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return float(-picked.mean())


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over positions of KL(p_reference || p_candidate) in nats: zero iff the distributions agree."""
    p_log, q_log = log_softmax(reference.astype(np.float64)), log_softmax(candidate.astype(np.float64))
    return float((np.exp(p_log) * (p_log - q_log)).sum(-1).mean())


def lm_gate_figures(reference: np.ndarray, candidate: np.ndarray, ids: np.ndarray) -> dict:
    """Perplexities, their relative increase, mean KL and top-1 agreement of `candidate` against `reference`."""
    ref_ppl, cand_ppl = float(np.exp(next_token_nll(reference, ids))), float(np.exp(next_token_nll(candidate, ids)))
    return {
        "perplexity_fp32": round(ref_ppl, 4),
        "perplexity": round(cand_ppl, 4),
        "perplexity_increase": round(cand_ppl / ref_ppl - 1, 5),
        "mean_kl": round(mean_kl(reference, candidate), 6),
        "top1_agreement": round(float((reference.argmax(-1) == candidate.argmax(-1)).mean()), 5),
        "gate_tokens": int(ids[:, 1:].size),
    }


def lm_gate_verdict(figures: dict, max_increase: float) -> tuple[bool, str]:
    """Pass when the relative perplexity increase is within the bound; the sentence for the report either way."""
    ok = bool(np.isfinite(figures["perplexity"])) and figures["perplexity_increase"] <= max_increase
    sign = "<=" if ok else ">"
    return ok, (
        f"held-out perplexity {figures['perplexity_fp32']} -> {figures['perplexity']} "
        f"(+{figures['perplexity_increase']:.2%} {sign} {max_increase:.0%}), mean KL {figures['mean_kl']:.4g} nats, "
        f"top-1 agreement {figures['top1_agreement']:.3f} over {figures['gate_tokens']} tokens"
    )
