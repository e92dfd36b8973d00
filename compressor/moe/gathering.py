"""Knowledge gathering: the E experts of one MoE layer become one dense SwiGLU FFN (ALGORITHMS.md §5).

Pure functions of tensors, so every property of §5 is a unit test: summation and averaging (§5a),
router-frequency weighting (§5b), Top-K KG and SVD-KG (§5a), neuron alignment by Hungarian matching (§5a
pitfall, ours), and importance-based neuron selection across experts (§8-style, ours) for dense widths from one
expert's width up to the sum of all experts' widths.

Shapes follow transformers: gate and up are [f, d] (Mixtral w1, w3), down is [d, f] (Mixtral w2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compressor.moe.routing import routing_weights


@dataclass(frozen=True)
class DenseFFN:
    """One SwiGLU FFN: y = down · (act(gate · x) ⊙ (up · x))."""

    gate: torch.Tensor  # [f, d]
    up: torch.Tensor  # [f, d]
    down: torch.Tensor  # [d, f]

    @property
    def width(self) -> int:
        return int(self.gate.shape[0])

    def __call__(self, x: torch.Tensor, act: str = "silu") -> torch.Tensor:
        return swiglu(x, self.gate, self.up, self.down, act)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"gate": self.gate, "up": self.up, "down": self.down}

    @staticmethod
    def concat(parts: list[DenseFFN]) -> DenseFFN:
        """Side-by-side FFNs: the output of the concatenation is the sum of the parts' outputs."""
        return DenseFFN(
            torch.cat([p.gate for p in parts]), torch.cat([p.up for p in parts]), torch.cat([p.down for p in parts], 1)
        )


@dataclass(frozen=True)
class ExpertStack:
    """The experts of one MoE layer, stacked: gate/up [E, f, d], down [E, d, f]."""

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.gate.shape[0])

    @property
    def width(self) -> int:
        return int(self.gate.shape[1])

    def expert(self, index: int) -> DenseFFN:
        return DenseFFN(self.gate[index], self.up[index], self.down[index])


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, act: str = "silu"):
    return F.linear(activation(act)(F.linear(x, gate)) * F.linear(x, up), down)


def activation(name: str):
    from transformers.activations import ACT2FN

    return ACT2FN[name]


# ---- aggregation (§5a, §5b) -----------------------------------------------------------------------------------
def coefficients(count: int, agg: str = "mean", frequencies: torch.Tensor | None = None) -> torch.Tensor:
    """Per-expert weights c_e of W = Σ_e c_e W_e.

    sum: c = 1; mean: c = 1/E. With router frequencies w (Σ w = 1) the mean becomes Σ w_e W_e (§5b) and the sum
    E·Σ w_e W_e (the same total mass as the plain sum).
    """
    if agg not in ("sum", "mean"):
        raise ValueError(f"agg must be 'sum' or 'mean', not {agg!r}")
    if frequencies is None:
        return torch.full((count,), 1.0 if agg == "sum" else 1.0 / count)
    weights = frequencies.double() / frequencies.double().sum()
    return (weights * count if agg == "sum" else weights).float()


def aggregate(stack: ExpertStack, weights: torch.Tensor) -> DenseFFN:
    """W = Σ_e c_e W_e for gate, up and down separately (summation, averaging, frequency weighting)."""
    c = weights.to(stack.gate.dtype)
    return DenseFFN(
        torch.einsum("e,efd->fd", c, stack.gate),
        torch.einsum("e,efd->fd", c, stack.up),
        torch.einsum("e,edf->df", c, stack.down),
    )


def routing_frequencies(router_logits: torch.Tensor, top_k: int, normalize_top_k: bool = True) -> torch.Tensor:
    """w_e = mean over tokens of the gate weight expert e received (0 when not selected), normalised to Σ w = 1.

    The gate weights are exactly the ones the model uses (`routing_weights` in top-k mode): softmax over
    experts, top-k kept, renormalised over the k when the family does so (Mixtral always; Qwen MoE by
    `norm_topk_prob`).
    """
    mean = routing_weights(router_logits, top_k, normalize_top_k, "topk").mean(0)
    return mean / mean.sum()


