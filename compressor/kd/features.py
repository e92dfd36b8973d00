"""Feature-level distillation: hidden states through a projection and a layer map (FitNets, §7.9) and
MiniLM-v2 self-attention relations (§2, §7.10), which work for any student width."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compressor.kd.losses import masked_mean


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i learns from teacher layer j = round((i+1)·L_T/L_S) − 1 (the last maps to the last)."""
    return [(i, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


class HiddenProjector(torch.nn.Module):
    """W h_S + b per mapped layer: the identity when widths match, Xavier-initialised otherwise; dropped after."""

    def __init__(self, student_dim: int, teacher_dim: int, layers: int) -> None:
        super().__init__()
        self.maps = torch.nn.ModuleList(torch.nn.Linear(student_dim, teacher_dim) for _ in range(layers))
        for linear in self.maps:
            torch.nn.init.zeros_(linear.bias)
            if student_dim == teacher_dim:
                torch.nn.init.eye_(linear.weight)
            else:
                torch.nn.init.xavier_uniform_(linear.weight)

    def forward(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.maps[index](hidden)


def hidden_state_loss(
    student_hidden: list[torch.Tensor],
    teacher_hidden: list[torch.Tensor],
    projector: HiddenProjector,
    pairs: list[tuple[int, int]],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1/|M|) Σ_{(i,j)∈M} MSE(W_ij h_S,i + b, h_T,j) over valid tokens (projector None: already projected)."""
    losses = []
    for k, (i, j) in enumerate(pairs):
        projected = student_hidden[i] if projector is None else projector(k, student_hidden[i].float())
        diff = (projected.float() - teacher_hidden[j].float()).pow(2).mean(-1)
        losses.append(masked_mean(diff, mask))
    return torch.stack(losses).mean()


def relation_matrices(
    x: torch.Tensor, relation_heads: int, attention_mask: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """R_a = softmax(X_a X_aᵀ/√d_r + mask) for relation heads a: [B, T, D] -> [B, A, T, T] (rows sum to 1)."""
    batch, length, width = x.shape
    if width % relation_heads:
        raise ValueError(f"width {width} is not divisible by {relation_heads} relation heads")
    d_r = width // relation_heads
    heads = x.float().view(batch, length, relation_heads, d_r).transpose(1, 2)
    scores = heads @ heads.transpose(-1, -2) / math.sqrt(d_r)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
    if causal:
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return F.softmax(scores, dim=-1)


def minilm_relation_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    relation_heads: int,
    attention_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Σ over X ∈ {Q, K, V} of the mean over relation heads and valid query rows of KL(R_T ‖ R_S)."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        log_s = relation_matrices(s, relation_heads, attention_mask, causal).clamp_min(1e-30).log()
        r_t = relation_matrices(t, relation_heads, attention_mask, causal)
        kl = torch.where(r_t > 0, r_t * (r_t.clamp_min(1e-30).log() - log_s), torch.zeros_like(r_t)).sum(-1)
        rows = None if attention_mask is None else attention_mask.bool()[:, None, :].expand_as(kl)
        total = total + masked_mean(kl, rows)
    return total


class WithProjector(torch.nn.Module):
    """The student plus its FitNets projections, trained together (so DDP sees the projections in forward);
    `out.projected` holds W·h_S for each mapped layer. Only `.model` is kept after training."""

    wraps_student = True

    def __init__(self, model: torch.nn.Module, projector: HiddenProjector, pairs: list[tuple[int, int]]) -> None:
        super().__init__()
        self.model, self.projector, self.pairs = model, projector, pairs

    def forward(self, **inputs):
        out = self.model(**inputs, output_hidden_states=True)
        out.projected = [self.projector(k, out.hidden_states[i + 1]) for k, (i, _) in enumerate(self.pairs)]
        return out


def inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """Through DDP's `.module` and a wrapper's `.model` to the transformers (or PEFT) model."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif getattr(model, "wraps_student", False):  # WithProjector, WithTeacherRouter
            model = model.model
        else:
            return model


class CaptureQKV:
    """Forward hooks on the last layer's query/key/value projections: their outputs, for relation losses."""

    def __init__(self, model: torch.nn.Module, enabled: bool = True) -> None:
        self.model, self.enabled, self.outputs, self.handles = inner_model(model), enabled, {}, []

    def __enter__(self) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return self.outputs
        from compressor.ir.families import adapter_of_model

        adapter = adapter_of_model(self.model)
        last = adapter.decoder_layers(self.model)[-1]
        try:
            found = adapter.attention_projections(last)
        except KeyError:
            raise ValueError("relation loss: cannot find query/key/value projections in the last layer") from None
        for role, module in found.items():
            self.handles.append(module.register_forward_hook(self.keep(role)))
        return self.outputs

    def keep(self, role: str):
        def hook(module, args, output):
            self.outputs[role] = output

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
