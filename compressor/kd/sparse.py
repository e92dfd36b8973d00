"""Sparse teacher targets for offline caches: Random-Sampling KD (unbiased, §7.7) and top-k (biased baseline).

Each position keeps a few token ids and weights (int32 ids, small float weights), a tiny fraction of V.
The student loss keeps the log-softmax over the full vocabulary (not renormalised over the kept ids), so
RS-KD's expected gradient equals the forward-KL gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compressor.kd.divergences import valid_rows


def random_sampling_targets(
    teacher_logits: torch.Tensor,
    draws: int = 50,
    proposal_temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of [N, V] logits: draw `draws` tokens from softmax(z/t_s) with replacement; each unique token i
    gets w_i ∝ count_i·p_i/q_i, normalised to sum 1 (t_s = 1 gives count_i/draws, unbiased: E[w_i] = p_i).

    Returns ids [N, draws] (int64, -1 where unused) and weights [N, draws] (float32, 0 where unused).
    """
    logits = teacher_logits.float()
    proposal = F.softmax(logits / proposal_temperature, dim=-1)
    samples = torch.multinomial(proposal, draws, replacement=True, generator=generator)
    counts = torch.zeros_like(proposal).scatter_add_(1, samples, torch.ones_like(samples, dtype=proposal.dtype))
    weights = counts * F.softmax(logits, dim=-1) / proposal.clamp_min(1e-30)
    weights = weights / weights.sum(-1, keepdim=True)
    kept = min(draws, weights.shape[-1])
    values, ids = weights.topk(kept, dim=-1)
    ids = torch.where(values > 0, ids, torch.full_like(ids, -1))
    return ids, values


def top_k_targets(teacher_logits: torch.Tensor, k: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most probable tokens with their probabilities renormalised: biased (hurts calibration)."""
    probs = F.softmax(teacher_logits.float(), dim=-1)
    values, ids = probs.topk(k, dim=-1)
    return ids, values / values.sum(-1, keepdim=True)


def sparse_kd_loss(
    student_logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L = −Σ_{i∈S} w_i·log q(i), with log q over the full vocabulary, averaged over valid tokens.

    `student_logits` is [B, T, V] (with `mask` [B, T]) or already [N, V]; ids/weights are [N, K] for the
    valid tokens in order.
    """
    rows = valid_rows(student_logits, mask) if student_logits.dim() == 3 else student_logits
    log_q = F.log_softmax(rows.float(), dim=-1)
    picked = log_q.gather(1, ids.clamp_min(0).long())
    return -(weights.float() * picked * (ids >= 0)).sum(-1).mean()


class ChunkedCEAndSparseKD(torch.autograd.Function):
    """(Σ CE, Σ sparse KD) over tokens with one logsumexp per row and an analytic backward.

    With log q_i = z_i − lse(z): CE = lse − z_y and KD = Σ_i w_i (lse − z_i), so
    ∂/∂z = q·(g_ce + g_kd·Σw) − g_ce·onehot(y) − g_kd·Σ_i w_i·onehot(i).
    The backward writes that straight into the gradient buffer chunk by chunk: no [N, V] log-softmax is kept
    and no zero-filled buffers are scattered into, so the loss costs what CE's own softmax costs.
    """

    @staticmethod
    def forward(ctx, student, labels, ids, weights, chunk_size: int):
        compute = torch.promote_types(student.dtype, torch.float32)  # fp32 softmax, fp64 kept for gradcheck
        lse = torch.empty(student.shape[0], dtype=compute, device=student.device)
        for start in range(0, student.shape[0], chunk_size):
            lse[start : start + chunk_size] = torch.logsumexp(student[start : start + chunk_size].to(compute), dim=-1)
        used = weights.to(compute) * (ids >= 0)
        safe_ids = ids.clamp_min(0).long()
        label_logits = student.gather(1, labels[:, None]).squeeze(1).to(compute)
        picked = student.gather(1, safe_ids).to(compute)
        ce_total = (lse - label_logits).sum()
        kd_total = (lse * used.sum(-1) - (used * picked).sum(-1)).sum()
        ctx.save_for_backward(student, labels, safe_ids, used, lse)
        ctx.chunk_size = chunk_size
        return ce_total, kd_total

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor, grad_kd: torch.Tensor):
        student, labels, ids, used, lse = ctx.saved_tensors
        grad = torch.empty_like(student)
        coefficient = grad_ce + grad_kd * used.sum(-1)  # [N]
        for start in range(0, student.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            chunk = grad[rows]
            if chunk.dtype == lse.dtype:
                torch.sub(student[rows], lse[rows, None], out=chunk).exp_().mul_(coefficient[rows, None])
            else:  # half-precision logits: the softmax still runs in fp32
                chunk.copy_((student[rows].to(lse.dtype) - lse[rows, None]).exp_().mul_(coefficient[rows, None]))
        grad.scatter_add_(1, labels[:, None], (-grad_ce).expand(grad.shape[0], 1).to(grad.dtype))
        grad.scatter_add_(1, ids, (-grad_kd * used).to(grad.dtype))
        return grad, None, None, None, None


def ce_and_sparse_kd(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE and mean sparse KD (−Σ w_i log q_i) over the same tokens, sharing one logsumexp.

    With log q_i = z_i − logsumexp(z): CE = lse − z_y and KD = lse − Σ w_i z_i (Σ w = 1), so the mix costs one
    pass over the vocabulary — a cached-logit KD step costs what a CE step costs. `student_logits` [N, V],
    `labels` [N] (no -100), ids/weights [N, K] with -1/0 where unused.
    """
    count = max(1, student_logits.shape[0])
    ce_sum, kd_sum = ChunkedCEAndSparseKD.apply(student_logits, labels, ids, weights, chunk_size)
    return ce_sum / count, kd_sum / count
