"""The MoE routing rule and what each MoE layer sees and says on calibration tokens.

`routing_weights` is the one rule for turning router logits into expert weights (top-k as the model does it, KA's
sampled routing, SAR's dense mixture); training's teacher modes and gathering both use it. Knowledge gathering
(ALGORITHMS §5b, §8) also needs, per layer, the router's decisions on real tokens and the block's output (for the
reconstruction error of the dense FFN), captured with forward hooks on the teacher itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MODES = ("topk", "sample", "dense")


def routing_weights(
    router_logits: torch.Tensor,
    top_k: int,
    normalize: bool,
    mode: str,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[N, E] weight of each expert for each token under `mode` (0 for experts not used)."""
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    if mode == "dense":
        return probs
    if mode == "topk":
        chosen = probs.topk(top_k, dim=-1).indices
    elif mode == "sample":
        proposal = probs if temperature == 1.0 else F.softmax(router_logits.float() / temperature, dim=-1)
        chosen = torch.multinomial(proposal.detach(), top_k, replacement=False, generator=generator)
    else:
        raise ValueError(f"unknown routing mode {mode!r} (known: {', '.join(MODES)})")
    values = probs.gather(1, chosen)
    if normalize:
        values = values / values.sum(-1, keepdim=True)
    return torch.zeros_like(probs).scatter(1, chosen, values)


def moe_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The sparse MoE block of every decoder layer, in order (the family adapter knows where it lives)."""
    from compressor.ir.families import adapter_of_model

    adapter = adapter_of_model(model)
    blocks = [adapter.moe_block(layer) for layer in adapter.decoder_layers(model)]
    for index, block in enumerate(blocks):
        if not adapter.is_sparse(block):
            raise ValueError(f"layer {index} is dense (no router and experts); mixed models are not supported")
    return blocks


@torch.no_grad()
def capture_moe_io(
    model: torch.nn.Module, blocks: torch.Tensor, max_tokens: int = 8192, batch_size: int = 8
) -> list[dict[str, torch.Tensor]]:
    """Per layer {"inputs": [N, d], "outputs": [N, d]} over the first `max_tokens` tokens of `blocks` [B, T]."""
    sparse = moe_blocks(model)
    captured: list[dict[str, list[torch.Tensor]]] = [{"inputs": [], "outputs": []} for _ in sparse]

    def hook(index: int):
        def record(module, args, output):
            hidden = args[0]
            out = output[0] if isinstance(output, tuple) else output
            captured[index]["inputs"].append(hidden.reshape(-1, hidden.shape[-1]).float().cpu())
            captured[index]["outputs"].append(out.reshape(-1, out.shape[-1]).float().cpu())

        return record

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(sparse)]
    device = next(model.parameters()).device
    needed = min(len(blocks), math.ceil(max_tokens / blocks.shape[1]))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, needed, batch_size):
            model(input_ids=blocks[start : min(start + batch_size, needed)].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [{k: torch.cat(v)[:max_tokens] for k, v in layer.items()} for layer in captured]


def router_statistics(router_logits: torch.Tensor, top_k: int) -> dict[str, float | list[float]]:
    """Mean router entropy (nats), and each expert's load: the share of top-k slots it receives."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean())
    chosen = probs.topk(top_k, dim=-1).indices.flatten()
    load = torch.bincount(chosen, minlength=probs.shape[-1]).float() / chosen.numel()
    return {"entropy": round(entropy, 4), "load": [round(float(v), 4) for v in load]}
