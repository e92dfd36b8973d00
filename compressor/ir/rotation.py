"""PCA projection of the hidden stream (SliceGPT-like, ALGORITHMS §3b), through the graph's hidden group.

1. Fold every RMSNorm scale into the matrices that read its output (the block's 2-D readers; the final norm's
   into the head), leaving the norm's scale at one.
2. Q = the top-d' eigenvectors of the stream covariance XᵀX (from calibration data).
3. Project every tensor axis of the hidden group onto Q: readers W → W Q, writers W → Qᵀ W, embeddings E → E Q,
   writer biases b → Qᵀ b. With d' = d, Q is orthogonal and RMSNorm(xQ) = RMSNorm(x)Q, so the logits are those of
   the teacher.
4. The norms of the cut stream average over d' channels instead of d, so their scale becomes √(d/d').

A tied head cannot take the final norm's scale (it is the embedding too); there the norm keeps the diagonal of
Qᵀ diag(g) Q, an approximation the report names. Post-norm families (LayerNorm after the residual add, BERT) are
not rotation-invariant and are refused by their adapter.
"""

from __future__ import annotations

import math

import torch

from compressor.errors import UserError
from compressor.ir.families.base import Edit


def principal_basis(covariance: torch.Tensor, width: int) -> torch.Tensor:
    """The top-`width` eigenvectors of a symmetric covariance [d, d] as columns [d, width] (float64)."""
    values, vectors = torch.linalg.eigh(covariance.double())
    order = torch.argsort(values, descending=True)
    return vectors[:, order[:width]]


def project(tensor: torch.Tensor, axis: int, basis: torch.Tensor) -> torch.Tensor:
    """`tensor` with its `axis` (length d) projected onto the columns of `basis` [d, d'] (length d')."""
    moved = tensor.double().movedim(axis, -1) @ basis
    return moved.movedim(-1, axis).to(tensor.dtype).contiguous()


def folded_norms(ir) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Readers with the preceding norm's scale folded in, the norms whose scale became one, and the norms that
    could not be folded (a tied head reads the final norm)."""
    blocks = ir.blocks()
    updates: dict[str, torch.Tensor] = {}
    folded, kept = [], []
    for index, block in enumerate(blocks):
        norms = [m for m in block.reads if len(ir.weights.shape(m.name)) == 1]
        if not norms:
            continue
        readers = [m for m in block.reads if len(ir.weights.shape(m.name)) == 2]
        if not readers and block.kind == "norm" and index + 1 < len(blocks):
            readers = [m for m in blocks[index + 1].reads if len(ir.weights.shape(m.name)) == 2]
        for norm in norms:
            if not readers:
                kept.append(norm.name)
                continue
            scale = ir.weights[norm.name].double()
            for reader in readers:
                weight = updates.get(reader.name, ir.weights[reader.name]).double()
                shape = [1] * weight.dim()
                shape[reader.axis] = -1
                updates[reader.name] = (weight * scale.reshape(shape)).to(ir.weights[reader.name].dtype)
            folded.append(norm.name)
    return updates, folded, kept


def rotate_hidden(ir, covariance: torch.Tensor, width: int):
    """`ir` with its hidden stream projected onto the top-`width` principal directions of `covariance`."""
    if not ir.adapter.rotation_invariant:
        raise UserError(
            f"prune.hidden_method pca: the {ir.config.model_type} family is post-norm (LayerNorm after the residual "
            "add), which a rotation of the stream does not commute with; use hidden_method: select"
        )
    if "hidden" not in ir.groups:
        raise UserError(f"prune.hidden_method pca: {ir.config.model_type} has no hidden group to project")
    full = ir.adapter.hidden_size(ir.config)
    if not 1 <= width <= full:
        raise UserError(f"prune.hidden_method pca: width {width} is outside 1..{full}")
    updates, folded, kept = folded_norms(ir)
    basis = principal_basis(covariance, width)
    norms = set(folded) | set(kept)
    rescale = math.sqrt(full / width)
    edit_updates = {}
    for member in ir.groups["hidden"].members:
        tensor = updates.get(member.name, ir.weights[member.name])
        if member.name in folded:
            edit_updates[member.name] = torch.full((width,), rescale, dtype=tensor.dtype)
        elif member.name in kept:
            diagonal = (basis * (tensor.double().unsqueeze(1) * basis)).sum(0)  # diag(Qᵀ diag(g) Q)
            edit_updates[member.name] = (rescale * diagonal).to(tensor.dtype)
        elif member.name not in norms:
            edit_updates[member.name] = project(tensor, member.axis, basis)
    for name, tensor in updates.items():  # folded readers outside the hidden group keep their new scale
        edit_updates.setdefault(name, tensor)
    config = ir.adapter.sliced_config(ir.config, "hidden", {None: list(range(width))})
    record = {"op": "rotate_hidden", "kept": width, "unfolded_norms": kept}
    return ir.apply(Edit(config, edit_updates), record), kept
