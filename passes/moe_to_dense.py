"""`moe_to_dense`: every MoE layer's experts and router become one dense FFN (ALGORITHMS §5).

Mixtral → Mistral, Qwen2-MoE → Qwen2, Qwen3-MoE → Qwen3; attention, norms and embeddings are copied. The math
lives in `compressor.moe.gathering` (pure, tested); this pass runs the teacher on calibration tokens (router
frequencies, neuron importance, the shared expert's mean gate), gathers, and reports per layer the
reconstruction error of the dense FFN against the MoE block's output on those tokens, plus perplexity and
PyTorch speed of the MoE and of the dense model right after gathering. Refinement is `distill` (with
`teacher_routing: topk | ka | sar`, §5c).

Qwen2-MoE's shared expert is kept, not merged: its neurons sit beside the gathered ones (a dense FFN of width
gathered + shared computes the sum of the two), and its per-token sigmoid gate, which a stock Qwen2 MLP cannot
express, is folded in as its mean over the calibration tokens.
"""

from __future__ import annotations

import math
import statistics
from typing import Literal

import torch
from pydantic import Field

from compressor.data import lm_blocks
from compressor.errors import UserError
from compressor.evaluate import perplexity
from compressor.ir import ModelIR
from compressor.moe.gathering import (
    METHODS,
    DenseFFN,
    ExpertStack,
    gather,
    neuron_scores,
    refit_down,
    relative_error,
    routing_frequencies,
)
from compressor.moe.routing import capture_moe_io, router_statistics, routing_weights
from passes.base import Pass, PassConfig, PassContext, register


class MoEToDenseConfig(PassConfig):
    method: Literal[METHODS] = Field(default="importance", description="how the experts become one FFN")  # type: ignore[valid-type]
    width: int | None = Field(
        default=None, ge=1, description="dense width; default one expert's; wider (up to E·f) needs 'importance'"
    )
    agg: Literal["mean", "sum"] = Field(default="mean", description="aggregation after topk/svd truncation")
    weighting: Literal["uniform", "frequency"] = Field(default="uniform", description="topk/svd expert weights")
    density: float | None = Field(default=None, gt=0, le=1, description="Top-K KG density; default 1/E")
    rank: int | None = Field(default=None, ge=1, description="SVD-KG rank; default ⌈min(f, d)/E⌉")
    align: bool = Field(default=False, description="Hungarian neuron alignment to expert 0 before merging")
    refit: bool = Field(
        default=True, description="re-solve each dense down projection by least squares on the MoE block's outputs"
    )
    expert: int | None = Field(default=None, ge=0, description="method 'expert': which one (default: most used)")
    calibration_tokens: int = Field(default=8192, ge=64)
    seq_len: int = Field(default=128, ge=8)
    eval_blocks: int = Field(default=32, ge=0, description="held-out blocks for perplexity (0: skip)")
    speed_runs: int = Field(default=5, ge=0, description="timed forwards for the PyTorch speed figure (0: skip)")


