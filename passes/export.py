"""`export`: Optimum ONNX export of the student for its task, graph optimization, the target's quantization,
and our own validation gates at every step.

1. Optimum exports the task's graph (causal LM with KV cache, feature extraction, sequence classification).
2. The graph is optimized (compressor.onnx.optimize); an optimized graph that fails validation is dropped, with the
   reason in the report, and the plain export ships.
3. Gate: ONNX Runtime against PyTorch on real text — max abs diff and top-1 agreement (embedding cosine for
   encoders); for causal LMs a continuation through the exported KV cache and greedy generation that must
   give PyTorch's exact tokens. A failure raises GateError: a student that disagrees with itself never ships.
4. Tied weights are stored once (compressor.onnx.tied): the fp32 file holds each parameter once.
5. The target's quantization, gated against the fp32 student: for causal LMs on cpu/edge weight-only
   MatMulNBits variants, smallest first, judged by held-out perplexity (+ KL, top-1 beside it); dynamic int8
   for encoders; fp16 for gpu. A variant that fails its gate is deleted and the report says why; when none
   passes the fp32 model is the one to deploy.
6. Causal LMs get `genai_config.json` for the deploy file, so ONNX Runtime GenAI runs the folder as it is.
"""

from __future__ import annotations

import shutil
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from compressor.data import encode_sentences, lm_blocks, sentences
from compressor.errors import GateError, UserError
from compressor.ir import ModelIR
from compressor.kd.train import say
from compressor.onnx.check import (
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
from compressor.onnx.decode import onnx_decode_speed
from compressor.onnx.genai import retarget_genai_config, write_genai_config
from compressor.onnx.genai_builder import build_fp32, builder_available, single_file
from compressor.onnx.optimize import optimize
from compressor.onnx.tied import share_file_weights
from compressor.onnx.variants import VARIANTS, check_variant
from passes.base import Pass, PassConfig, PassContext, register
from passes.export_report import onnx_lines, report_fields
from passes.export_variants import graph_bytes as file_bytes
from passes.export_variants import held_out_documents, quantize_variants

GQA_HEAD_MULTIPLE = 16  # onnxruntime's CPU GroupQueryAttention refuses other head sizes at run time
Task = Literal["auto", "text-generation-with-past", "feature-extraction", "text-classification"]


class ExportConfig(PassConfig):
    task: Task = "auto"
    opset: int | None = Field(default=None, ge=14)
    optimize: bool = Field(default=True, description="graph optimization (kept only if it validates)")
    quantize: str | list[str] = Field(
        default="target",
        description="'target' (the target's choice), 'none', or a variant or list of variants to write: "
        + ", ".join(VARIANTS),
    )
    max_perplexity_increase: float = Field(
        default=0.03, ge=0, description="LM gate: held-out perplexity of a quantized model vs fp32, relative"
    )
    gate_sequences: int = Field(default=16, ge=1, description="held-out sequences for the LM quantization gate")
    gate_length: int = Field(default=128, ge=8, description="tokens per LM gate sequence")
    graph: Literal["auto", "optimum"] = Field(
        default="auto",
        description="causal LMs: 'auto' also builds with ONNX Runtime GenAI's builder and ships the faster graph",
    )
    validation_samples: int = Field(default=4, ge=1, description="sequences (LM) or sentences x4 (encoder)")
    validation_length: int = Field(default=32, ge=4, description="tokens per validation sequence (LM)")
    generation_prompts: int = Field(default=4, ge=0, description="greedy-generation prompts checked (LM)")
    generation_tokens: int = Field(default=32, ge=1)

    @field_validator("quantize")
    @classmethod
    def known_variants(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("quantize: an empty list; use 'none' for no quantized model")
            return [check_variant(v) for v in value]
        return value if value in ("target", "none") else check_variant(value)


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
    uses_data = True
    target_dependent = True
    produces_ir = False

    @classmethod
    def report_fields(cls, metrics: dict) -> dict:
        return report_fields(metrics)

    @classmethod
    def report_lines(cls, report: dict, metrics: dict) -> list[str]:
        return onnx_lines(report)

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        from optimum.exporters.onnx import main_export

        cfg: ExportConfig = self.config
        unexportable = ir.adapter.onnx_exportable(ir.config)
        if unexportable:
            raise UserError(f"export: {unexportable} — run the `moe_to_dense` pass first")
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
        tied = share_file_weights(onnx_dir / "model.onnx")
        tied["parameter_bytes"] = parameter_bytes(model)
        tied["fp32_file_bytes"] = file_bytes(onnx_dir, "model.onnx")
        tied["file_over_parameters"] = round(tied["fp32_file_bytes"] / tied["parameter_bytes"], 4)
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

        ctx.metrics["tied_weights"] = tied
        causal = task.startswith("text-generation")
        deployment = quantize_variants(cfg, causal, ctx, onnx_dir, checker, session, int(ir.config.vocab_size))
        if causal and cfg.graph != "optimum":
            deployment = self.faster_graph(ir, ctx, hf_dir, onnx_dir, deployment, checker, reference, model)
        tried = deployment["tried"]
        ctx.metrics["quantization_tried"] = tried
        ctx.metrics["quantization"] = next((r for r in tried if r["file"] == deployment["deploy_file"]), None) or (
            tried[-1] if tried else {"kind": "none"}
        )
        ctx.metrics["deploy_file"] = deployment["deploy_file"]
        if "latency_choice" in deployment:
            ctx.metrics["latency_choice"] = deployment["latency_choice"]
        if causal and ctx.metrics.get("graph", {}).get("chosen") == "genai-builder":
            ctx.metrics["genai"] = retarget_genai_config(onnx_dir, deployment["deploy_file"])
        elif causal:
            generation = getattr(model, "generation_config", None)
            ctx.metrics["genai"] = write_genai_config(
                onnx_dir, deployment["deploy_file"], ir.config, ir.adapter, generation
            )
        return ir

    def faster_graph(self, ir, ctx: PassContext, hf_dir, onnx_dir, deployment: dict, checker, reference, model):
        """Build the same student with ONNX Runtime GenAI's builder, validate and quantize it like Optimum's
        graph, time both deploy files decoding, and ship the faster (issue 14 §5). Figures in metrics["graph"]."""
        target = ctx.target
        optimum = {"deploy_file": deployment["deploy_file"]}
        choice: dict = {"chosen": "optimum", "candidates": {"optimum": optimum}}
        ctx.metrics["graph"] = choice
        why_not = self.builder_unusable(ir, ctx)
        if why_not:
            choice["genai_builder"] = why_not
            return deployment
        staging = ctx.scratch / "onnx-genai"
        shutil.rmtree(staging, ignore_errors=True)
        say("export: building the same student with ONNX Runtime GenAI's model builder (a graph made for decoding)")
        try:
            built = build_fp32(hf_dir, staging, ctx.scratch / "genai-cache", ctx.scratch / "genai-builder.log")
            single_file(built)
            tied = share_file_weights(built)
            options = target.session_options()
            options.log_severity_level = 4  # a kernel that refuses this graph raises; its log line is not ours
            session = open_session(built, target.available_providers(), options)
            figures = checker.compare(checker.outputs(session), reference)
            figures.update(self.generation_check(ir, ctx, session, model))
        except Exception as exc:  # a builder that cannot take this student must not stop the export
            choice["genai_builder"] = f"not used: {type(exc).__name__}: {str(exc)[:240]}"
            return deployment
        problems = self.failures(figures, target.tolerance("fp32"), ctx)
        if problems:
            choice["genai_builder"] = f"not used: its graph failed validation ({'; '.join(problems)})"
            return deployment
        built_deployment = quantize_variants(
            self.config, True, ctx, staging, checker, session, int(ir.config.vocab_size)
        )
        vocab = int(ir.config.vocab_size)
        for name, folder, chosen in (("optimum", onnx_dir, deployment), ("genai-builder", staging, built_deployment)):
            file = folder / chosen["deploy_file"]
            timed = open_session(file, target.available_providers(), target.session_options())
            choice["candidates"][name] = {
                "deploy_file": chosen["deploy_file"],
                "bytes": file_bytes(folder, chosen["deploy_file"]),
                "decode": onnx_decode_speed(timed, vocab),
            }
        choice["candidates"]["genai-builder"]["validation"] = figures
        rates = {name: c["decode"]["decode_tokens_per_s"] for name, c in choice["candidates"].items()}
        if rates["genai-builder"] <= rates["optimum"]:
            choice["reason"] = (
                f"Optimum's graph decodes as fast or faster ({rates['optimum']} vs {rates['genai-builder']} tokens/s)"
            )
            say(f"export: shipping Optimum's graph: {choice['reason']}")
            return deployment
        for old in onnx_dir.glob("model*.onnx*"):
            old.unlink()
        for new in staging.glob("model*.onnx*"):
            shutil.copy2(new, onnx_dir / new.name)
        shutil.copy2(staging / "genai_config.json", onnx_dir / "genai_config.json")
        choice["chosen"] = "genai-builder"
        choice["reason"] = (
            f"the GenAI builder's graph decodes faster ({rates['genai-builder']} vs {rates['optimum']} tokens/s, "
            f"{rates['genai-builder'] / rates['optimum']:.2f}x) and passed the same gates"
        )
        say(f"export: shipping the GenAI builder's graph: {choice['reason']}")
        fp32_bytes = file_bytes(onnx_dir, "model.onnx")
        validation = {**ctx.metrics["validation"], **figures, "graph": "genai-builder", "onnx_bytes": fp32_bytes}
        ctx.metrics["validation"] = validation
        parameters = ctx.metrics["tied_weights"]["parameter_bytes"]
        ctx.metrics["tied_weights"] = {
            **tied,
            "parameter_bytes": parameters,
            "fp32_file_bytes": fp32_bytes,
            "file_over_parameters": round(fp32_bytes / parameters, 4),
        }
        return built_deployment

    def builder_unusable(self, ir: ModelIR, ctx: PassContext) -> str | None:
        """Why the GenAI builder route is not tried here, or None."""
        if ctx.target.name == "gpu":
            return "not tried: the builder route is measured on CPU targets only (gpu ships Optimum's fp16 graph)"
        if ir.adapter.genai_model_type(ir.config) is None:
            return f"not tried: ONNX Runtime GenAI has no builder for {ir.config.model_type}"
        head_size = ir.adapter.attention_shape(ir.config)[2]
        if head_size % GQA_HEAD_MULTIPLE:
            return (
                f"not tried: its GroupQueryAttention kernel needs a head size that is a multiple of "
                f"{GQA_HEAD_MULTIPLE} (this student's is {head_size})"
            )
        available, why = builder_available()
        return None if available else f"not tried: {why}"

    # ---- steps --------------------------------------------------------------------------------
    def checker(self, ir: ModelIR, ctx: PassContext, task: str) -> Checker:
        cfg: ExportConfig = self.config
        docs = held_out_documents(ctx)
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
        heads = ir.adapter.attention_shape(ir.config)[0]
        try:
            optimizer = optimize(
                raw_dir / "model.onnx",
                out,
                ir.adapter.ort_model_type(ir.config),
                heads,
                ir.adapter.hidden_size(ir.config),
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
        docs = held_out_documents(ctx)
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


def parameter_bytes(model) -> int:
    """Bytes of the model's parameters, each tied tensor counted once (what an fp32 file must hold)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
