"""DPHuBERT-style joint distillation and structured pruning for `prune` (`method: joint`, ALGORITHMS §4).

A copy of the teacher learns hard-concrete gates on its attention heads (whole kv groups under GQA, so every kept
group keeps its query heads) and FFN units while it distils from the unpruned teacher (forward KL on the
logits). An expected-size Lagrangian drives the expected parameter count to the budget; its multipliers take
gradient-ascent steps (a max-min problem). At the end the gates turn deterministic, are projected onto one
count per layer (stock configs cannot load per-layer widths), the kept gates' soft values are folded into the
consumer columns (the attention and FFN output projections), and the model is sliced. The hidden width is not
gated (§4).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from compressor.errors import UserError
from compressor.gates import HardConcrete, lagrangian, target_at
from compressor.ir import ModelIR
from passes.prune_proxy import batch_kl, cycled_batch
from passes.prune_shapes import Shape, ShapeCost, shape_of


@dataclass(frozen=True)
class JointSettings:
    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-4  # weights (§4)
    gate_lr: float = 0.02  # log α (§4)
    lambda_lr: float = 0.02  # λ₁, λ₂, ascent (§4: lr −0.02)
    ramp_share: float = 0.5  # share of the steps over which the sparsity target ramps up
    head_drop: float = 0.01  # initial drop rates m (§4)
    ffn_drop: float = 0.5
    seed: int = 0


class GatedModel:
    """Hard-concrete gates hooked into a materialized llama-like model: the attention output projection's input
    is multiplied by the head gates (expanded over head_dim), the FFN output projection's input by the unit gates."""

    def __init__(self, ir: ModelIR, model, settings: JointSettings) -> None:
        self.ir, self.model = ir, model
        adapter = ir.adapter
        self.heads, self.kv_heads, self.head_dim = adapter.attention_shape(ir.config)
        self.per_group = self.heads // self.kv_heads
        self.ffn = adapter.unit_counts(ir.config)["ffn"]
        generator = torch.Generator().manual_seed(settings.seed)
        layers = adapter.decoder_layers(model)
        device = next(model.parameters()).device
        self.head_gates = torch.nn.ModuleList(
            HardConcrete(self.kv_heads, settings.head_drop, generator) for _ in layers
        ).to(device)
        self.ffn_gates = torch.nn.ModuleList(HardConcrete(self.ffn, settings.ffn_drop, generator) for _ in layers).to(
            device
        )
        self.handles = []
        for i, layer in enumerate(layers):
            attention_out = adapter.attention_output_projection(layer)
            down = adapter.ffn_output_projection(layer)
            self.handles.append(attention_out.register_forward_pre_hook(self.scaler(self.head_mask, i)))
            self.handles.append(down.register_forward_pre_hook(self.scaler(self.ffn_mask, i)))

    def head_mask(self, layer: int) -> torch.Tensor:
        """One value per query-head channel: the layer's kv-group gates repeated over their query heads."""
        return self.head_gates[layer]().repeat_interleave(self.per_group * self.head_dim)

    def ffn_mask(self, layer: int) -> torch.Tensor:
        return self.ffn_gates[layer]()

    @staticmethod
    def scaler(mask_of, layer: int):
        def hook(module, args):
            return (args[0] * mask_of(layer).to(args[0].dtype),)

        return hook

    def train(self, mode: bool = True) -> None:
        self.head_gates.train(mode)
        self.ffn_gates.train(mode)

    def gate_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.head_gates.parameters()) + list(self.ffn_gates.parameters())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ExpectedSize:
    """E[#params] under the gates: what never shrinks (embeddings, norms, head) plus, per layer, the expected
    kept query heads × one query head's parameters (its kv share included) and kept FFN units × one unit's."""

    def __init__(self, ir: ModelIR) -> None:
        teacher = shape_of(ir)
        self.total = ir.summary()["totals"]["params"]
        cost = ShapeCost(ir)
        full = cost(teacher)
        # parameters per query head and per FFN unit, read off the exact counts of two one-unit-smaller shapes
        per_group = teacher.heads // teacher.kv_heads
        fewer_groups = replace(teacher, heads=teacher.heads - per_group, kv_heads=teacher.kv_heads - 1)
        self.group = (full - cost(fewer_groups)) / teacher.layers
        self.unit = (full - cost(replace(teacher, ffn=teacher.ffn - 1))) / teacher.layers
        self.fixed = full - teacher.layers * (teacher.kv_heads * self.group + teacher.ffn * self.unit)

    def __call__(self, gated: GatedModel) -> torch.Tensor:
        groups = sum(g.l0() for g in gated.head_gates)
        units = sum(g.l0() for g in gated.ffn_gates)
        return self.fixed + self.group * groups + self.unit * units

    def sparsity(self, gated: GatedModel) -> torch.Tensor:
        return 1 - self(gated) / self.total