@register
class MoEToDense(Pass):
    name = "moe_to_dense"
    Config = MoEToDenseConfig
    changes_family = True
    needs_data = True

    @classmethod
    def report_lines(cls, report: dict, metrics: dict) -> list[str]:
        return moe_section(report, metrics)

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        cfg: MoEToDenseConfig = self.config
        check_uniform_moe(ir)
        corpus = ctx.require_corpus(self.name)
        blocks = lm_blocks(
            ctx.tokenizer, corpus.train, cfg.seq_len, math.ceil(cfg.calibration_tokens / cfg.seq_len), corpus.name
        )
        if len(blocks) == 0:
            raise UserError(f"{corpus.name}: too little text for one calibration block of {cfg.seq_len} tokens")
        # The pipeline's first pass gathers the teacher itself: reuse the run's teacher module, don't build another.
        reuse = ir is ctx.teacher and next(ctx.teacher_model.parameters()).dtype == torch.float32
        moe = ctx.teacher_model if reuse else ir.materialize(ctx.device, torch.float32)
        io = capture_moe_io(moe, blocks, cfg.calibration_tokens)
        act = ir.adapter.activation(ir.config)
        ffns: dict[int, dict[str, torch.Tensor]] = {}
        layers = []
        for layer, seen in enumerate(io):
            dense, stats = self.gather_layer(ir.moe_layer(layer), seen["inputs"], act)
            if cfg.refit:
                stats["error_before_refit"] = round(relative_error(dense(seen["inputs"], act), seen["outputs"]), 5)
                dense = refit_down(dense, seen["inputs"], seen["outputs"], act)
            stats["reconstruction_error"] = round(relative_error(dense(seen["inputs"], act), seen["outputs"]), 5)
            layers.append({"layer": layer, **stats})
            ffns[layer] = dense.as_dict()
        student = ir.replace_ffn(ffns)
        errors = [row["reconstruction_error"] for row in layers]
        ctx.metrics.update(
            {
                "method": cfg.method,
                "from": ir.config.model_type,
                "to": student.config.model_type,
                "dense_width": student.adapter.ffn_width(student.config),
                "calibration_tokens": int(io[0]["inputs"].shape[0]),
                "mean_reconstruction_error": round(statistics.fmean(errors), 5),
                "layers": layers,
            }
        )
        dense_model = student.materialize(ctx.device, torch.float32)
        if cfg.eval_blocks and corpus.eval:
            held = lm_blocks(ctx.tokenizer, corpus.eval, cfg.seq_len, cfg.eval_blocks, corpus.eval_name)
            if len(held):
                ctx.metrics["moe_ppl"] = round(perplexity(moe, held.to(ctx.device)), 4)
                ctx.metrics["gathered_ppl"] = round(perplexity(dense_model, held.to(ctx.device)), 4)
        if cfg.speed_runs:
            ctx.metrics["pytorch_speed"] = speed(moe, dense_model, blocks[:4].to(ctx.device), cfg.speed_runs)
        return student

    def gather_layer(self, tensors: dict, inputs: torch.Tensor, act: str) -> tuple[DenseFFN, dict]:
        cfg: MoEToDenseConfig = self.config
        stack = ExpertStack(tensors["gate"].float(), tensors["up"].float(), tensors["down"].float())
        router_logits = inputs @ tensors["router"].float().T
        top_k, normalize = tensors["top_k"], tensors["normalize_top_k"]
        frequencies = routing_frequencies(router_logits, top_k, normalize)
        scores = None
        if cfg.method == "importance":
            scores = neuron_scores(stack, inputs, routing_weights(router_logits, top_k, normalize, "topk"), act)
        if cfg.width is not None and cfg.method != "importance" and cfg.width != stack.width:
            raise UserError(
                f"moe_to_dense: width {cfg.width} differs from one expert's ({stack.width}); "
                "only method 'importance' builds wider FFNs"
            )
        if cfg.width is not None and cfg.width > stack.count * stack.width:
            raise UserError(
                f"moe_to_dense: width {cfg.width} exceeds the sum of expert widths {stack.count * stack.width}"
            )
        if cfg.expert is not None and cfg.expert >= stack.count:
            raise UserError(f"moe_to_dense: expert {cfg.expert} is out of range 0..{stack.count - 1}")
        dense = gather(
            stack,
            cfg.method,
            frequencies=frequencies,
            agg=cfg.agg,
            weighting=cfg.weighting,
            density=cfg.density,
            rank=cfg.rank,
            align=cfg.align,
            scores=scores,
            width=cfg.width,
            expert=cfg.expert,
        )
        stats = {
            "router": router_statistics(router_logits, top_k),
            "frequencies": [round(float(f), 4) for f in frequencies],
        }
        shared = tensors["shared"]
        if shared is not None:
            mean_gate = float(torch.sigmoid(inputs @ shared["sigmoid_gate"].float().T).mean())
            folded = DenseFFN(shared["gate"].float(), shared["up"].float(), shared["down"].float() * mean_gate)
            dense = DenseFFN.concat([dense, folded])
            stats["shared_expert_mean_gate"] = round(mean_gate, 4)
        return dense, stats


