"""Token-level divergences between a teacher distribution p and a student distribution q (ALGORITHMS.md §7).

Every function takes fp32 log-probabilities [N, V] of N valid tokens and returns one value per token.
All are in KL form where the paper allows (zero exactly when p = q), and a term whose probability is 0
(a -inf logit: vocabulary padding) contributes 0 instead of NaN. `token_divergence` is the entry point:
it drops masked tokens, cuts padded vocabularies to the common size, applies the temperature (τ² scaling)
and computes in chunks of tokens under activation checkpointing, so no divergence keeps more than one
chunk of float32 [chunk, V] intermediates alive for the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DivergenceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def xlogy_ratio(prob: torch.Tensor, log_prob: torch.Tensor, log_other: torch.Tensor) -> torch.Tensor:
    """Σ_v prob·(log_prob − log_other), with 0·anything = 0 (so -inf padding never makes NaN)."""
    terms = prob * (log_prob - log_other)
    return torch.where(prob > 0, terms, torch.zeros_like(terms)).sum(-1)


def log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w·a + (1−w)·b) computed stably with logsumexp."""
    if weight_a <= 0:
        return log_b
    if weight_a >= 1:
        return log_a
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log(1 - weight_a))


def forward_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ p (log p − log q) (§7.1)."""
    return xlogy_ratio(log_p.exp(), log_p, log_q)


def reverse_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q‖p) = Σ q (log q − log p), the token-level MiniLLM form; gradients flow through both q's (§7.2)."""
    return xlogy_ratio(log_q.exp(), log_q, log_p)


