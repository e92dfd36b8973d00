"""`export`: Optimum ONNX export of the student for its task, graph optimization, the target's quantization,
and our own validation gates at every step.

1. Optimum exports the task's graph (causal LM with KV cache, feature extraction, sequence classification).
2. The graph is optimized (compressor.onnx_opt); an optimized graph that fails validation is dropped, with the
   reason in the report, and the plain export ships.
3. Gate: ONNX Runtime against PyTorch on real text — max abs diff and top-1 agreement (embedding cosine for
   encoders); for causal LMs a continuation through the exported KV cache and greedy generation that must
   give PyTorch's exact tokens. A failure raises GateError: a student that disagrees with itself never ships.
4. The target's quantization (dynamic int8 for cpu/edge, fp16 for gpu), gated against the fp32 student; when
   that gate fails the fp32 model is the one to deploy and the report says why.
"""

from __future__ import annotations

import shutil
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from compressor.data import builtin_documents, encode_sentences, lm_blocks, sentences
from compressor.errors import GateError, UserError
from compressor.ir import ModelIR
from compressor.onnx_check import (
    compare_hidden,
    compare_logits,
    encoder_output,
    greedy_tokens,
    lm_logits,
    open_session,
    torch_encoder_output,
    torch_greedy_tokens,
    torch_lm_logits,
)
from compressor.onnx_opt import convert_fp16, optimize, quantize_int8
from passes.base import Pass, PassConfig, PassContext, register

Task = Literal["auto", "text-generation-with-past", "feature-extraction", "text-classification"]


class ExportConfig(PassConfig):
    task: Task = "auto"
    opset: int | None = Field(default=None, ge=14)
    optimize: bool = Field(default=True, description="graph optimization (kept only if it validates)")
    quantize: Literal["target", "none", "int8", "fp16"] = Field(default="target", description="default: the target's")
    validation_samples: int = Field(default=4, ge=1, description="sequences (LM) or sentences x4 (encoder)")
    validation_length: int = Field(default=32, ge=4, description="tokens per validation sequence (LM)")
    generation_prompts: int = Field(default=4, ge=0, description="greedy-generation prompts checked (LM)")
    generation_tokens: int = Field(default=32, ge=1)


def export_task(ir: ModelIR, requested: str) -> str:
    if requested != "auto":
        return requested
    if ir.task == "causal-lm":
        return "text-generation-with-past"
    architectures = getattr(ir.config, "architectures", None) or []
    return "text-classification" if any("SequenceClassification" in a for a in architectures) else "feature-extraction"


