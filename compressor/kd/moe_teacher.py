"""MoE teachers for refinement distillation, "Every Expert Matters" (ALGORITHMS §5c).

The routing of a transformers MoE model (Mixtral, Qwen2-MoE, Qwen3-MoE) is replaced, while a context is open, by
one generic forward with three modes:
- `topk`: the model's own routing (softmax, top-k, renormalised when the family does) — standard KD;
- `sample`: Knowledge Augmentation — k experts drawn without replacement from softmax(router/τ), weighted by
  their router probabilities (renormalised like top-k); M such teacher passes give M teacher distributions;
- `dense`: the Student-Aware Router's teacher — every expert, weighted by the full router softmax.
SAR then trains only the teacher's routers, jointly with the student, by the KD loss plus the teacher's own LM
loss as a safeguard.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from compressor.kd.divergences import DIVERGENCES, valid_rows
from compressor.kd.losses import IGNORE_INDEX, lm_cross_entropy
from compressor.moe.routing import MODES, moe_blocks, routing_weights


def moe_adapter():
    """The registered MoE family's adapter (its blocks all share the router / experts accessors)."""
    from compressor.ir.families import ADAPTERS

    return next(a for a in ADAPTERS if a.is_moe)


def routed_forward(block: torch.nn.Module, hidden: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's output under `state["mode"]`: Σ_e w_e(x)·expert_e(x) (+ the gated shared expert)."""
    adapter = state.get("adapter") or moe_adapter()
    shape = hidden.shape
    x = hidden.reshape(-1, shape[-1])
    router_logits = adapter.router(block)(x)
    top_k, normalize = adapter.routing(block)
    weights = routing_weights(
        router_logits,
        top_k,
        normalize,
        state["mode"],
        state.get("temperature", 1.0),
        state.get("generator"),
    )
    out = torch.zeros_like(x)
    for index, expert in enumerate(adapter.experts(block)):
        tokens = weights[:, index].nonzero().squeeze(1) if state["mode"] != "dense" else None
        if tokens is not None and tokens.numel() == 0:
            continue
        if tokens is None:
            out = out + expert(x) * weights[:, index : index + 1].to(x.dtype)
        else:
            contribution = expert(x[tokens]) * weights[tokens, index, None].to(x.dtype)
            out = out.index_add(0, tokens, contribution)
    shared = adapter.shared_expert(block)
    if shared is not None:
        expert, gate = shared
        out = out + torch.sigmoid(gate(x)) * expert(x)
    return out.reshape(shape), router_logits


@contextlib.contextmanager
def teacher_routing(
    model: torch.nn.Module, mode: str, temperature: float = 1.0, generator: torch.Generator | None = None
) -> Iterator[dict]:
    """Route every MoE block of `model` by `mode` while the context is open; yields the mutable state."""
    if mode not in MODES:
        raise ValueError(f"unknown routing mode {mode!r} (known: {', '.join(MODES)})")
    from compressor.ir.families import adapter_of_model

    state = {"mode": mode, "temperature": temperature, "generator": generator, "adapter": adapter_of_model(model)}
    blocks = moe_blocks(model)
    originals = [block.forward for block in blocks]
    for block in blocks:
        block.forward = types.MethodType(lambda self, hidden: routed_forward(self, hidden, state), block)
    try:
        yield state
    finally:
        for block, original in zip(blocks, originals, strict=True):
            block.forward = original


@torch.no_grad()
def augmented_teacher_logits(
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,
    samples: int = 2,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> list[torch.Tensor]:
    """Knowledge Augmentation: M teacher forwards with sampled routing (greedy=True: the model's own top-k)."""
    with teacher_routing(teacher, "topk" if greedy else "sample", temperature, generator):
        return [teacher(input_ids=input_ids).logits for _ in range(samples)]


def router_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The routers' weights of every MoE block (what the Student-Aware Router trains)."""
    from compressor.ir.families import adapter_of_model

    adapter = adapter_of_model(model)
    return [p for block in moe_blocks(model) for p in adapter.router(block).parameters()]


def prepare_student_aware_router(teacher: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Freeze all of the teacher but its routers; returns the router parameters to optimise."""
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    routers = router_parameters(teacher)
    for parameter in routers:
        parameter.requires_grad_(True)
    return routers


def student_aware_router_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    teacher_lm_weight: float = 1.0,
    divergence: str = "fkl",
) -> tuple[torch.Tensor, dict[str, float]]:
    """(1−α)·CE(student) + α·D(p_T ‖ q_S) + λ·CE(teacher), with gradients reaching the teacher's logits
    (hence its routers) through D and its own CE — the joint SAR objective of §5c."""
    mask = labels != IGNORE_INDEX
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    log_q = F.log_softmax(valid_rows(student_logits[..., :vocab], mask).float(), dim=-1)
    log_p = F.log_softmax(valid_rows(teacher_logits[..., :vocab], mask).float(), dim=-1)
    kd = DIVERGENCES[divergence](log_q, log_p).mean()
    ce = lm_cross_entropy(student_logits, labels)
    teacher_ce = lm_cross_entropy(teacher_logits, labels)
    loss = (1 - alpha) * ce + alpha * kd + teacher_lm_weight * teacher_ce
    return loss, {"ce": float(ce.detach()), "kd": float(kd.detach()), "teacher_ce": float(teacher_ce.detach())}


class WithTeacherRouter(torch.nn.Module):
    """The student plus the teacher's routers as one module, so one optimizer, one checkpoint and one exact
    resume cover both; calls go to the student."""

    wraps_student = True

    def __init__(self, model: torch.nn.Module, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        from compressor.ir.families import adapter_of_model

        adapter = adapter_of_model(teacher)
        self.routers = torch.nn.ModuleList([adapter.router(block) for block in moe_blocks(teacher)])

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
