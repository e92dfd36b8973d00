"""Corpora -> documents -> tokenized batches, calibration sets, and the built-in offline corpus.

The built-in corpus is real English technical prose harvested from the docstrings of the installed Python
standard library (read with `ast`, never imported), so `compress model` works on any machine, offline.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from compressor.data_sources import read_records, read_text_file
from compressor.errors import UserError

BUILTIN = "builtin"  # the name recipes and the CLI use for the built-in corpus
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass(frozen=True)
class Corpus:
    """Documents split deterministically into train, validation and held-out eval parts, with a fingerprint.

    `eval` is what the report measures; `valid` (a share of the training data) is what training watches for
    early stopping and the best checkpoint, so the reported figures never come from the data that chose them.
    Labels, where the data has a label column, run parallel to the texts.
    """

    name: str
    train: tuple[str, ...]
    eval: tuple[str, ...]
    fingerprint: str
    eval_source: str | None = None  # the --eval-data file, when the held-out text is not a share of `name`
    valid: tuple[str, ...] = ()
    train_labels: tuple | None = None
    valid_labels: tuple | None = None
    eval_labels: tuple | None = None

    @property
    def eval_name(self) -> str:
        return self.eval_source or f"{self.name} (held-out share)"

    @property
    def validation(self) -> tuple[str, ...]:
        """The texts training may watch: the validation share, else (hand-built corpora) the eval part."""
        return self.valid or self.eval

    @property
    def validation_labels(self) -> tuple | None:
        return self.valid_labels if self.valid else self.eval_labels

    @property
    def valid_name(self) -> str:
        return f"{self.name} (validation share)" if self.valid else self.eval_name


def read_documents(path: str | Path, text_column: str | None = None) -> list[str]:
    """Documents of a data source (compressor.data_sources): plain text (blank-line separated blocks when the
    file has them, else one per line), .jsonl / .csv / .tsv (a named or usual text column), a folder of text
    files, a dataset saved with `save_to_disk`, or a parquet / arrow file."""

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data file not found")
    docs = [d for d in (d.strip() for d in read_records(path, text_column).texts) if d]
    if not docs:
        raise UserError(f"{path}: data file is empty (no text found)")
    return docs


@lru_cache(maxsize=1)
def builtin_documents(limit: int = 6000) -> tuple[str, ...]:
    """Paragraphs of English prose from stdlib docstrings, in a fixed order (sorted files, source order)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for file in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for part in file.parts):
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                for paragraph in re.split(r"\n\s*\n", doc or ""):
                    prose = " ".join(paragraph.split())
                    if is_prose(prose):
                        docs.append(prose)
        if len(docs) >= limit:
            break
    if not docs:
        raise RuntimeError(f"no docstrings found under {root}; pass --data")
    return tuple(docs[:limit])


def is_prose(text: str) -> bool:
    """Sentences of words, not code, tables or signatures."""
    words = text.split()
    if not 8 <= len(words) <= 200 or not text[0].isupper() or not text.rstrip().endswith("."):
        return False
    alpha = sum(ch.isalpha() or ch.isspace() for ch in text) / len(text)
    return alpha > 0.85 and ">>>" not in text


def split_holdout(docs: Sequence[str], eval_fraction: float = 0.1, name: str = "data") -> tuple[list[str], list[str]]:
    """Hold out the last `eval_fraction` of the documents.

    A tail split, not a random one: in paragraph-per-block files (TinyStories here) neighbouring paragraphs
    belong to the same story, and a random split would leak the story's context into training.
    """
    if len(docs) < 2:
        raise UserError(
            f"{name}: holds only {len(docs)} document; cannot hold any out for evaluation "
            "(give --eval-data, or separate documents by blank lines or one per line)"
        )
    cut = min(len(docs) - 1, max(1, round(len(docs) * (1 - eval_fraction))))
    return list(docs[:cut]), list(docs[cut:])


def read_labelled(path: str | Path, text_column: str | None = None) -> tuple[list[str], list | None]:
    """Texts and (when the source has a label column) their labels, empty texts dropped."""

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data file not found")
    records = read_records(path, text_column)
    kept = [i for i, text in enumerate(records.texts) if text.strip()]
    if not kept:
        raise UserError(f"{path}: data file is empty (no text found)")
    labels = [records.labels[i] for i in kept] if records.labels is not None else None
    return [records.texts[i].strip() for i in kept], labels