class Checker:
    """Runs one ONNX file on the validation inputs and compares it with a reference (PyTorch or fp32 ONNX)."""

    def __init__(self, task: str, inputs: dict[str, np.ndarray], prefill: int) -> None:
        self.task, self.inputs, self.prefill = task, inputs, prefill

    def outputs(self, session) -> np.ndarray:
        if self.task.startswith("text-generation"):
            return lm_logits(session, self.inputs["input_ids"], self.prefill)
        return encoder_output(session, self.inputs)

    def torch_outputs(self, model) -> np.ndarray:
        if self.task.startswith("text-generation"):
            return torch_lm_logits(model, self.inputs["input_ids"])
        return torch_encoder_output(model, self.inputs)

    def compare(self, candidate: np.ndarray, reference: np.ndarray) -> dict:
        if self.task == "feature-extraction":
            return compare_hidden(candidate, reference, self.inputs["attention_mask"])
        figures = compare_logits(candidate, reference)
        if self.task.startswith("text-generation"):
            figures["max_abs_diff_kv_cache_step"] = float(np.abs(candidate - reference)[:, self.prefill :].max())
            figures["kv_cache_checked"] = True
        return figures


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
        raw_dir = ctx.scratch / "onnx-raw"
        shutil.rmtree(raw_dir, ignore_errors=True)
        main_export(
            str(hf_dir),
            raw_dir,
            task=task,
            opset=cfg.opset,
            dtype=dtype,
            device="cuda" if dtype == "fp16" else "cpu",
            do_validation=False,
            local_files_only=True,
            library_name="transformers",
        )  # plain last_hidden_state, even when sentence-transformers files exist
        if not (raw_dir / "model.onnx").exists():
            raise RuntimeError(f"export: Optimum wrote no model.onnx in {raw_dir}")

        model = ir.materialize("cpu", torch.float32)
        checker = self.checker(ir, ctx, task)
        reference = checker.torch_outputs(model)
        providers, options = ctx.target.available_providers(), ctx.target.session_options()
        notes = [dtype_note] if dtype_note else []
        tolerance = ctx.target.tolerance(dtype)

        chosen, optimization = raw_dir / "model.onnx", {"applied": False}
        if cfg.optimize:
            chosen, optimization = self.optimized(ir, ctx, raw_dir, checker, reference, tolerance, dtype)

        onnx_dir = ctx.artifacts / "onnx"
        shutil.rmtree(onnx_dir, ignore_errors=True)
        shutil.copytree(raw_dir, onnx_dir, ignore=shutil.ignore_patterns("model.onnx*"))
        for file in chosen.parent.glob(f"{chosen.name}*"):  # the graph and any external-data file beside it
            shutil.copy2(file, onnx_dir / file.name.replace(chosen.stem, "model", 1))
        session = open_session(onnx_dir / "model.onnx", providers, options)
        figures = checker.compare(checker.outputs(session), reference)
        if task.startswith("text-generation") and cfg.generation_prompts:
            figures.update(self.generation_check(ir, ctx, session, model))
        figures.update(
            {
                "task": task,
                "dtype": dtype,
                "providers": session.get_providers(),
                "tolerance": tolerance,
                "onnx_bytes": file_bytes(onnx_dir, "model.onnx"),
            }
        )
        available, why = ctx.target.hardware()
        if not available:
            notes.append(f"target {ctx.target.name}: {why}; validated with {', '.join(session.get_providers())}")
        figures["notes"] = notes
        failures = self.failures(figures, tolerance, ctx)
        figures["passed"] = not failures
        ctx.metrics["validation"] = figures
        ctx.metrics["optimization"] = optimization
        if failures:
            raise GateError(f"export: ONNX validation failed ({'; '.join(failures)})")

        kind = ctx.target.quantization if cfg.quantize == "target" else cfg.quantize
        kind = "int8" if kind == "dynamic-int8" else kind
        quantization = self.quantized(kind, ctx, onnx_dir, checker, checker.outputs(session), model)
        ctx.metrics["quantization"] = quantization
        ctx.metrics["deploy_file"] = quantization["file"] if quantization.get("passed") else "model.onnx"
        return ir

    # ---- steps --------------------------------------------------------------------------------
    def checker(self, ir: ModelIR, ctx: PassContext, task: str) -> Checker:
        cfg: ExportConfig = self.config
        docs = list(ctx.corpus.eval) if ctx.corpus else list(builtin_documents()[-200:])
        if task.startswith("text-generation"):
            ids = lm_blocks(ctx.tokenizer, docs, cfg.validation_length, max_blocks=cfg.validation_samples)
            return Checker(task, {"input_ids": ids.numpy()}, prefill=cfg.validation_length * 3 // 4)
        texts = (sentences(docs) or docs)[: cfg.validation_samples * 4]
        encoded = {k: v.numpy() for k, v in encode_sentences(ctx.tokenizer, texts, 128).items()}
        return Checker(task, encoded, prefill=0)

    def optimized(self, ir, ctx, raw_dir, checker, reference, tolerance, dtype):
        """The optimized graph if it validates like the plain one; otherwise the plain one, with the reason."""
        out = ctx.scratch / "onnx-optimized" / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        config = ir.config
        try:
            optimizer = optimize(
                raw_dir / "model.onnx",
                out,
                config.model_type,
                config.num_attention_heads,
                config.hidden_size,
                for_gpu=ctx.target.name == "gpu",
            )
            session = open_session(out, ctx.target.available_providers(), ctx.target.session_options())
            figures = checker.compare(checker.outputs(session), reference)
        except Exception as exc:  # an optimizer that cannot handle this graph must not stop the export
            return raw_dir / "model.onnx", {"applied": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
        problems = self.failures({**figures, "dtype": dtype}, tolerance, ctx)
        if problems:
            return raw_dir / "model.onnx", {
                "applied": False,
                "optimizer": optimizer,
                "reason": f"optimized graph failed validation: {'; '.join(problems)}",
            }
        return out, {
            "applied": True,
            "optimizer": optimizer,
            "bytes_before": file_bytes(raw_dir, "model.onnx"),
            "bytes_after": file_bytes(out.parent, "model.onnx"),
        }

    def generation_check(self, ir: ModelIR, ctx: PassContext, session, model) -> dict:
        """Greedy tokens through the ONNX KV cache must equal PyTorch's.

        A divergence is accepted only as a numerical tie: at the first differing step, PyTorch's own logits for
        the two candidate tokens differ by no more than twice the fp32 tolerance (both sides may round).
        """
        cfg: ExportConfig = self.config
        docs = list(ctx.corpus.eval) if ctx.corpus else list(builtin_documents()[-200:])
        prompts = lm_blocks(ctx.tokenizer, docs, 8, max_blocks=cfg.generation_prompts).numpy()
        identical, ties, worst = 0, 0, 0.0
        for prompt in prompts:
            onnx_tokens = greedy_tokens(session, prompt[None], cfg.generation_tokens)
            torch_tokens = torch_greedy_tokens(model, prompt[None], cfg.generation_tokens)
            if onnx_tokens == torch_tokens:
                identical += 1
                continue
            step = next(i for i, (a, b) in enumerate(zip(onnx_tokens, torch_tokens, strict=True)) if a != b)
            prefix = np.concatenate([prompt, np.array(torch_tokens[:step], dtype=np.int64)])[None]
            logits = torch_lm_logits(model, prefix)[0, -1]
            margin = abs(float(logits[torch_tokens[step]] - logits[onnx_tokens[step]]))
            worst = max(worst, margin)
            ties += margin <= 2 * ctx.target.max_abs_diff_fp32
        return {
            "generation_identical": f"{identical}/{len(prompts)}",
            "generation_ties": ties,
            "generation_ok": identical + ties == len(prompts),
            "generation_tokens": cfg.generation_tokens,
            "generation_worst_divergence_margin": worst,
        }

    def failures(self, figures: dict, tolerance: float, ctx: PassContext) -> list[str]:
        target = ctx.target
        problems = []
        if figures["max_abs_diff"] > tolerance:
            problems.append(f"max abs diff {figures['max_abs_diff']:.3g} > {tolerance}")
        if figures.get("top1_agreement", 1.0) < target.min_top1_agreement:
            problems.append(f"top-1 agreement {figures['top1_agreement']:.4f} < {target.min_top1_agreement}")
        if figures.get("min_embedding_cosine", 1.0) < target.min_embedding_cosine:
            problems.append(f"embedding cosine {figures['min_embedding_cosine']:.5f} < {target.min_embedding_cosine}")
        if figures.get("generation_ok") is False:
            problems.append(f"greedy generation differs from PyTorch ({figures['generation_identical']} identical)")
        return problems

    def quantized(self, kind: str, ctx: PassContext, onnx_dir, checker: Checker, fp32_outputs, model) -> dict:
        """Quantize as the target asks; keep the file only if it passes its gate against the fp32 student."""
        if kind == "none":
            return {"kind": "none"}
        target = ctx.target
        source = onnx_dir / "model.onnx"
        if kind == "int8":
            out = onnx_dir / "model_int8.onnx"
            quantize_int8(source, out, **target.quant_settings())
            session = open_session(out, target.available_providers(), target.session_options())
            figures = checker.compare(checker.outputs(session), fp32_outputs)
            if checker.task == "feature-extraction":
                ok = figures["mean_embedding_cosine"] >= target.int8_min_cosine
                gate = (
                    f"mean embedding cosine to fp32 {figures['mean_embedding_cosine']:.4f} >= {target.int8_min_cosine}"
                )
            else:
                ok = figures["top1_agreement"] >= target.int8_min_top1
                gate = f"top-1 agreement with fp32 {figures['top1_agreement']:.4f} >= {target.int8_min_top1}"
            result = {
                "kind": "int8",
                "file": out.name,
                "passed": ok,
                "gate": gate if ok else gate.replace(">=", "<"),
                "settings": target.quant_settings(),
                "bytes": file_bytes(onnx_dir, out.name),
                **figures,
            }
            if not ok:
                out.unlink()
                result["reason"] = f"int8 model failed its accuracy gate ({result['gate']}): the fp32 model ships"
            return result
        out = onnx_dir / "model_fp16.onnx"
        convert_fp16(source, out)
        result = {"kind": "fp16", "file": out.name, "bytes": file_bytes(onnx_dir, out.name)}
        try:
            session = open_session(out, target.available_providers(), target.session_options())
            figures = checker.compare(checker.outputs(session), fp32_outputs)
        except Exception as exc:  # the CPU provider lacks some fp16 kernels: say so, do not pretend
            result.update(
                {
                    "passed": True,
                    "validated": False,
                    "reason": f"fp16 model could not run on {', '.join(target.available_providers())} here "
                    f"({type(exc).__name__}: {str(exc)[:160]}); not validated on this machine",
                }
            )
            return result
        ok = figures["max_abs_diff"] <= target.tolerance("fp16") and figures.get("top1_agreement", 1.0) >= 0.99
        result.update({"passed": ok, "validated": True, "providers": session.get_providers(), **figures})
        if not ok:
            out.unlink()
            result["reason"] = "fp16 model disagrees with fp32 beyond the fp16 tolerance: the fp32 model ships"
        return result


def file_bytes(directory, name: str) -> int:
    """Size of an ONNX graph plus its external-data file, if any."""
    return sum(f.stat().st_size for f in directory.glob(f"{name}*") if f.is_file())