def uniform_shape(ir: ModelIR, gated: GatedModel, target_params: int, cost: ShapeCost) -> Shape:
    """One count per layer from the learned gates: the mean kept kv groups (rounded, ≥ 1), then the most FFN
    units per layer that keep the shape within `target_params`."""
    teacher = shape_of(ir)
    kept_groups = [int((g.deterministic() > 0).sum()) for g in gated.head_gates]
    groups = max(1, min(teacher.kv_heads, round(sum(kept_groups) / len(kept_groups))))
    shape = replace(teacher, heads=groups * gated.per_group, kv_heads=groups)
    while groups > 1 and cost(replace(shape, ffn=1)) > target_params:  # fewer groups until one FFN unit fits
        groups -= 1
        shape = replace(shape, heads=groups * gated.per_group, kv_heads=groups)
    if cost(replace(shape, ffn=1)) > target_params:
        raise UserError(f"prune.method joint: no shape without cutting hidden or depth fits {target_params:,} params")
    low, high = 1, teacher.ffn
    while low < high:  # the largest ffn width that fits
        middle = (low + high + 1) // 2
        if cost(replace(shape, ffn=middle)) <= target_params:
            low = middle
        else:
            high = middle - 1
    return replace(shape, ffn=low)


def kept_units(soft: torch.Tensor, count: int) -> list[int]:
    """The `count` units with the largest eval gate values (learned log α breaks ties), in model order."""
    return sorted(torch.argsort(soft, descending=True, stable=True)[:count].tolist())


def folded_and_sliced(ir: ModelIR, model, gated: GatedModel, shape: Shape) -> tuple[ModelIR, dict]:
    """The trained model with the kept gates folded into the consumer columns, sliced to `shape`.

    A unit the uniform projection keeps although its eval gate is 0 keeps its soft value σ(0.8·log α/β) instead,
    so no kept column is zeroed."""
    adapter = ir.adapter
    layers = adapter.decoder_layers(model)
    head_keep, ffn_keep, report = {}, {}, {"kept_groups": [], "kept_ffn": []}
    with torch.no_grad():
        for i, layer in enumerate(layers):
            group_soft = torch.sigmoid(0.8 * gated.head_gates[i].log_alpha / (2 / 3))
            group_mask = torch.where(gated.head_gates[i].deterministic() > 0, gated.head_gates[i].deterministic(),
                                     group_soft)  # fmt: skip
            unit_soft = torch.sigmoid(0.8 * gated.ffn_gates[i].log_alpha / (2 / 3))
            unit_eval = gated.ffn_gates[i].deterministic()
            unit_mask = torch.where(unit_eval > 0, unit_eval, unit_soft)
            report["kept_groups"].append(int((gated.head_gates[i].deterministic() > 0).sum()))
            report["kept_ffn"].append(int((unit_eval > 0).sum()))
            attention_out = adapter.attention_output_projection(layer)
            attention_out.weight.mul_(
                group_mask.repeat_interleave(gated.per_group * gated.head_dim).to(attention_out.weight)
            )
            down = adapter.ffn_output_projection(layer)
            down.weight.mul_(unit_mask.to(down.weight))
            groups = kept_units(group_mask, shape.kv_heads)
            head_keep[i] = [g * gated.per_group + j for g in groups for j in range(gated.per_group)]
            ffn_keep[i] = kept_units(unit_mask, shape.ffn)
    student = ir.absorb(model)
    teacher = shape_of(ir)
    if shape.kv_heads != teacher.kv_heads:
        student = student.slice_group("heads", head_keep)
    if shape.ffn != teacher.ffn:
        student = student.slice_group("ffn", ffn_keep)
    return student, report


