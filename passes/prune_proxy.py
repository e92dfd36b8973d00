"""Short-distillation proxy for `prune`'s choice of shape (Minitron's "lightweight retraining" of candidates).

Right after one-shot pruning, a candidate's loss to the teacher says how much function survived the cut, not how
well the shape learns back: on stories260K at half the parameters the one-shot ranking put `ffn+hidden` first,
and after the same 1.23M tokens of recovery it ended at 13.1 perplexity against `depth+ffn`'s 11.8. Minitron
(Muralidharan et al. 2024) makes the same observation and ranks candidate architectures after a lightweight
retraining; ALGORITHMS §8 step 5 is the retraining objective (forward KL on the logits, T = 1). Here
every candidate distils for the same few steps, on the same blocks in the same order, from the unpruned teacher
(forward KL on the logits), and is scored by its KL to the teacher on the validation share afterwards.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from compressor.data import lm_blocks
from compressor.importance import stream_covariance
from compressor.ir import ModelIR
from compressor.kd.divergences import forward_kl
from passes.base import PassContext
from passes.prune_cut import between, loss_to_teacher, prune_to, validation_blocks
from passes.prune_shapes import Shape, cut_name, shape_of, tied_head_size


@dataclass(frozen=True)
class ProxySettings:
    steps: int = 60
    batch_size: int = 8
    lr: float = 1e-3  # the distill pass's default for causal LMs: the proxy trains as recovery will
    warmup: int = 5
    seed: int = 0


def cycled_batch(blocks: torch.Tensor, order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """The `step`-th batch of `blocks` taken in `order`, wrapping around when the blocks run out."""
    first = (step * batch_size) % max(len(blocks) - batch_size + 1, 1)
    return blocks[order[first : first + batch_size]]


def batch_kl(teacher, student, ids: torch.Tensor, autocast) -> torch.Tensor:
    """Mean forward KL(p_T ‖ q_S) of the next-token distributions on `ids` (ALGORITHMS §8 step 5: T = 1); the
    teacher without gradients."""
    with torch.no_grad(), autocast:
        log_p = torch.log_softmax(teacher(input_ids=ids).logits.float(), -1)
    with autocast:
        log_q = torch.log_softmax(student(input_ids=ids).logits.float(), -1)
    return forward_kl(log_q, log_p).mean()


def short_kd(teacher, student, blocks: torch.Tensor, settings: ProxySettings, device: torch.device) -> dict:
    """Distil `student` in place from `teacher` for `settings.steps` steps on `blocks` [N, S] (cycled in a seeded
    order, the same for every candidate; forward KL on the logits). Returns the steps run, the tokens seen, the
    seconds per step and the mean loss of the last tenth of the steps."""
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(settings.seed))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def loss(step: int) -> torch.Tensor:
        return batch_kl(teacher, student, cycled_batch(blocks, order, step, settings.batch_size).to(device), autocast)

    return {**train_steps(student, loss, settings), "tokens": settings.steps * settings.batch_size * blocks.shape[1]}


def short_kd_encoder(
    teacher,
    student,
    texts: list[str],
    tokenizer,
    settings: ProxySettings,
    device: torch.device,
    max_len: int,
    relations: bool = False,
) -> dict:
    """The encoder form of `short_kd`: `settings.steps` steps of the distill pass's encoder loss (embedding cosine
    and hidden MSE, or the similarity relations when the student is narrower, or whatever its width with
    `relations`) on `texts`, cycled in a seeded order the same for every candidate. Returns what `short_kd` does,
    tokens counted without padding."""
    from compressor.data import encode_sentences
    from compressor.kd.losses import encoder_kd_loss

    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(settings.seed))
    seen = [0]

    def loss(step: int) -> torch.Tensor:
        first = (step * settings.batch_size) % max(len(texts) - settings.batch_size + 1, 1)
        chosen = [texts[int(i)] for i in order[first : first + settings.batch_size]]
        batch = {k: v.to(device) for k, v in encode_sentences(tokenizer, chosen, max_len).items()}
        seen[0] += int(batch["attention_mask"].sum())
        with torch.no_grad():
            target = teacher(**batch, output_hidden_states=True).hidden_states[-1]
        hidden = student(**batch, output_hidden_states=True).hidden_states[-1]
        return encoder_kd_loss(hidden, target, batch["attention_mask"], relations=relations)[0]

    return {**train_steps(student, loss, settings), "tokens": seen[0]}


def train_steps(student, loss_at, settings: ProxySettings) -> dict:
    """`settings.steps` AdamW steps (linear warm-up, then constant) of `loss_at(step)` on `student`, in place; the
    student is left in eval mode without gradients. Returns the steps, seconds per step and the tail's mean loss."""
    torch.manual_seed(settings.seed)
    student.train()
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=0.0)
    warmup = max(1, settings.warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    losses, start = [], time.perf_counter()
    for step in range(settings.steps):
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    student.eval()
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": settings.steps,
        "seconds_per_step": seconds / max(settings.steps, 1),
        "loss_end": sum(tail) / len(tail) if tail else float("nan"),
    }


