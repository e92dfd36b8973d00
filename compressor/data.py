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

from compressor.errors import UserError

BUILTIN = "builtin"  # the name recipes and the CLI use for the built-in corpus
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass(frozen=True)
class Corpus:
    """Documents split deterministically into train and held-out eval parts, with a content fingerprint."""

    name: str
    train: tuple[str, ...]
    eval: tuple[str, ...]
    fingerprint: str
    eval_source: str | None = None  # the --eval-data file, when the held-out text is not a share of `name`

    @property
    def eval_name(self) -> str:
        return self.eval_source or f"{self.name} (held-out share)"


MAX_MISSING_SHARE = 0.05  # .jsonl lines without the text field: skipped (and said) up to this share, refused above
CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file's content, or a one-line UserError naming the file and the problem."""
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    check_is_text(path, text, what)
    return text


def check_is_text(path: Path, text: str, what: str) -> None:
    """Refuse binary or non-language content: control characters (NUL, escapes) or no letters at all."""
    controls = len(CONTROL.findall(text))
    if controls and controls > max(0, len(text) // 1000):
        raise UserError(f"{path}: {what} is not text ({controls} control characters such as NUL); give plain text")
    visible = sum(1 for ch in text if not ch.isspace())
    letters = sum(1 for ch in text if ch.isalpha())
    if visible and letters < 0.1 * visible:
        raise UserError(f"{path}: {what} is not text ({letters} letters in {visible} characters)")


def read_documents(path: str | Path) -> list[str]:
    """Documents of a text file: blank-line separated blocks when the file has them, else one per line (plain
    text); one per line in .jsonl (the `text` field) and .tsv/.csv (the longest column)."""
    path = Path(path)
    text = read_text_file(path, "data file")
    if path.suffix == ".jsonl":
        docs = jsonl_texts(path, text)
    elif path.suffix in (".tsv", ".csv"):
        docs = [max(line.split("\t"), key=len) for line in text.splitlines() if line.strip()]
    else:
        blocks = [block.strip() for block in re.split(r"\n\s*\n", text)]
        blocks = [block for block in blocks if block]
        # a file of one sentence (or record) per line, with no blank lines, is one document per line
        docs = blocks if len(blocks) > 1 else text.splitlines()
    docs = [d for d in (d.strip() for d in docs) if d]
    if not docs:
        raise UserError(f"{path}: data file is empty (no text found)")
    return docs


def jsonl_texts(path: Path, text: str, field: str = "text") -> list[str]:
    import json

    docs, missing, total = [], 0, 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        total += 1
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{number}: not valid JSON") from None
        value = record.get(field) if isinstance(record, dict) else record
        if isinstance(value, str) and value.strip():
            docs.append(value)
        else:
            missing += 1
    if missing and missing > MAX_MISSING_SHARE * total:
        raise UserError(
            f"{path}: {missing} of {total} lines have no {field!r} string field (more than "
            f"{MAX_MISSING_SHARE:.0%}); fix the file or name the right field"
        )
    if missing:
        import sys

        print(f"compress: note: {path}: skipped {missing} of {total} lines without a {field!r} field", file=sys.stderr)
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


def load_corpus(train: str | None, eval_path: str | None = None, eval_fraction: float = 0.1) -> Corpus:
    """The corpus a run trains and evaluates on: a file (with held-out part) or the built-in one."""
    if train in (None, BUILTIN):
        docs = list(builtin_documents())
        name = BUILTIN
    else:
        docs = read_documents(train)
        name = str(train)
    if eval_path:
        train_docs, eval_docs = docs, read_documents(eval_path)
    else:
        train_docs, eval_docs = split_holdout(docs, eval_fraction, name)
    digest = hashlib.sha256()
    for doc in (*train_docs, "\x00", *eval_docs):
        digest.update(doc.encode())
        digest.update(b"\x01")
    return Corpus(name, tuple(train_docs), tuple(eval_docs), digest.hexdigest(), str(eval_path) if eval_path else None)


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
