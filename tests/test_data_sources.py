"""Data as users have it (issue 13 §2): every source gives the texts it holds, and labels where it has them."""

from __future__ import annotations

import json

import pytest

from compressor.data import load_corpus, read_documents
from compressor.data_sources import read_records
from compressor.errors import UserError

SENTENCES = [f"Sentence number {i} talks about the weather in town {i % 7}." for i in range(40)]


def test_a_text_file_without_blank_lines_is_one_document_per_line(tmp_path):
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(SENTENCES) + "\n")
    assert read_documents(data) == SENTENCES
    corpus = load_corpus(str(data))
    assert len(corpus.train) == 36 and len(corpus.eval) == 4


def test_a_text_file_with_blank_lines_keeps_paragraphs_together(tmp_path):
    data = tmp_path / "stories.txt"
    data.write_text("First line.\nSame story.\n\nSecond story.\n")
    assert read_documents(data) == ["First line.\nSame story.", "Second story."]


def test_a_csv_with_a_header_reads_the_named_column_and_its_labels(tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text('id,review,stars\n1,"Great, really great",5\n2,Terrible film,1\n')
    records = read_records(data, text_column="review", label_column="stars")
    assert records.texts == ["Great, really great", "Terrible film"] and records.labels == ["5", "1"]


def test_a_tsv_finds_the_usual_text_and_label_columns(tmp_path):
    data = tmp_path / "sst.tsv"
    data.write_text('sentence\tlabel\nit \'s a "charming" film\t1\ndull\t0\n')
    records = read_records(data)
    assert records.texts == ['it \'s a "charming" film', "dull"] and records.labels == ["1", "0"]


def test_a_missing_column_lists_the_columns(tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text("id,review\n1,fine\n")
    with pytest.raises(UserError, match=r"no column 'body' \(columns: id, review\)"):
        read_records(data, text_column="body")


def test_jsonl_with_a_named_field(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"body": s, "label": i % 2}) for i, s in enumerate(SENTENCES[:4])))
    records = read_records(data, text_column="body")
    assert records.texts == SENTENCES[:4] and records.labels == [0, 1, 0, 1]


def test_a_folder_of_text_files_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("Second file line one.\nSecond file line two.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("Third file.\n\nStill the third file.")
    (tmp_path / "a.txt").write_text("First file.")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    assert read_documents(tmp_path) == [
        "First file.", "Second file line one.", "Second file line two.", "Third file.", "Still the third file.",
    ]  # fmt: skip


def test_a_dataset_saved_with_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    labels = [i % 2 for i in range(len(SENTENCES))]
    dataset = datasets.Dataset.from_dict({"sentence": SENTENCES, "label": labels, "idx": list(range(len(SENTENCES)))})
    dataset.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": dataset, "validation": dataset.select(range(3))}).save_to_disk(
        str(tmp_path / "dict")
    )
    for folder in ("single", "dict"):
        records = read_records(tmp_path / folder)
        assert records.texts == SENTENCES and records.labels == labels


def test_parquet_and_arrow_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"title": ["a", "b"], "body": ["One text.", "Two texts."]})
    pq.write_table(table, tmp_path / "data.parquet")
    with pytest.raises(UserError, match="--text-column"):
        read_records(tmp_path / "data.parquet")  # two string columns, neither a usual name
    assert read_records(tmp_path / "data.parquet", text_column="body").texts == ["One text.", "Two texts."]
    with pa.OSFile(str(tmp_path / "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert read_records(tmp_path / "data.arrow", text_column="title").texts == ["a", "b"]


def test_a_folder_that_is_neither_text_nor_a_dataset(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x00")
    with pytest.raises(UserError, match="no text files"):
        read_documents(tmp_path)
