"""Tokens/s of our `distill` against TRL's GKDTrainer: same student, teacher, batch and loss (forward KL only:
TRL beta=0, lmbda=0, no CE; ours loss=fkl, alpha=1), off-policy, CPU fp32. Prints one JSON object.

    python benchmarks/trl_compare.py --teacher ../shared/models/stories260K --data ../shared/data/tinystories_dev.txt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from compressor.data import lm_blocks, load_corpus
from compressor.ir import ModelIR
from passes.base import PassContext, load_tokenizer
from passes.distill import Distill, DistillConfig
from targets import get_target


def ours(teacher: ModelIR, student: ModelIR, corpus, args, scratch: Path) -> dict:
    ctx = PassContext.for_run(
        teacher, get_target("cpu"), scratch, corpus, show_progress=False, run_dir=scratch / "ours"
    )
    config = DistillConfig(
        train=dict(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, checkpoint_every=0),
        loss=dict(divergence="fkl", alpha=1.0),
    )
    Distill(config).run(student, ctx)
    return {
        "tokens": ctx.metrics["tokens"],
        "seconds": ctx.metrics["seconds"],
        "tokens_per_second": ctx.metrics["tokens_per_second"],
        "final_loss": ctx.metrics["loss_last"],
    }


def trl(teacher: ModelIR, student: ModelIR, blocks: torch.Tensor, tokenizer, args, scratch: Path) -> dict:
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    def collate(features):
        ids = torch.tensor([f["input_ids"] for f in features])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    config = GKDConfig(
        output_dir=str(scratch / "trl"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        lmbda=0.0,
        beta=0.0,
        temperature=1.0,
        seq_kd=False,
        max_length=args.seq_len,
        lr_scheduler_type="cosine",
        warmup_ratio=0.1,
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=args.steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = GKDTrainer(
        model=student.materialize(),
        teacher_model=teacher.materialize(),
        args=config,
        train_dataset=Dataset.from_dict({"input_ids": blocks.tolist()}),
        data_collator=collate,
        processing_class=tokenizer,
    )
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout stays one JSON object
        metrics = trainer.train().metrics
    tokens = args.steps * args.batch_size * args.seq_len
    return {
        "tokens": tokens,
        "seconds": round(metrics["train_runtime"], 2),
        "tokens_per_second": round(tokens / metrics["train_runtime"], 1),
        "final_loss": round(metrics.get("train_loss", float("nan")), 5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    teacher = ModelIR.load(args.teacher)
    student = teacher.drop_layers([0, 2, 4])
    corpus = load_corpus(args.data)
    tokenizer = load_tokenizer(teacher.tokenizer_dir)
    blocks = lm_blocks(tokenizer, corpus.train, args.seq_len, max_blocks=args.steps * args.batch_size)
    result = {
        "student_layers": 3,
        "teacher_layers": teacher.num_layers,
        "batch": args.batch_size,
        "seq": args.seq_len,
        "steps": args.steps,
        "loss": "forward KL only",
    }
    with tempfile.TemporaryDirectory() as scratch:
        result["compressor"] = ours(teacher, student, corpus, args, Path(scratch))
        try:
            import trl as trl_package

            result["trl_version"] = trl_package.__version__
            result["trl"] = trl(teacher, student, blocks, tokenizer, args, Path(scratch))
            result["speed_ratio_compressor_over_trl"] = round(
                result["compressor"]["tokens_per_second"] / result["trl"]["tokens_per_second"], 3
            )
        except ImportError as exc:
            result["trl"] = {"not_measured": f"TRL is not importable here: {exc}"}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