def kd_ranking(cfg, ir: ModelIR, model, ctx: PassContext, students: dict, scored: dict, held) -> dict:
    """Distil every candidate for `score_steps` on the same training blocks and add its KL afterwards to
    `scored` (`shape_score: kd`, or `auto` when the time a probe projects fits `score_seconds`). Returns how
    the candidates were ranked, and the best trained student (kept: its steps count as training)."""
    if cfg.shape_score == "oneshot":
        return {"by": "oneshot", "why": "shape_score: oneshot"}
    if ir.task != "causal-lm":
        return {"by": "oneshot", "why": "the kd ranking distils logits (causal LMs only)"}
    corpus = ctx.require_corpus("prune")
    settings = ProxySettings(steps=cfg.score_steps, batch_size=cfg.score_batch_size, seed=ctx.seed)
    blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.seq_len, max_blocks=settings.steps * settings.batch_size,
                       name=corpus.name)  # fmt: skip
    probe = short_kd(model, next(iter(students.values())).materialize(ctx.device), blocks,
                     replace(settings, steps=3), ctx.device)  # fmt: skip
    projected = probe["seconds_per_step"] * settings.steps * len(students)
    if cfg.shape_score == "auto" and projected > cfg.score_seconds:
        return {
            "by": "oneshot",
            "why": f"the kd ranking would take about {projected:,.0f} s (> score_seconds {cfg.score_seconds:g})",
        }
    trained, tokens = None, 0
    for name, student_ir in students.items():
        student = student_ir.materialize(ctx.device)
        run = short_kd(model, student, blocks, settings, ctx.device)
        scored[name]["loss_after_kd"] = round(loss_to_teacher(model, student, held, ctx, cfg.seq_len), 5)
        if trained is None or scored[name]["loss_after_kd"] < scored[trained[0]]["loss_after_kd"]:
            trained = (name, student_ir.absorb(student))
        tokens += run["tokens"]
        if ctx.show_progress:
            row = scored[name]
            line = f"{row['loss_to_teacher']:.4f} one-shot, {row['loss_after_kd']:.4f} after {settings.steps} steps"
            print(f"prune: {name} KL {line}", file=sys.stderr, flush=True)
    return {
        "by": "kd",
        "steps": settings.steps,
        "tokens_per_candidate": settings.steps * settings.batch_size * cfg.seq_len,
        "tokens": tokens,
        "trained": trained,
    }


def iterate(cfg, importance, ir: ModelIR, model, ctx: PassContext, batches: list[dict], shape: Shape) -> tuple:
    """The iterative schedule: `rounds` cuts on the way from the teacher's shape to `shape` (counts
    interpolated linearly), each followed by `round_steps` of distillation from the unpruned `model`, and
    every cut scored afresh on the model it cuts. Returns the student and one report row per round."""
    corpus = ctx.require_corpus("prune")
    settings = ProxySettings(steps=cfg.round_steps, batch_size=cfg.score_batch_size, seed=ctx.seed)
    blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.seq_len, max_blocks=settings.steps * settings.batch_size,
                       name=corpus.name)  # fmt: skip
    held = validation_blocks(ir, ctx, "prune", cfg.seq_len, cfg.score_blocks)
    current, current_model, rows = ir, model, []
    for round_ in range(1, cfg.rounds + 1):
        scores = importance(current, current_model, batches)
        if cfg.hidden_method == "pca":
            scores["covariance"] = stream_covariance(current_model, batches)
        step = between(shape_of(ir), shape, round_ / cfg.rounds, tied_head_size(ir))
        current = prune_to(current, step, scores, cfg.hidden_method)
        current_model = current.materialize(ctx.device)
        cut = loss_to_teacher(model, current_model, held, ctx, cfg.seq_len)
        run = short_kd(model, current_model, blocks, settings, ctx.device)
        current = current.absorb(current_model)
        rows.append({
            "round": round_, "shape": step.as_dict(), "params": current.summary()["totals"]["params"],
            "loss_after_cut": round(cut, 5),
            "loss_after_kd": round(loss_to_teacher(model, current_model, held, ctx, cfg.seq_len), 5),
            "tokens": run["tokens"],
        })  # fmt: skip
        if ctx.show_progress:
            row = rows[-1]
            line = f"{row['loss_after_cut']:.4f} after the cut, {row['loss_after_kd']:.4f} after {settings.steps}"
            print(f"prune: round {round_}/{cfg.rounds} ({cut_name(shape_of(ir), step)}) KL {line} steps",
                  file=sys.stderr, flush=True)  # fmt: skip
    return current, rows