def skew_kl(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """KL(p ‖ αp + (1−α)q) (DistiLLM SKL, §7.3, in KL form): α=0 is forward KL, α=1 is identically 0."""
    return xlogy_ratio(log_p.exp(), log_p, log_mixture(log_p, log_q, alpha))


def skew_reverse_kl(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """KL(q ‖ (1−α)p + αq) (DistiLLM SRKL, §7.3): α=0 is reverse KL, α=1 is identically 0."""
    return xlogy_ratio(log_q.exp(), log_q, log_mixture(log_q, log_p, alpha))


def generalized_jsd(log_q: torch.Tensor, log_p: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """JSD(β) = β·KL(p‖M) + (1−β)·KL(q‖M), M = βp + (1−β)q (GKD, §7.4).

    The endpoints are special-cased as TRL does: β=0 is KL(p‖q), β=1 is KL(q‖p).
    """
    if beta <= 0:
        return forward_kl(log_q, log_p)
    if beta >= 1:
        return reverse_kl(log_q, log_p)
    log_m = log_mixture(log_p, log_q, beta)
    return beta * xlogy_ratio(log_p.exp(), log_p, log_m) + (1 - beta) * xlogy_ratio(log_q.exp(), log_q, log_m)


def total_variation(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """½ Σ |p − q|, in [0, 1] (§7.6)."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


class ChunkedForwardKL(torch.autograd.Function):
    """Σ_tokens KL(softmax(t/τ) ‖ softmax(s/τ)) with an analytic backward: ∂/∂s = (q^τ − p^τ)/τ.

    Forward and backward walk the tokens in chunks and keep nothing but the inputs, so the loss costs about
    two softmaxes each way and never holds a float32 [N, V] intermediate — the default loss is as cheap as it
    can be (the generic path below recomputes through autograd instead).
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, temperature: float, chunk_size: int):
        total = student.new_zeros((), dtype=torch.float32)
        for start in range(0, student.shape[0], chunk_size):
            s = student[start : start + chunk_size].float()
            t = teacher[start : start + chunk_size].float()
            if temperature != 1.0:
                s, t = s / temperature, t / temperature
            log_q, log_p = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
            terms = log_p.exp().mul_(log_p.sub_(log_q))
            total += terms.nan_to_num_(0.0, 0.0, 0.0).sum()  # 0·(−inf − x) at padded entries is 0, not NaN
        ctx.save_for_backward(student, teacher)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        student, teacher = ctx.saved_tensors
        tau, grad = ctx.temperature, torch.empty_like(student)
        scale = grad_output / tau
        for start in range(0, student.shape[0], ctx.chunk_size):
            s = student[start : start + ctx.chunk_size].float()
            t = teacher[start : start + ctx.chunk_size].float()
            if tau != 1.0:
                s, t = s / tau, t / tau
            q = F.softmax(s, dim=-1)
            grad[start : start + ctx.chunk_size] = q.sub_(F.softmax(t, dim=-1)).mul_(scale).to(grad.dtype)
        return grad, None, None, None


def row_chunks(rows: torch.Tensor, chunk_size: int):
    """Slices of `rows` ([N, V], or [B, T, V] walked one sequence at a time) of at most `chunk_size` rows, as
    index tuples: a [B, T, V] view such as `logits[:, :-1]` is read in place instead of copied into [N, V]."""
    if rows.dim() == 2:
        for start in range(0, rows.shape[0], chunk_size):
            yield (slice(start, start + chunk_size),)
        return
    for b in range(rows.shape[0]):
        for start in range(0, rows.shape[1], chunk_size):
            yield (b, slice(start, start + chunk_size))


def logsumexp_into(rows: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp of `rows` using `scratch` (same shape) as the only working memory."""
    peak = rows.amax(-1, keepdim=True).clamp_min(torch.finfo(scratch.dtype).min)
    return torch.sub(rows, peak, out=scratch).exp_().sum(-1).log_().add_(peak.squeeze(-1))


class ChunkedCEAndForwardKL(torch.autograd.Function):
    """(Σ CE(s, y), Σ KL(p^τ ‖ q^τ)) over tokens in one pass: the default objective's two terms share the
    student's softmax, forward and backward, so KD adds one teacher softmax to CE rather than a second loss.
    Takes [N, V] rows with labels [N], or [B, T, V] views with labels [B, T] (every token valid).

    With row log-normalisers ℓ (of s, s/τ, t/τ): CE = ℓ_s − s_y and KL = Σ_v p^τ_v (t_v − s_v)/τ − ℓ_t^τ + ℓ_s^τ,
    so the forward keeps only those [N] vectors, and ∂/∂s = q·g_ce − g_ce·onehot(y) + (q^τ − p^τ)·g_kl/τ is written
    straight into the gradient. Two [chunk, V] scratch buffers, reused for every chunk, are all the working memory
    at τ = 1 (no [N, V] intermediate, no fresh large allocation per chunk); τ ≠ 1 adds the scaled chunk copies.
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, temperature: float, chunk_size: int):
        width = min(chunk_size, student.shape[-2])
        buffers = [torch.empty(width, student.shape[-1], dtype=torch.float32, device=student.device) for _ in "ab"]
        lse_s = torch.empty(labels.shape, dtype=torch.float32, device=student.device)
        lse_s_tau = lse_s if temperature == 1.0 else torch.empty_like(lse_s)
        lse_t_tau = torch.empty_like(lse_s)
        ce_total = student.new_zeros((), dtype=torch.float32)
        kl_total = student.new_zeros((), dtype=torch.float32)
        for index in row_chunks(student, chunk_size):
            s, t, y = student[index].float(), teacher[index].float(), labels[index]
            a, b = (buffer[: s.shape[0]] for buffer in buffers)
            lse_s[index] = logsumexp_into(s, a)
            ce_total += (lse_s[index] - s.gather(1, y[:, None]).squeeze(1)).sum()
            if temperature != 1.0:
                s, t = s / temperature, t / temperature
                lse_s_tau[index] = logsumexp_into(s, a)
            lse_t_tau[index] = logsumexp_into(t, b)
            p = torch.sub(t, lse_t_tau[index][:, None], out=a).exp_()  # teacher probabilities
            cross = torch.sub(t, s, out=b).mul_(p).nan_to_num_(0.0, 0.0, 0.0)  # 0·(−inf) at padding is 0
            kl_total += cross.sum() + (lse_s_tau[index] - lse_t_tau[index]).sum()
        ctx.save_for_backward(student, teacher, labels, lse_s, lse_s_tau, lse_t_tau)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return ce_total, kl_total

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor, grad_kl: torch.Tensor):
        student, teacher, labels, lse_s, lse_s_tau, lse_t_tau = ctx.saved_tensors
        tau = ctx.temperature
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
        width = min(ctx.chunk_size, student.shape[-2])
        scratch = torch.empty(width, student.shape[-1], dtype=torch.float32, device=student.device)
        kl_scale = grad_kl / tau
        for index in row_chunks(student, ctx.chunk_size):
            s, t, y = student[index].float(), teacher[index].float(), labels[index]
            t_tau = t if tau == 1.0 else t / tau
            p = torch.sub(t_tau, lse_t_tau[index][:, None], out=scratch[: s.shape[0]]).exp_().mul_(kl_scale)
            if grad.dtype == torch.float32:
                chunk = torch.sub(s, lse_s[index][:, None], out=grad[index])
            else:
                chunk = s - lse_s[index][:, None]
            if tau == 1.0:
                chunk.exp_().mul_(grad_ce + kl_scale).sub_(p)
            else:
                q_tau = (s / tau).sub_(lse_s_tau[index][:, None]).exp_().mul_(kl_scale)
                chunk.exp_().mul_(grad_ce).add_(q_tau).sub_(p)
            chunk.scatter_add_(1, y[:, None], (-grad_ce).expand(chunk.shape[0], 1).to(chunk.dtype))
            if chunk.dtype != grad.dtype:
                grad[index] = chunk.to(grad.dtype)
        return grad, None, None, None, None


def ce_and_forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE on `labels` (-100 ignored) and τ²·mean forward KL over the same tokens, computed together."""
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    mask = labels != -100
    student, teacher = student_logits[..., :vocab], teacher_logits[..., :vocab].detach()
    if bool(mask.all()) and student.dim() == 3:  # no padding: walk the [B, T, V] views, copy nothing
        targets = labels
    else:
        student, teacher = valid_rows(student, mask), valid_rows(teacher, mask)
        targets = labels.reshape(-1)[mask.reshape(-1)]
    count = max(1, int(mask.sum()))
    ce_sum, kl_sum = ChunkedCEAndForwardKL.apply(student, teacher, targets, float(temperature), chunk_size)
    return ce_sum / count, temperature**2 * kl_sum / count


DIVERGENCES: dict[str, DivergenceFn] = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "skew_kl": skew_kl,
    "skew_rkl": skew_reverse_kl,
    "jsd": generalized_jsd,
    "tvd": total_variation,
}


def valid_rows(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, V] -> [N, V] keeping only valid tokens (so padding costs nothing)."""
    flat = logits.reshape(-1, logits.shape[-1])
    if mask is None or bool(mask.all()):  # no padding: skip a gather (and its scatter in backward) of [N, V]
        return flat
    return flat[mask.reshape(-1).bool()]


def token_divergence(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 256,
    **params: float,
) -> torch.Tensor:
    """Mean over valid tokens of divergence `name` between softmax(z_T/τ) and softmax(z_S/τ), times τ².

    `taid` takes `t` (interpolation) and uses the target softmax((1−t)·stopgrad(z_S) + t·z_T) (§7.5).
    """
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    student = valid_rows(student_logits[..., :vocab], mask)
    teacher = valid_rows(teacher_logits[..., :vocab], mask).detach()
    if student.shape[0] == 0:
        return student_logits.sum() * 0.0

    def chunk_total(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = s.float() / temperature, t.float() / temperature
        log_q = F.log_softmax(s, dim=-1)
        if name == "taid":
            interpolation = params.get("t", 1.0)
            log_p = F.log_softmax((1 - interpolation) * s.detach() + interpolation * t, dim=-1)
            return forward_kl(log_q, log_p).sum()
        log_p = F.log_softmax(t, dim=-1)
        return DIVERGENCES[name](log_q, log_p, **params).sum()

    if name == "fkl" and not params:
        total = ChunkedForwardKL.apply(student, teacher, float(temperature), chunk_size)
        return temperature**2 * total / student.shape[0]
    if name != "taid" and name not in DIVERGENCES:
        raise KeyError(f"unknown divergence {name!r} (known: {', '.join([*DIVERGENCES, 'taid'])})")
    total = student.new_zeros((), dtype=torch.float32)
    for start in range(0, student.shape[0], chunk_size):
        s_chunk, t_chunk = student[start : start + chunk_size], teacher[start : start + chunk_size]
        if torch.is_grad_enabled() and s_chunk.requires_grad:
            total = total + checkpoint(chunk_total, s_chunk, t_chunk, use_reentrant=False)
        else:
            total = total + chunk_total(s_chunk, t_chunk)
    return temperature**2 * total / student.shape[0]
