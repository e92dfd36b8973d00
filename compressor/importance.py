"""Importance estimators shared by search, inherit and prune (ALGORITHMS.md §8)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F


def block_influence(h_in: torch.Tensor, h_out: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One batch's block-influence term 1 − mean_{b,s} cos(h_in, h_out) over valid tokens (ALGORITHMS §8, depth).

    A layer that leaves its input unchanged scores 0; higher means the layer changes the stream more.
    """
    cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
    if mask is not None:
        mask = mask.to(cos.dtype)
        mean = (cos * mask).sum() / mask.sum().clamp_min(1.0)
    else:
        mean = cos.mean()
    return 1 - mean


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's transformer layers, as its family adapter finds them."""
    from compressor.ir.families import adapter_of_model

    return adapter_of_model(model).decoder_layers(model)


@torch.no_grad()
def layer_block_influence(model, batches: Iterable[dict[str, torch.Tensor]]) -> list[float]:
    """BI_l = Σ_batches [1 − mean cos(h_in, h_out)] for every layer l, from forward hooks on calibration batches."""
    layers = decoder_layers(model)
    scores = [0.0] * len(layers)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(index):
        def capture(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            captured[index] = (h_in, h_out)

        return capture

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for batch in batches:
            model(**batch)
            mask = batch.get("attention_mask")
            for i, (h_in, h_out) in captured.items():
                scores[i] += float(block_influence(h_in, h_out, mask))
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
    return scores


# ---- width: Minitron activation importance (ALGORITHMS §8) -------------------------------------------------------


def minitron_batch_term(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One batch's contribution a_c = Σ_b (mean_s |X_{b,s,c}|)² for activations X [B, S, C] (padding excluded
    from the sequence mean when `mask` [B, S] is given). The importance is √(Σ over batches)."""
    magnitude = x.float().abs()
    if mask is None:
        mean = magnitude.mean(1)
    else:
        weights = mask.to(magnitude.dtype).unsqueeze(-1)
        mean = (magnitude * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return (mean**2).sum(0)


def head_scores(channel_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Head importance = ‖I_c over the head's channels‖₂, from channel scores [..., heads·head_dim]."""
    return channel_scores.reshape(*channel_scores.shape[:-1], -1, head_dim).norm(dim=-1)


def run_with_hooks(model, batches: Iterable[dict[str, torch.Tensor]], handles: list, mask_now: list) -> None:
    """Forward every calibration batch in eval mode, each batch's attention mask visible to the hooks through
    `mask_now[0]`; then remove the hooks and restore the model's training mode."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask_now[0] = batch.get("attention_mask")
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


@torch.no_grad()
def activation_importance(model, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Minitron's activation scores from forward hooks on calibration batches (fp32 accumulation):
    `ffn` [L, f] from the input of the FFN output projection, `heads` [L, h] from the input of the attention
    output projection (‖·‖₂ over each head's channels), `hidden` [d] summed over the outputs of every layer's
    norms (after the norm weight)."""
    from compressor.ir.families import adapter_of_model

    adapter = adapter_of_model(model)
    layers = adapter.decoder_layers(model)
    _, _, head_dim = adapter.attention_shape(model.config)
    sums: dict[tuple, torch.Tensor] = {}
    mask_now: list[torch.Tensor | None] = [None]

    def add(key, x):
        term = minitron_batch_term(x, mask_now[0])
        sums[key] = sums[key] + term if key in sums else term

    def on_input(key):
        return lambda module, args: add(key, args[0])

    def on_output(key):
        return lambda module, args, output: add(key, output[0] if isinstance(output, tuple) else output)

    handles = []
    for i, layer in enumerate(layers):
        handles.append(adapter.attention_output_projection(layer).register_forward_pre_hook(on_input(("heads", i))))
        try:
            handles.append(adapter.ffn_output_projection(layer).register_forward_pre_hook(on_input(("ffn", i))))
        except NotImplementedError:
            pass
        for j, norm in enumerate(adapter.hidden_norms(layer)):
            handles.append(norm.register_forward_hook(on_output(("hidden", i, j))))
    run_with_hooks(model, batches, handles, mask_now)
    scores = {
        "heads": head_scores(torch.stack([sums[("heads", i)] for i in range(len(layers))]).sqrt(), head_dim),
        "hidden": sum(v.sqrt() for k, v in sums.items() if k[0] == "hidden"),
    }
    if ("ffn", 0) in sums:
        scores["ffn"] = torch.stack([sums[("ffn", i)] for i in range(len(layers))]).sqrt()
    return scores


# ---- width: weight magnitude and first-order Taylor, per unit of a coupled group --------------------------------


def unit_scores(tensors: Mapping[str, torch.Tensor], members, units: int, reduce: str) -> torch.Tensor:
    """Per-unit scores of one coupled group from per-element values `tensors` (weights, or weight × gradient):
    `reduce="l2"`: √Σ v² over every element of the unit in every member (magnitude); `"sum_abs"`: |Σ v| (Taylor,
    the first-order change of the loss when the unit is removed). A slice shared by `share` units (a GQA kv head)
    counts toward each of them."""
    total = torch.zeros(units, dtype=torch.float64)
    for member in members:
        if member.axis is None or member.name not in tensors:
            continue
        value = tensors[member.name].detach().double().movedim(member.axis, 0)
        slices = value.reshape(value.shape[0] // member.unit, -1)
        part = (slices**2).sum(1) if reduce == "l2" else slices.sum(1)
        total += part.repeat_interleave(member.share)[:units]
    return total.sqrt() if reduce == "l2" else total.abs()


def magnitude_importance(weights: Mapping[str, torch.Tensor], members, units: int) -> torch.Tensor:
    """‖unit‖₂ over the group's tensors: the data-free baseline (Torch-Pruning's magnitude criterion)."""
    return unit_scores(weights, members, units, "l2")


def taylor_importance(weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], members, units: int):
    """|Σ_{w in unit} w·∂L/∂w|: first-order Taylor estimate of the loss change when the unit is zeroed."""
    products = {n: weights[n].detach().double() * grads[n].double() for n in grads if n in weights}
    return unit_scores(products, members, units, "sum_abs")


# ---- hidden stream covariance for PCA projection (ALGORITHMS §3b) -----------------------------------------------


@torch.no_grad()
def stream_covariance(model, batches: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Σ XᵀX [d, d] (float64) over every hidden state the model exposes (each layer's input and the final one),
    each token scaled to unit RMS first: the readers see the stream through RMSNorm, so directions matter, not
    the growth of the stream's norm with depth. Padding tokens are left out."""
    total = None
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            states = model(**batch, output_hidden_states=True).hidden_states
            mask = batch.get("attention_mask")
            for state in states:
                x = state.double()
                x = x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
                if mask is not None:
                    x = x * mask.to(x.dtype).unsqueeze(-1)
                x = x.reshape(-1, x.shape[-1])
                term = x.T @ x
                total = term if total is None else total + term
    finally:
        model.train(was_training)
    return total


@torch.no_grad()
def expert_importance(model, batches: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    """[L, E]: each expert's routed contribution I_e = (1/N) Σ_t g_{t,e} ‖E_e(x_t)‖₂ over the N calibration tokens
    of every MoE layer, g the model's own top-k routing weights (0 where the token does not reach e): the router's
    load on the expert times the norm of what it adds to the stream (ALGORITHMS §8, MoE experts, weighted by the
    router). An expert the router never picks, or one whose output is zero, scores 0. Padding tokens are left out."""
    from compressor.ir.families import adapter_of_model
    from compressor.moe.routing import moe_blocks, routing_weights

    adapter = adapter_of_model(model)
    blocks = moe_blocks(model)
    inputs: list[list[torch.Tensor]] = [[] for _ in blocks]
    mask_now: list[torch.Tensor | None] = [None]

    def on_input(index: int):
        def record(module, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            if mask_now[0] is not None:
                x = x[mask_now[0].reshape(-1).bool()]
            inputs[index].append(x)

        return record

    handles = [block.register_forward_pre_hook(on_input(i)) for i, block in enumerate(blocks)]
    run_with_hooks(model, batches, handles, mask_now)
    rows = []
    for index, block in enumerate(blocks):
        x = torch.cat(inputs[index])
        top_k, normalize = adapter.routing(block)
        weights = routing_weights(adapter.router(block)(x), top_k, normalize, "topk")
        experts = adapter.experts(block)
        scores = torch.zeros(len(experts))
        for e, expert in enumerate(experts):
            routed = weights[:, e] > 0
            if routed.any():
                norms = expert(x[routed]).float().norm(dim=-1)
                scores[e] = (weights[routed, e] * norms).sum() / len(x)
        rows.append(scores)
    return torch.stack(rows)
