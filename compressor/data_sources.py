"""Data as users have it (issue 13 §2): text files, tables with a named text column, folders of text files, and
Hugging Face datasets saved with `save_to_disk` or as parquet / arrow files, read locally (never from a hub).

Each source gives records: a text, and a label when the source has a label column (for task students).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import UserError

TEXT_FILES = (".txt", ".text", ".md")
TEXT_CANDIDATES = ("text", "sentence", "content", "document")
LABEL_CANDIDATES = ("label", "labels")
MAX_MISSING_SHARE = 0.05  # lines without the text field: skipped (and said) up to this share, refused above
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


@dataclass(frozen=True)
class Records:
    texts: list[str]
    labels: list | None = None  # one per text when the source has a label column


def read_records(path: Path, text_column: str | None = None, label_column: str | None = None) -> Records:
    """The records of any supported source; plain text has no labels."""
    path = Path(path)
    if path.is_dir():
        return read_directory(path, text_column, label_column)
    if path.suffix == ".parquet":
        return table_records(parquet_table(path), path, text_column, label_column)
    if path.suffix == ".arrow":
        return table_records(arrow_table(path), path, text_column, label_column)
    text = read_text_file(path, "data file")
    if path.suffix == ".jsonl":
        return jsonl_records(path, text, text_column or "text", label_column)
    if path.suffix in (".tsv", ".csv"):
        return delimited_records(path, text, text_column, label_column)
    return Records(plain_documents(text))


def plain_documents(text: str) -> list[str]:
    """Blank-line separated blocks when the text has several; otherwise one document per line."""
    blocks = [block.strip() for block in re.split(r"\n\s*\n", text)]
    blocks = [block for block in blocks if block]
    return blocks if len(blocks) > 1 else text.splitlines()


def read_directory(path: Path, text_column: str | None, label_column: str | None) -> Records:
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists() or (path / "state.json").exists():
        return saved_dataset_records(path, text_column, label_column)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_FILES and not p.name.startswith("."))
    if not files:
        raise UserError(
            f"{path}: a folder with no text files ({', '.join(TEXT_FILES)}) and not a dataset saved with save_to_disk"
        )
    texts: list[str] = []
    for file in files:
        texts.extend(plain_documents(read_text_file(file, "data file")))
    return Records(texts)


def saved_dataset_records(path: Path, text_column: str | None, label_column: str | None) -> Records:
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{path}: reading a saved dataset needs the `datasets` package (pip install datasets)"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many kinds for a damaged folder
        raise UserError(f"{path}: not a readable saved dataset ({str(exc).splitlines()[0][:200]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    return table_records(loaded.data.table, path, text_column, label_column)


def parquet_table(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as exc:
        raise UserError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0][:200]})") from None


def arrow_table(path: Path):
    import pyarrow as pa

    for opener in (pa.ipc.open_stream, pa.ipc.open_file):  # datasets writes the stream format
        try:
            with pa.memory_map(str(path)) as source:
                return opener(source).read_all()
        except (pa.ArrowInvalid, OSError):
            continue
    raise UserError(f"{path}: not a readable arrow file")


def pick_column(names: list[str], given: str | None, candidates: tuple[str, ...], path: Path, what: str) -> str | None:
    if given:
        if given not in names:
            raise UserError(f"{path}: no column {given!r} (columns: {', '.join(names)})")
        return given
    return next((name for name in candidates if name in names), None)


def table_records(table, path: Path, text_column: str | None, label_column: str | None) -> Records:
    """Records of an arrow table: the text column (given, a usual name, or the only string column)."""
    import pyarrow as pa

    names = list(table.column_names)
    column = pick_column(names, text_column, TEXT_CANDIDATES, path, "text")
    if column is None:
        strings = [n for n in names if pa.types.is_string(table.schema.field(n).type)]
        if len(strings) != 1:
            raise UserError(f"{path}: which column holds the text? pass --text-column (columns: {', '.join(names)})")
        column = strings[0]
    texts = ["" if value is None else str(value) for value in table.column(column).to_pylist()]
    label = pick_column(names, label_column, LABEL_CANDIDATES, path, "label")
    labels = table.column(label).to_pylist() if label else None
    return keep_nonempty(texts, labels)


def keep_nonempty(texts: list[str], labels: list | None) -> Records:
    kept = [i for i, text in enumerate(texts) if text.strip()]
    return Records([texts[i].strip() for i in kept], [labels[i] for i in kept] if labels is not None else None)


def jsonl_records(path: Path, text: str, field: str, label_column: str | None) -> Records:
    texts, labels, missing, total = [], [], 0, 0
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
            texts.append(value)
            labels.append(record.get(label_column or "label") if isinstance(record, dict) else None)
        else:
            missing += 1
    if missing and missing > MAX_MISSING_SHARE * total:
        raise UserError(
            f"{path}: {missing} of {total} lines have no {field!r} string field (more than "
            f"{MAX_MISSING_SHARE:.0%}); fix the file or name the right field with --text-column"
        )
    if missing:
        print(f"compress: note: {path}: skipped {missing} of {total} lines without a {field!r} field", file=sys.stderr)
    has_labels = any(label is not None for label in labels)
    return Records(texts, labels if has_labels else None)


def delimited_records(path: Path, text: str, text_column: str | None, label_column: str | None) -> Records:
    """A .tsv/.csv: with a header naming the text column (given, or a usual name), else the longest field of
    each line (headerless files such as STS-B's)."""
    delimiter = "\t" if path.suffix == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # TSV text keeps its quote marks
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    header = [cell.strip() for cell in rows[0]] if rows else []
    column = pick_column(header, text_column, TEXT_CANDIDATES, path, "text") if rows else None
    if column is None:
        return Records([max(row, key=len) for row in rows])
    index = header.index(column)
    label = pick_column(header, label_column, LABEL_CANDIDATES, path, "label")
    body = [row for row in rows[1:] if len(row) > index]
    labels = [row[header.index(label)] if len(row) > header.index(label) else None for row in body] if label else None
    return keep_nonempty([row[index] for row in body], labels)
