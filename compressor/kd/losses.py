"""Distillation losses as pure functions of tensors (ALGORITHMS.md §7).

Conventions (ALGORITHMS.md, notation): token-level losses are summed over the vocabulary and averaged over
valid tokens (mask = labels != -100); softmax runs in float32; where a teacher and a student vocabulary
differ only by padding rows, both are cut to the common size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-token `values` over the tokens where `mask` is true (all tokens when mask is None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Forward KL with temperature (ALGORITHMS §7.1).

    L = τ² · Σ_v p^τ (log p^τ − log q^τ), p^τ = softmax(z_T/τ), q^τ = softmax(z_S/τ), averaged over valid
    tokens. The KL form (not the cross-entropy form) so that L = 0 exactly when the two agree; the gradient
    with respect to z_S is τ·(q^τ − p^τ) per token (divided by the token count). Positions where the teacher
    logit is -inf contribute 0 rather than NaN.
    """
    from compressor.kd.divergences import token_divergence

    return token_divergence("fkl", student_logits, teacher_logits, mask, temperature)


def lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over valid labels (labels already aligned with logits)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding: the mean of token states over real (non-pad) tokens, as sentence-transformers does."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def cosine_embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean(1 − cos(e_S, e_T)) over the batch: 0 when aligned, invariant to a positive scale of either side."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of hidden states per valid token (ALGORITHMS §7.9 with the identity projection)."""
    per_token = (student.float() - teacher.float()).pow(2).mean(-1)
    return masked_mean(per_token, mask)


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of the rows of `x` [..., N, d] with each other: [..., N, N]."""
    unit = F.normalize(x.float(), dim=-1)
    return unit @ unit.transpose(-1, -2)


def similarity_matrix_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the in-batch cosine-similarity matrices of embeddings [N, d_S] and [N, d_T]:
    a relation loss (MiniLM-v2 style, §7.10, on embeddings) that needs no equal width. 0 for equal embeddings,
    unchanged by a rotation or positive scale of either side."""
    return (cosine_matrix(student) - cosine_matrix(teacher)).pow(2).mean()


def token_relation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same relation per sequence between its tokens' hidden states [B, S, d] (pairs of real tokens only)."""
    pairs = (mask.unsqueeze(-1) * mask.unsqueeze(-2)).float()
    difference = (cosine_matrix(student) - cosine_matrix(teacher)).pow(2)
    return (difference * pairs).sum() / pairs.sum().clamp_min(1.0)


def encoder_kd_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    cosine_weight: float = 1.0,
    mse_weight: float = 1.0,
    relations: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Encoder distillation: cosine on mean-pooled embeddings plus MSE on last hidden states (pads excluded).
    A student narrower than its teacher (hidden pruning) has no common space to compare in: it learns the
    teacher's similarity structure instead, between the sentences of the batch and between each sentence's tokens
    (`similarity_matrix_loss`, `token_relation_loss`, in place of cosine and MSE, with the same weights).
    `relations` asks for that form whatever the widths: a comparison of shapes must train every one of them on the
    same objective (`search`'s short-distillation proxy)."""
    if relations or student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        pooled = similarity_matrix_loss(
            mean_pool(student_hidden, attention_mask), mean_pool(teacher_hidden, attention_mask)
        )
        tokens = token_relation_loss(student_hidden, teacher_hidden, attention_mask)
        parts = {"relation": float(pooled.detach()), "token_relation": float(tokens.detach())}
        return cosine_weight * pooled + mse_weight * tokens, parts
    cosine = cosine_embedding_loss(mean_pool(student_hidden, attention_mask), mean_pool(teacher_hidden, attention_mask))
    mse = hidden_mse(student_hidden, teacher_hidden, attention_mask.bool())
    parts = {"cosine": float(cosine.detach()), "mse": float(mse.detach())}
    return cosine_weight * cosine + mse_weight * mse, parts