def load_corpus(
    train: str | None,
    eval_path: str | None = None,
    eval_fraction: float = 0.1,
    text_column: str | None = None,
    valid_fraction: float = 0.05,
) -> Corpus:
    """The corpus a run trains, validates and evaluates on: a file (with held-out parts) or the built-in one.

    Eval is the last `eval_fraction` (a tail split, see `split_holdout`; or --eval-data); the validation share
    is every (1/`valid_fraction`)-th of the remaining documents.
    """
    if train in (None, BUILTIN):
        docs, labels, name = list(builtin_documents()), None, BUILTIN
    else:
        (docs, labels), name = read_labelled(train, text_column), str(train)
    if eval_path:
        rest, rest_labels = docs, labels
        eval_docs, eval_labels = read_labelled(eval_path, text_column)
    else:
        rest, eval_docs = split_holdout(docs, eval_fraction, name)
        rest_labels = labels[: len(rest)] if labels is not None else None
        eval_labels = labels[len(rest) :] if labels is not None else None
    # every k-th training document (evenly spread, deterministic): the validation share looks like the training
    # data as a whole, and the documents nearest the held-out tail stay in training
    stride = round(1 / valid_fraction) if valid_fraction > 0 and len(rest) >= 40 else 0
    chosen = set(range(stride - 1, len(rest), stride)) if stride else set()
    train_docs = [d for i, d in enumerate(rest) if i not in chosen]
    valid_docs = [d for i, d in enumerate(rest) if i in chosen]
    train_labels = [x for i, x in enumerate(rest_labels) if i not in chosen] if rest_labels is not None else None
    valid_labels = [x for i, x in enumerate(rest_labels) if i in chosen] if rest_labels is not None else None
    parts = [train_docs, valid_docs, eval_docs, rest_labels or [], eval_labels or []]
    digest = hashlib.sha256()
    for part in parts:
        for item in part:
            digest.update(str(item).encode())
            digest.update(b"\x01")
        digest.update(b"\x00")
    return Corpus(
        name,
        tuple(train_docs),
        tuple(eval_docs),
        digest.hexdigest(),
        str(eval_path) if eval_path else None,
        tuple(valid_docs),
        tuple(train_labels) if train_labels is not None else None,
        tuple(valid_labels) if valid_labels is not None else None,
        tuple(eval_labels) if eval_labels is not None else None,
    )


def sentences(docs: Sequence[str], min_words: int = 4, max_words: int = 48) -> list[str]:
    """Sentences for encoder training and evaluation."""
    out = []
    for doc in docs:
        for sentence in SENTENCE_END.split(doc):
            if min_words <= len(sentence.split()) <= max_words:
                out.append(sentence.strip())
    return out


def lm_blocks(
    tokenizer, docs: Sequence[str], seq_len: int, max_blocks: int | None = None, name: str = "data"
) -> torch.Tensor:
    """Token ids [N, seq_len]: documents joined and cut into equal blocks (no padding needed).

    Each document starts with BOS (as llama2.c and Llama pretraining lay out text); a tokenizer without BOS
    (GPT-2 style) separates documents with EOS instead.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        tokens = tokenizer(doc, add_special_tokens=False)["input_ids"]
        ids.extend([bos] + tokens if bos is not None else tokens + ([eos] if eos is not None else []))
        if max_blocks and len(ids) >= (max_blocks + 1) * seq_len:
            break
    count = len(ids) // seq_len
    if max_blocks:
        count = min(count, max_blocks)
    if count == 0:
        raise UserError(
            f"{name}: has {len(ids)} tokens, fewer than one block of seq_len={seq_len}; "
            f"give at least {seq_len} tokens of text (or set a smaller seq_len)"
        )
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)


def encode_sentences(tokenizer, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"))


def encoded_batches(tokenizer, texts: Sequence[str], max_len: int, batch_size: int, device):
    """Padded, truncated encodings of `texts` in order, `batch_size` at a time, on `device` (for evaluation)."""
    for start in range(0, len(texts), batch_size):
        encoded = encode_sentences(tokenizer, texts[start : start + batch_size], max_len)
        yield {k: v.to(device) for k, v in encoded.items()}


def read_sts(path: str | Path) -> list[tuple[str, str, float]]:
    """An STS-B-style file: TAB-separated, score in column 4, sentences in columns 5 and 6 (0-based)."""
    path = Path(path)
    text = read_text_file(path, "STS file")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        try:
            rows.append((cols[5], cols[6], float(cols[4])))
        except (IndexError, ValueError):
            raise UserError(f"{path}:{number}: expected a score in column 4 and sentences in columns 5 and 6") from None
    if not rows:
        raise UserError(f"{path}: STS file is empty")
    return rows