def check_uniform_moe(ir: ModelIR) -> None:
    if not ir.adapter.is_moe:
        raise UserError(f"moe_to_dense: the model is {ir.config.model_type}, not a mixture of experts")
    problem = ir.adapter.dense_layout_problem(ir.config)
    if problem:
        raise UserError(f"moe_to_dense: {problem}")


@torch.no_grad()
def speed(moe: torch.nn.Module, dense: torch.nn.Module, ids: torch.Tensor, runs: int) -> dict:
    """Tokens/s of a full forward over the same batch, MoE vs dense, eager PyTorch (median of `runs`)."""
    from compressor.onnx.bench import timed

    moe_s = statistics.median(timed(lambda: moe(input_ids=ids), warmup=1, runs=runs))
    dense_s = statistics.median(timed(lambda: dense(input_ids=ids), warmup=1, runs=runs))
    tokens = ids.numel()
    return {
        "device": str(ids.device),
        "tokens": tokens,
        "moe_tokens_per_s": round(tokens / moe_s, 1),
        "dense_tokens_per_s": round(tokens / dense_s, 1),
        "speedup": round(moe_s / dense_s, 3),
    }


def moe_section(report: dict, gathered: dict) -> list[str]:
    """What knowledge gathering did: per-layer reconstruction error, perplexity before refinement, speed."""
    lines = [
        "## MoE → dense",
        "",
        f"{gathered['from']} → {gathered['to']} by **{gathered['method']}**, dense FFN width "
        f"{gathered['dense_width']}, calibrated on {gathered['calibration_tokens']} tokens. Mean reconstruction "
        f"error of the dense FFN against the MoE block output (‖dense − moe‖² / ‖moe‖²): "
        f"**{gathered['mean_reconstruction_error']}**.",
        "",
    ]
    if "gathered_ppl" in gathered:
        final = report["quality"]["student"].get("perplexity", "—")
        lines += [
            "| perplexity (held-out) | MoE teacher | right after gathering | after refinement |",
            "|---|---|---|---|",
            f"| | {gathered['moe_ppl']} | {gathered['gathered_ppl']} | {final} |",
            "",
        ]
    lines += [
        "| layer | reconstruction error | before the least-squares refit | router entropy (nats) | expert load |",
        "|---|---|---|---|---|",
    ]
    for row in gathered["layers"]:
        load = " ".join(f"{v:.2f}" for v in row["router"]["load"])
        lines.append(
            f"| {row['layer']} | {row['reconstruction_error']} | {row.get('error_before_refit', '—')} "
            f"| {row['router']['entropy']} | {load} |"
        )
    speed = gathered.get("pytorch_speed")
    if speed:
        lines += [
            "",
            f"PyTorch ({speed['device']}, eager): MoE {speed['moe_tokens_per_s']} tokens/s, dense student "
            f"{speed['dense_tokens_per_s']} tokens/s — **{speed['speedup']}×**.",
        ]
    onnx = report.get("speed")
    if onnx and onnx.get("measured"):
        student = onnx["student"]
        lines += [
            "",
            f"Student ONNX (`{onnx['student_file']}`, target {report['target']['name']}): "
            f"p50 {student['latency']['p50_ms']} ms at batch 1 × {onnx['seq']} tokens, "
            f"{student['throughput_seq_per_s']} sequences/s at batch {onnx['throughput_batch']}.",
        ]
    elif onnx:
        lines += ["", f"Student ONNX speed not measured: {onnx.get('reason')}."]
    return lines + [""]