# ---- knowledge truncation (§5a) -------------------------------------------------------------------------------
def top_k_entries(matrix: torch.Tensor, density: float) -> torch.Tensor:
    """TopK_k: keep the ⌈density·size⌉ largest-magnitude entries, zero the rest (density 1 is the identity)."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], not {density}")
    keep = max(1, math.ceil(density * matrix.numel()))
    if keep >= matrix.numel():
        return matrix.clone()
    threshold = matrix.abs().flatten().kthvalue(matrix.numel() - keep + 1).values
    return torch.where(matrix.abs() >= threshold, matrix, torch.zeros_like(matrix))


def top_k_kg(stack: ExpertStack, density: float) -> ExpertStack:
    """Top-K KG: every matrix of every expert truncated to its largest-magnitude entries (§5a)."""
    return ExpertStack(
        *(torch.stack([top_k_entries(m, density) for m in mats]) for mats in (stack.gate, stack.up, stack.down))
    )


def low_rank(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """W^(k) = U[:, :k] S[:k] V[:, :k]ᵀ (the best rank-k approximation); k ≥ rank(W) returns W."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    k = min(rank, s.shape[0])
    return ((u[:, :k] * s[:k]) @ vh[:k]).to(matrix.dtype)


def svd_kg(stack: ExpertStack, rank: int) -> ExpertStack:
    """SVD-KG: every matrix of every expert truncated to rank k (§5a)."""
    if rank < 1:
        raise ValueError(f"rank must be ≥ 1, not {rank}")
    return ExpertStack(*(torch.stack([low_rank(m, rank) for m in mats]) for mats in (stack.gate, stack.up, stack.down)))


# ---- neuron alignment (§5a pitfall, ours) ---------------------------------------------------------------------
def alignment_permutation(reference_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """perm such that rows[perm[j]] best matches reference_rows[j]: Hungarian assignment maximising the total
    correlation of gate rows (each row centred and normalised)."""
    from scipy.optimize import linear_sum_assignment

    def standardise(m: torch.Tensor) -> torch.Tensor:
        m = m.double() - m.double().mean(1, keepdim=True)
        return m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)

    correlation = standardise(reference_rows) @ standardise(rows).T
    _, columns = linear_sum_assignment(correlation.numpy(), maximize=True)
    return torch.as_tensor(columns, dtype=torch.long)


def align_neurons(stack: ExpertStack, reference: int = 0) -> ExpertStack:
    """Permute every expert's neurons onto the reference expert's (same permutation on gate rows, up rows and
    down columns, so each expert computes exactly the same function) before merging."""
    gates, ups, downs = [], [], []
    for e in range(stack.count):
        perm = (
            torch.arange(stack.width) if e == reference else alignment_permutation(stack.gate[reference], stack.gate[e])
        )
        gates.append(stack.gate[e][perm])
        ups.append(stack.up[e][perm])
        downs.append(stack.down[e][:, perm])
    return ExpertStack(torch.stack(gates), torch.stack(ups), torch.stack(downs))


