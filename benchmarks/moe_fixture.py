"""Real trained MoE teachers for the MoE → dense benchmark (issue: MoE → dense), trained here on 2 CPU cores.

Builds under OUT:
- `mixtral/`: a Mixtral-family model (8 experts, top-2) with the stories260K tokenizer, trained on the training
  part of the data (the last 10% is held out) with the load-balancing auxiliary loss until experts specialize;
- `qwen2_moe/` (unless --skip-qwen): a Qwen2-MoE with a shared expert, trained the same way;
- `dense_<family>/`: a dense baseline with the dense student's architecture (Mistral / Qwen2 with one expert's
  width, plus the shared expert's for Qwen2), trained from scratch with the same token budget;
- `fixture.json`: held-out perplexity of each, its held-out curve, router entropy and expert load per layer,
  training time;
- `data.txt`: the training text (several `--data` files are interleaved document by document), so that
  `compress model OUT/mixtral --data OUT/data.txt` trains and evaluates on exactly the fixture's split.

Every model gets the same token budget and trains until its held-out perplexity (on a validation share of the
training data) stops improving, keeping its best checkpoint. One build trains every model with the same FFN
dropout (`--dropout`, 0.2), which may suit the MoE and not the small dense sibling (Mixtral's sibling at 24M
tokens: 10.39 held-out with dropout 0.2, 9.19 with 0). For an honest comparison build each model at several
dropouts (one folder per value, `--only`) and give them all to `moe_gain.py`, which takes each model from the
build with the lowest validation perplexity.

    python benchmarks/moe_fixture.py /tmp/moe-fixture --tokenizer ../shared/models/stories260K \
        --data ../shared/data/tinystories_dev.txt ../shared/data/tinyshakespeare.txt \
        ../shared/data/agnews_dev.tsv ../shared/data/sst2_train.tsv
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from compressor.data import lm_blocks, load_corpus
from compressor.evaluate import perplexity
from compressor.ir.families import adapter_of_model
from compressor.kd.train import IndexedBatches, TrainConfig, train
from compressor.moe.routing import capture_moe_io, moe_blocks, router_statistics
from passes.base import load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)
EXPERTS, TOP_K, EXPERT_WIDTH, SHARED_WIDTH = 8, 2, 128, 64


def configs() -> dict[str, tuple[str, dict]]:
    """name -> (model_type, config kwargs)."""
    return {
        "mixtral": (
            "mixtral",
            dict(
                COMMON,
                intermediate_size=EXPERT_WIDTH,
                num_local_experts=EXPERTS,
                num_experts_per_tok=TOP_K,
                router_aux_loss_coef=0.01,
                output_router_logits=True,
                sliding_window=None,
            ),
        ),
        "dense_mixtral": ("mistral", dict(COMMON, intermediate_size=EXPERT_WIDTH, sliding_window=None)),
        "qwen2_moe": (
            "qwen2_moe",
            dict(
                COMMON,
                intermediate_size=EXPERT_WIDTH,
                moe_intermediate_size=EXPERT_WIDTH,
                shared_expert_intermediate_size=SHARED_WIDTH,
                num_experts=EXPERTS,
                num_experts_per_tok=TOP_K,
                norm_topk_prob=True,
                router_aux_loss_coef=0.01,
                output_router_logits=True,
            ),
        ),
        "dense_qwen2_moe": ("qwen2", dict(COMMON, intermediate_size=EXPERT_WIDTH + SHARED_WIDTH)),
    }


def build(model_type: str, kwargs: dict, seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kwargs))


def add_ffn_dropout(model, p: float) -> list:
    """Dropout on the output of every FFN (each expert, the shared expert, a dense MLP) while training: the
    data set is small, and an MoE, with many more parameters per token of data, overfits it first."""
    import torch.nn.functional as F

    def hook(module, args, output):
        return F.dropout(output, p, training=module.training)

    return [m.register_forward_hook(hook) for m in model.modules() if type(m).__name__.endswith("MLP")]


def train_one(
    model,
    blocks: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    dropout: float = 0.0,
    weight_decay: float = 0.01,
    valid: torch.Tensor | None = None,
    patience: int = 4,
):
    """Train with CE; with `valid`, evaluate 25 times, stop when it stops improving and keep the best."""
    data = IndexedBatches(len(blocks), batch_size, seed, lambda index: {"input_ids": blocks[index]})
    handles = add_ffn_dropout(model, dropout) if dropout else []

    def loss_fn(m, batch, step):
        out = m(input_ids=batch["input_ids"], labels=batch["input_ids"])
        return out.loss, {"loss": float(out.loss.detach())}

    config = TrainConfig(
        steps=steps,
        lr=lr,
        warmup_ratio=0.05,
        weight_decay=weight_decay,
        seed=seed,
        eval_every=max(1, steps // 25) if valid is not None else None,
        patience=patience,
    )
    evaluate = (lambda m: {"perplexity": perplexity(m, valid)}) if valid is not None else None
    start = time.perf_counter()
    result = train(
        model, data, loss_fn, config, description="train", show_progress=sys.stderr.isatty(), evaluate=evaluate
    )
    for handle in handles:
        handle.remove()
    return time.perf_counter() - start, result


def late_improvement(curve: list[tuple[int, float]], share: float = 0.2) -> float | None:
    """Relative drop of the validation perplexity over the last `share` of the steps (0.01: 1 % lower at the end
    than `share` of the run earlier): near 0 when the model has converged, positive while more training helps."""
    if len(curve) < 2:
        return None
    last_step, last = curve[-1]
    earlier = [value for step, value in curve if step <= last_step * (1 - share)]
    return round((earlier[-1] - min(v for _, v in curve)) / earlier[-1], 4) if earlier else None


def mixed_documents(paths: list[str], seed: int) -> list[str]:
    """Documents of several files interleaved in a seeded order, so every source is in train and held-out."""
    import random

    from compressor.data import read_documents

    docs = [doc for path in paths for doc in read_documents(path)]
    random.Random(seed).shuffle(docs)
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a folder with the stories260K tokenizer")
    parser.add_argument("--data", required=True, nargs="+", help="one or more data files (mixed)")
    parser.add_argument(
        "--tokens", type=int, default=1_200_000, help="token budget per model (early stopping may end sooner)"
    )
    parser.add_argument("--patience", type=int, default=4, help="held-out evaluations without improvement (0: none)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dropout", type=float, default=0.2, help="FFN-output dropout while training (all models)")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(configs()))
    parser.add_argument("--skip-qwen", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when another job shares the cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.out.exists():
        print(f"moe_fixture: {args.out} exists; choose a new folder", file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data_file = tmp / "data.txt"
    if len(args.data) == 1 and not args.data[0].endswith((".tsv", ".csv", ".jsonl")):
        shutil.copy(args.data[0], data_file)
    else:
        data_file.write_text("\n\n".join(doc.replace("\n\n", "\n") for doc in mixed_documents(args.data, args.seed)))
    corpus = load_corpus(str(data_file))
    tokenizer = load_tokenizer(args.tokenizer)
    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    blocks = lm_blocks(tokenizer, corpus.train, args.seq_len)
    valid = lm_blocks(tokenizer, corpus.validation, args.seq_len, 64)
    held = lm_blocks(tokenizer, corpus.eval, args.seq_len)
    result: dict = {
        "data": args.data,
        "train_tokens_available": blocks.numel(),
        "token_budget": steps * args.batch_size * args.seq_len,
        "steps": steps,
        "heldout_tokens": held.numel(),
        "dropout": args.dropout,
        "weight_decay": args.weight_decay,
        "lr": args.lr,
    }
    names = args.only.split(",") if args.only else [n for n in configs() if not (args.skip_qwen and "qwen" in n)]
    for name in names:
        model_type, kwargs = configs()[name]
        model = build(model_type, kwargs, args.seed)
        seconds, trained = train_one(
            model, blocks, steps, args.batch_size, args.lr, args.seed, args.dropout, args.weight_decay, valid,
            args.patience,
        )  # fmt: skip
        model.eval()
        with torch.no_grad():
            entry = {
                "model_type": model_type,
                "params": sum(p.numel() for p in model.parameters()),
                "train_seconds": round(seconds, 1),
                "train_tokens": trained.tokens,
                "steps_done": trained.steps_done,
                "best_step": trained.best.step,
                "best_step_tokens": (trained.best.step or 0) * args.batch_size * args.seq_len,
                "stopped": trained.stopped,
                "valid_curve": [(e["step"], round(e["perplexity"], 3)) for e in trained.evaluations],
                "late_improvement": late_improvement([(e["step"], e["perplexity"]) for e in trained.evaluations]),
                "heldout_ppl": round(perplexity(model, held), 4),
            }
            if hasattr(model.config, "output_router_logits"):
                model.config.output_router_logits = False
                io = capture_moe_io(model, held, max_tokens=8192)
                entry["router"] = [
                    router_statistics(layer["inputs"] @ gate.weight.T, TOP_K)
                    for layer, gate in zip(
                        io, [adapter_of_model(model).router(b) for b in moe_blocks(model)], strict=True
                    )
                ]
                entry["mean_router_entropy"] = round(sum(r["entropy"] for r in entry["router"]) / len(io), 4)
                entry["max_entropy"] = round(math.log(EXPERTS), 4)
        model.save_pretrained(tmp / name, safe_serialization=True)
        for file in TOKENIZER_FILES:
            if (args.tokenizer / file).exists():
                shutil.copy2(args.tokenizer / file, tmp / name / file)
        result[name] = entry
        print(f"{name}: {json.dumps(entry)[:200]}", file=sys.stderr, flush=True)
    (tmp / "fixture.json").write_text(json.dumps(result, indent=2))
    tmp.rename(args.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
