"""DisWOT training-free student scores, adapted to language models (ALGORITHMS §1, "LM adaptation").

DisWOT ranks candidate students without training them: at initialisation, how similar are the teacher's and the
student's sample relations (the relation term) and class semantics (the semantic term)? Both are distances
between row-normalised Gram matrices, so they need no equal width:

- relation: G = A Aᵀ over the same N token positions of both models' last hidden states (before the final
  norm; valid tokens only), each row L2-normalised; D_rel = ‖Ĝ_T − Ĝ_S‖²_F / N²;
- semantic: for the K most frequent target tokens, the LM-head gradient rows g = (Q − Y)ᵀ H (Q the softmax,
  Y the one-hot next tokens, H the final hidden states: no backward pass needed); C = g gᵀ [K, K], rows
  L2-normalised; D_sem = ‖Ĉ_T − Ĉ_S‖²_F / K².

The score is −(D_rel + D_sem): 0 (its maximum) when the two models are the same. The paper initialises both
nets at random ("random teacher", the default here) and we average over R seeds on one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

TERMS = ("relation", "semantic")


def row_normalised_gram(features: torch.Tensor) -> torch.Tensor:
    """A Aᵀ of `features` [N, d], each row L2-normalised (per row, not by the Frobenius norm: §1 pitfalls)."""
    gram = features.double() @ features.double().T
    return F.normalize(gram, dim=-1)


def relation_distance(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """D_rel = ‖Ĝ_T − Ĝ_S‖²_F / N² for features [N, d_T] and [N, d_S] of the same N positions. Unchanged by a
    positive scale of either side (row normalisation), 0 for equal features, symmetric."""
    if teacher.shape[0] != student.shape[0]:
        raise ValueError(f"relation_distance: {teacher.shape[0]} teacher rows vs {student.shape[0]} student rows")
    n = teacher.shape[0]
    return float((row_normalised_gram(teacher) - row_normalised_gram(student)).pow(2).sum() / (n * n))


def class_gradients(hidden: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, classes: torch.Tensor):
    """The LM head's cross-entropy gradient rows of `classes`: g = (Q − Y)ᵀ H restricted to them, [K, d], from
    final hidden states H [N, d], logits [N, V] and next tokens [N] (no backward pass)."""
    q = torch.softmax(logits.double(), dim=-1)[:, classes]
    y = (targets.unsqueeze(1) == classes.unsqueeze(0)).double()
    return (q - y).T @ hidden.double()


def semantic_distance(teacher_gradients: torch.Tensor, student_gradients: torch.Tensor) -> float:
    """D_sem = ‖Ĉ_T − Ĉ_S‖²_F / K² with C = g gᵀ of the class-gradient rows [K, d_T] and [K, d_S]."""
    k = teacher_gradients.shape[0]
    return float((row_normalised_gram(teacher_gradients) - row_normalised_gram(student_gradients)).pow(2).sum() / k**2)


def frequent_targets(targets: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` most frequent target tokens (ties by token id), the semantic term's classes."""
    values, counts = targets.unique(return_counts=True)
    order = sorted(range(len(values)), key=lambda i: (-int(counts[i]), int(values[i])))
    return values[order[:k]]


@torch.no_grad()
def lm_features(model, ids: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """What both terms read off one causal LM on `ids` [B, S]: per valid position (the last of each sequence
    has no target and is left out) the last layer's output before the final norm, the final hidden state
    (the LM head's input), the logits and the next token."""
    from compressor.ir.families import adapter_of_model

    adapter = adapter_of_model(model)
    captured: dict[str, torch.Tensor] = {}
    last = adapter.decoder_layers(model)[-1]
    head = model.get_output_embeddings()

    def on_last_layer(module, args, output):
        captured["pre_norm"] = output[0] if isinstance(output, tuple) else output

    def on_head(module, args):
        captured["final"] = args[0]

    hooks = [last.register_forward_hook(on_last_layer), head.register_forward_pre_hook(on_head)]
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        for hook in hooks:
            hook.remove()
    valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    valid = valid[:, :-1] & valid[:, 1:]
    return {
        "pre_norm": captured["pre_norm"][:, :-1][valid].float(),
        "final": captured["final"][:, :-1][valid].float(),
        "logits": logits[:, :-1][valid].float(),
        "targets": ids[:, 1:][valid],
    }


def diswot_distances(teacher: dict, student: dict, positions: torch.Tensor, classes: torch.Tensor) -> dict:
    """Both DisWOT distances between two models' `lm_features` on the same positions and classes."""
    relation = relation_distance(teacher["pre_norm"][positions], student["pre_norm"][positions])
    g_t = class_gradients(teacher["final"], teacher["logits"], teacher["targets"], classes)
    g_s = class_gradients(student["final"], student["logits"], student["targets"], classes)
    return {"relation": relation, "semantic": semantic_distance(g_t, g_s)}


def diswot_score(
    teacher_config,
    student_config,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    terms: Sequence[str] = TERMS,
    teacher_model=None,
    positions: int = 512,
    classes: int = 32,
) -> dict:
    """−(Σ terms) averaged over `seeds`, each seed initialising the student (and, without `teacher_model`, the
    teacher — the paper's random teacher — from the same seed) with transformers' default init (std =
    initializer_range; N(0, 1) overflows deep transformers, §1). Per seed, both models are compared on the same
    `positions` sampled token positions and the `classes` most frequent targets. Returns the score and the mean
    of each distance."""
    from transformers import AutoModelForCausalLM

    unknown = set(terms) - set(TERMS)
    if unknown or not terms:
        raise ValueError(f"diswot terms: {sorted(unknown) or 'none'} (known: {', '.join(TERMS)})")
    totals = {t: 0.0 for t in TERMS}
    for seed in seeds:
        torch.manual_seed(seed)
        teacher = teacher_model if teacher_model is not None else AutoModelForCausalLM.from_config(teacher_config)
        torch.manual_seed(seed)  # the same seed for both: an identical architecture gets identical weights
        student = AutoModelForCausalLM.from_config(student_config)
        t, s = lm_features(teacher.eval(), ids, mask), lm_features(student.eval(), ids, mask)
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(t["targets"]), generator=generator)[:positions]
        distances = diswot_distances(t, s, chosen, frequent_targets(t["targets"], classes))
        for term in TERMS:
            totals[term] += distances[term] / len(seeds)
    return {"score": -sum(totals[t] for t in terms), **{t: round(v, 6) for t, v in totals.items()}}
