"""Importance estimators shared by search, inherit and prune (ALGORITHMS.md §8)."""

from __future__ import annotations

from collections.abc import Iterable

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
