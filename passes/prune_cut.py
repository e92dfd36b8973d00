"""Cutting a model to a uniform shape by importance, and scoring the cut: what `prune`, its shape ranking, its
iterative schedule and `search` share (ALGORITHMS §3b, §8).

`prune_to` keeps the highest-scoring units of every axis (layers by block influence, query heads inside every kv
group, FFN units, one hidden index set for every reader and writer, or the hidden stream's principal directions);
`loss_to_teacher` is how far a cut model is from the unpruned one on the validation share.
"""

from __future__ import annotations

import torch

from compressor.data import lm_blocks
from compressor.evaluate import sentence_embeddings, similarity_correlation
from compressor.ir import ModelIR
from compressor.ir.rotation import rotate_hidden
from compressor.kd.divergences import forward_kl
from compressor.kd.losses import lm_cross_entropy
from passes.base import PassContext
from passes.prune_shapes import Shape, shape_of


def prune_to(ir: ModelIR, shape: Shape, scores: dict, hidden_method: str = "select") -> ModelIR:
    """`ir` cut to `shape`, keeping the highest-scoring units of every axis (layers first, then widths); the hidden
    stream by channel selection, or by projecting onto its principal directions (`scores["covariance"]`)."""
    teacher = shape_of(ir)
    layers = kept_layers(scores, shape.layers)
    student = ir.drop_layers(layers) if shape.layers != teacher.layers else ir
    cuts: dict = {}
    if shape.heads != teacher.heads:
        cuts["heads"] = {new: gqa_heads(scores["heads"][old], teacher, shape) for new, old in enumerate(layers)}
    if shape.ffn != teacher.ffn:
        cuts["ffn"] = {new: top(scores["ffn"][old], shape.ffn) for new, old in enumerate(layers)}
    if shape.hidden != teacher.hidden and hidden_method != "pca":
        cuts["hidden"] = top(scores["hidden"], shape.hidden)
    if cuts:  # one edit: a family may tie widths (BERT's heads and hidden) that only a joint cut keeps stock
        student = student.slice_groups(cuts)
    if shape.hidden != teacher.hidden and hidden_method == "pca":
        student, _ = rotate_hidden(student, scores["covariance"], shape.hidden)
    return student


def kept_layers(scores: dict[str, torch.Tensor], count: int) -> list[int]:
    """The `count` layers of highest block influence, in model order."""
    return top(scores["layers"], count)


def top(scores: torch.Tensor, count: int) -> list[int]:
    """The `count` highest-scoring units, in their original order (ties broken by index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])


def gqa_heads(scores: torch.Tensor, teacher: Shape, shape: Shape) -> list[int]:
    """Query heads to keep in one layer: the best `heads/kv` inside every kv group (GQA keeps the groups and the
    same count in each); with one query head per group, the best kv groups whole."""
    per_group = teacher.heads // teacher.kv_heads
    if per_group == 1:
        return top(scores, shape.heads)
    inside = shape.heads // shape.kv_heads
    kept = []
    for group in range(teacher.kv_heads):
        members = list(range(group * per_group, (group + 1) * per_group))
        kept += [members[i] for i in top(scores[members], inside)]
    return sorted(kept)


def embedding_params(ir: ModelIR) -> int:
    """Parameters in the embedding tables (what width pruning of the hidden stream reaches, depth does not)."""
    rows = ir.summary()["blocks"]
    return sum(r["params"] for r in rows if r["kind"] == "embed")


def validation_blocks(ir: ModelIR, ctx: PassContext, name: str, seq_len: int, count: int) -> torch.Tensor | list:
    """Held blocks from the validation share (never the reported held-out part) that score candidate shapes."""
    corpus = ctx.require_corpus(name)
    if ir.task == "causal-lm":
        return lm_blocks(ctx.tokenizer, corpus.validation, seq_len, max_blocks=count, name=corpus.valid_name)
    return list(corpus.validation)[: count * 8]


@torch.no_grad()
def loss_to_teacher(teacher, student, held, ctx: PassContext, seq_len: int) -> float:
    """Mean KL(p_T ‖ q_S) of next-token distributions per token (LMs), or, for encoders, 1 − the correlation of
    the student's pairwise sentence similarities with the teacher's (`similarity_correlation`) whatever the widths:
    this loss ranks shapes against each other, so every shape needs the same scale. (It was the mean cosine to the
    teacher for full-width shapes and this correlation for narrower ones: on MiniLM the two read 0.80 and 0.84 for
    the same student, a gap as large as the differences between candidate shapes.)"""
    if not isinstance(held, torch.Tensor):
        s, t = (sentence_embeddings(m, ctx.tokenizer, held, seq_len) for m in (student, teacher))
        return 1.0 - similarity_correlation(s, t)
    device = next(student.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(held), 8):
        ids = held[start : start + 8].to(device)
        log_p = torch.log_softmax(teacher(input_ids=ids).logits.float(), -1)
        log_q = torch.log_softmax(student(input_ids=ids).logits.float(), -1)
        total += float(forward_kl(log_q, log_p).sum())
        count += ids.numel()
    return total / max(count, 1)


def lm_gradients(model, batches: list[dict]) -> dict[str, torch.Tensor]:
    """∂CE/∂w of every parameter, summed over the calibration batches (first-order Taylor importance)."""
    model.zero_grad(set_to_none=True)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for batch in batches:
        ids = batch["input_ids"]
        lm_cross_entropy(model(input_ids=ids).logits[:, :-1], ids[:, 1:]).backward()
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def between(teacher: Shape, final: Shape, share: float, tied_head_size: int | None = None) -> Shape:
    """The shape `share` of the way from `teacher` to `final`, every count interpolated linearly and rounded
    (query heads by their count inside each kv group; a family whose attention width is its hidden size keeps
    hidden = heads × head size). share 0 is the teacher, 1 is `final`."""

    def lerp(a: int, b: int) -> int:
        return round(a + (b - a) * share)

    kv = lerp(teacher.kv_heads, final.kv_heads)
    inside = lerp(teacher.heads // teacher.kv_heads, final.heads // final.kv_heads)
    heads = inside * kv
    hidden = heads * tied_head_size if tied_head_size else lerp(teacher.hidden, final.hidden)
    return Shape(lerp(teacher.layers, final.layers), heads, kv, lerp(teacher.ffn, final.ffn), hidden)
