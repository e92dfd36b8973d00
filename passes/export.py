"""`export`: Optimum ONNX export of the student for its task, then our own validation gate.

The gate runs ONNX Runtime against PyTorch on real text (max abs diff, top-1 agreement, and for causal LMs a
continuation through the exported KV cache). A failure raises GateError: a student that disagrees with
itself is never shipped. Optimization and quantization per target come in the deployment issue.
"""

from __future__ import annotations

import shutil
from typing import Literal

import torch
from pydantic import Field

from compressor.data import builtin_documents, encode_sentences, lm_blocks, sentences
from compressor.errors import GateError, UserError
from compressor.ir import ModelIR
from compressor.onnx_check import check_causal_lm, check_encoder, open_session
from passes.base import Pass, PassConfig, PassContext, register

Task = Literal["auto", "text-generation-with-past", "text-generation", "feature-extraction", "text-classification"]


class ExportConfig(PassConfig):
    task: Task = "auto"
    opset: int | None = Field(default=None, ge=14)
    validation_samples: int = Field(default=4, ge=1, description="sequences (LM) or sentences x4 (encoder)")
    validation_length: int = Field(default=32, ge=4, description="tokens per validation sequence (LM)")


def export_task(ir: ModelIR, requested: str) -> str:
    if requested != "auto":
        return requested
    if ir.task == "causal-lm":
        return "text-generation-with-past"
    architectures = getattr(ir.config, "architectures", None) or []
    return "text-classification" if any("SequenceClassification" in a for a in architectures) else "feature-extraction"


@register
class Export(Pass):
    name = "export"
    Config = ExportConfig
    target_dependent = True
    produces_ir = False

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        from optimum.exporters.onnx import main_export

        cfg: ExportConfig = self.config
        if ir.family == "moe":
            raise UserError(
                f"export: the student is still a Mixture-of-Experts ({ir.config.model_type}); Optimum cannot export "
                "MoE models — run the `moe_to_dense` pass first"
            )
        task = export_task(ir, cfg.task)
        dtype, dtype_note = ctx.target.effective_export_dtype()
        hf_dir = ir.save(ctx.scratch / "student-for-export")
        onnx_dir = ctx.artifacts / "onnx"
        if onnx_dir.exists():
            shutil.rmtree(onnx_dir)
        main_export(
            str(hf_dir),
            onnx_dir,
            task=task,
            opset=cfg.opset,
            dtype=dtype,
            device="cuda" if dtype == "fp16" else "cpu",
            do_validation=False,
            local_files_only=True,
            library_name="transformers",  # plain last_hidden_state, even when sentence-transformers files exist
        )
        onnx_file = onnx_dir / "model.onnx"
        if not onnx_file.exists():
            raise RuntimeError(f"export: Optimum wrote no model.onnx in {onnx_dir}")
        providers = ctx.target.available_providers()
        session = open_session(onnx_file, providers, ctx.target.session_options())
        figures = self.validate(ir, ctx, session, task)
        tolerance = ctx.target.tolerance(dtype)
        figures.update(
            {
                "task": task,
                "dtype": dtype,
                "providers": session.get_providers(),
                "tolerance": tolerance,
                "onnx_bytes": sum(f.stat().st_size for f in onnx_dir.iterdir() if f.is_file()),
            }
        )
        notes = [dtype_note] if dtype_note else []
        available, why = ctx.target.hardware()
        if not available:
            notes.append(f"target {ctx.target.name}: {why}; validated with {', '.join(session.get_providers())}")
        figures["notes"] = notes
        ctx.metrics["validation"] = figures
        failures = []
        if figures["max_abs_diff"] > tolerance:
            failures.append(f"max abs diff {figures['max_abs_diff']:.3g} > {tolerance}")
        if figures.get("top1_agreement", 1.0) < ctx.target.min_top1_agreement:
            failures.append(f"top-1 agreement {figures['top1_agreement']:.4f} < {ctx.target.min_top1_agreement}")
        if figures.get("min_embedding_cosine", 1.0) < 0.999:
            failures.append(f"embedding cosine {figures['min_embedding_cosine']:.5f} < 0.999")
        figures["passed"] = not failures
        if failures:
            raise GateError(f"export: ONNX validation failed ({'; '.join(failures)})")
        return ir

    def validate(self, ir: ModelIR, ctx: PassContext, session, task: str) -> dict:
        cfg: ExportConfig = self.config
        docs = list(ctx.corpus.eval) if ctx.corpus else list(builtin_documents()[-200:])
        model = ir.materialize("cpu", torch.float32)
        if task.startswith("text-generation"):
            ids = lm_blocks(ctx.tokenizer, docs, cfg.validation_length, max_blocks=cfg.validation_samples)
            if "with-past" not in task:
                raise UserError("export: validation needs the KV-cache export (task text-generation-with-past)")
            return check_causal_lm(session, model, ids, prefill=cfg.validation_length * 3 // 4)
        texts = (sentences(docs) or docs)[: cfg.validation_samples * 4]
        return check_encoder(session, model, encode_sentences(ctx.tokenizer, texts, 128))