# ---- importance-based neuron selection (ours, §8 style) -------------------------------------------------------
def neuron_scores(stack: ExpertStack, inputs: torch.Tensor, gates: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """[E, f] importance of each expert neuron: its contribution to the MoE output on calibration tokens,
    I_{e,j} = RMS_x(g_e(x)·h_{e,j}(x)) · ‖down_e[:, j]‖, with h the neuron's activation act(gate·x)⊙(up·x) and
    g_e(x) the routed gate weight (0 where the token does not reach the expert)."""
    fn = activation(act)
    x = inputs.float()
    scores = torch.empty(stack.count, stack.width)
    for e in range(stack.count):
        h = fn(F.linear(x, stack.gate[e].float())) * F.linear(x, stack.up[e].float())
        contribution = (gates[:, e : e + 1].float() * h).pow(2).mean(0).sqrt()
        scores[e] = contribution * stack.down[e].float().norm(dim=0)
    return scores


def select_neurons(stack: ExpertStack, scores: torch.Tensor, width: int, frequencies: torch.Tensor) -> DenseFFN:
    """The `width` highest-scoring neurons of all experts side by side; each neuron's down column is scaled by its
    expert's routing frequency, so the dense FFN computes Σ_e w_e·(expert e restricted to its kept neurons).
    At width = E·f this is exactly the frequency-weighted mixture of the experts' outputs."""
    total = stack.count * stack.width
    if not 1 <= width <= total:
        raise ValueError(f"width must be in 1..{total} (the sum of expert widths), not {width}")
    flat = scores.flatten().topk(width).indices.sort().values
    experts, neurons = flat // stack.width, flat % stack.width
    scale = (frequencies.double() / frequencies.double().sum()).to(stack.down.dtype)[experts]
    return DenseFFN(stack.gate[experts, neurons], stack.up[experts, neurons], stack.down[experts, :, neurons].T * scale)


def refit_down(ffn: DenseFFN, inputs: torch.Tensor, targets: torch.Tensor, act: str = "silu", ridge: float = 1e-4):
    """Keep gate and up, re-solve down by least squares so that the dense FFN reproduces the MoE block's output
    on calibration tokens: down = argmin ‖H·downᵀ − Y‖² + λ‖down‖², H = act(X·gateᵀ)⊙(X·upᵀ) (ours).

    λ is `ridge` times the mean diagonal of HᵀH, so it is scale-free. Gathering fixes which neurons exist;
    this step fixes how they are mixed, which is where averaging unaligned experts loses most.
    """
    x = inputs.double()
    h = activation(act)(F.linear(x, ffn.gate.double())) * F.linear(x, ffn.up.double())
    gram = h.T @ h
    gram += ridge * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    solution = torch.linalg.solve(gram, h.T @ targets.double())  # [W, d]
    return DenseFFN(ffn.gate, ffn.up, solution.T.to(ffn.down.dtype).contiguous())


def relative_error(approximation: torch.Tensor, reference: torch.Tensor) -> float:
    """‖a − r‖² / ‖r‖² over all tokens: 0 for a perfect reconstruction, 1 for predicting zero."""
    return float(
        (approximation.float() - reference.float()).pow(2).sum() / reference.float().pow(2).sum().clamp_min(1e-30)
    )


MERGING_METHODS = ("sum", "average", "frequency", "topk", "svd")
METHODS = (*MERGING_METHODS, "importance", "expert")


def gather(
    stack: ExpertStack,
    method: str,
    *,
    frequencies: torch.Tensor | None = None,
    agg: str = "mean",
    weighting: str = "uniform",
    density: float | None = None,
    rank: int | None = None,
    align: bool = False,
    scores: torch.Tensor | None = None,
    width: int | None = None,
    expert: int | None = None,
) -> DenseFFN:
    """One layer's dense FFN by `method` (§5a/§5b; `importance` and `expert` are ours).

    sum / average / frequency: W = Σ_e c_e W_e. topk / svd: each expert truncated first (density defaults to
    1/E, rank to ⌈min(f, d)/E⌉), then aggregated by `agg`, weighted by router frequency if `weighting` says so.
    `align` permutes neurons onto expert 0 before any merge. importance: the `width` best neurons of all
    experts (needs `scores`). expert: one expert as it is (by default the most used) — a baseline.
    """
    if method not in METHODS:
        raise ValueError(f"unknown gathering method {method!r} (known: {', '.join(METHODS)})")
    needs_frequencies = method in ("frequency", "importance") or (method in ("topk", "svd") and weighting != "uniform")
    if needs_frequencies and frequencies is None:
        raise ValueError(f"gathering method {method!r} needs router frequencies from calibration data")
    if method == "expert":
        index = expert if expert is not None else (int(frequencies.argmax()) if frequencies is not None else 0)
        return stack.expert(index)
    if method == "importance":
        if scores is None:
            raise ValueError("gathering method 'importance' needs neuron scores from calibration data")
        return select_neurons(stack, scores, width or stack.width, frequencies)
    if width is not None and width != stack.width:
        raise ValueError(
            f"merging method {method!r} gives one expert's width {stack.width}; width {width} needs method 'importance'"
        )
    if align and stack.count > 1:
        stack = align_neurons(stack)
    if method == "topk":
        stack = top_k_kg(stack, density if density is not None else 1 / stack.count)
    elif method == "svd":
        full = min(stack.gate.shape[1], stack.gate.shape[2])
        stack = svd_kg(stack, rank if rank is not None else math.ceil(full / stack.count))
    if method == "sum":
        weights = coefficients(stack.count, "sum")
    elif method == "average":
        weights = coefficients(stack.count, "mean")
    elif method == "frequency":
        weights = coefficients(stack.count, "mean", frequencies)
    else:
        weights = coefficients(stack.count, agg, frequencies if weighting == "frequency" else None)
    return aggregate(stack, weights)