def joint_prune(ir: ModelIR, teacher, blocks: torch.Tensor, target_params: int, settings: JointSettings,
                device: torch.device, progress=None) -> tuple[ModelIR, dict]:  # fmt: skip
    """Learn gates while distilling from `teacher` on `blocks` [N, S], then slice `ir` to a uniform shape within
    `target_params`. Returns the student and what the report shows (losses, sparsity, per-layer kept counts)."""
    if ir.task != "causal-lm":
        raise UserError(f"prune.method joint: needs a causal LM (logit distillation); {ir.config.model_type} is not")
    if shape_of(ir).kv_heads < 2:
        raise UserError("prune.method joint: gates whole kv groups and the model has one (multi-query attention)")
    size = ExpectedSize(ir)
    target = 1 - target_params / size.total
    if target <= 0:
        return ir, {"target_sparsity": 0.0}
    torch.manual_seed(settings.seed)
    model = ir.materialize(device)
    model.train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    gated = GatedModel(ir, model, settings)
    lambdas = torch.zeros(2, device=device, requires_grad=True)
    optimizers = [
        torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0),
        torch.optim.AdamW(gated.gate_parameters(), lr=settings.gate_lr, weight_decay=0.0),
        torch.optim.AdamW([lambdas], lr=settings.lambda_lr, weight_decay=0.0, maximize=True),  # out of decay (§4)
    ]
    ramp = max(1, int(settings.ramp_share * settings.steps))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(settings.seed))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    history = []
    try:
        for step in range(settings.steps):
            ids = cycled_batch(blocks, order, step, settings.batch_size).to(device)
            distill = batch_kl(teacher, model, ids, autocast)
            sparsity = size.sparsity(gated)
            goal = target_at(step + 1, target, ramp)
            loss = distill + lagrangian(sparsity, goal, lambdas[0], lambdas[1])
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            history.append((float(distill.detach()), float(sparsity.detach())))
            if progress is not None:
                progress(step + 1, settings.steps, float(distill), float(sparsity), goal)
        gated.train(False)
        model.eval()
        cost = ShapeCost(ir)
        shape = uniform_shape(ir, gated, target_params, cost)
        student, kept = folded_and_sliced(ir, model, gated, shape)
    finally:
        gated.remove()
    tail = history[-max(1, len(history) // 10) :]
    report = {
        "steps": settings.steps,
        "tokens": settings.steps * settings.batch_size * blocks.shape[1],
        "target_sparsity": round(target, 4),
        "expected_sparsity_end": round(sum(s for _, s in tail) / len(tail), 4),
        "distill_loss_end": round(sum(d for d, _ in tail) / len(tail), 5),
        "lambda": [round(float(v), 5) for v in lambdas.detach()],
        "eval_kept_groups_per_layer": kept["kept_groups"],
        "eval_kept_ffn_per_layer": kept["kept_ffn"],
        "uniform": {"kv_heads": shape.kv_heads, "heads": shape.heads, "ffn": shape.ffn},
    }
    if not math.isfinite(report["distill_loss_end"]):
        raise UserError("prune.method joint: the distillation loss diverged (lower prune.joint_lr)")
    return student, report
