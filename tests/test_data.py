import pytest
import torch

from compressor.data import (
    builtin_documents,
    lm_blocks,
    load_corpus,
    read_documents,
    read_sts,
    sentences,
    split_holdout,
)
from compressor.errors import UserError
from passes.base import load_tokenizer
from tests.helpers import DATA, STORIES


def test_empty_file_is_a_user_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(UserError, match="empty"):
        read_documents(empty)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_documents(tmp_path / "nope.txt")


def test_holdout_is_the_tail_and_disjoint():
    docs = [f"doc {i}" for i in range(20)]
    train, held = split_holdout(docs, 0.1)
    assert train == docs[:18] and held == docs[18:]


def test_builtin_corpus_is_english_prose():
    docs = builtin_documents()
    assert len(docs) > 1000
    assert all(d[0].isupper() and d.endswith(".") for d in docs[:50])
    assert len(sentences(docs[:100])) > 50


def test_corpus_fingerprint_changes_with_content(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("One two three four.\n\nFive six seven eight.\n\nNine ten.")
    b.write_text("One two three four.\n\nFive six seven eight.\n\nNine eleven.")
    assert load_corpus(str(a)).fingerprint != load_corpus(str(b)).fingerprint


def test_lm_blocks_start_documents_with_bos():
    tokenizer = load_tokenizer(STORIES)
    blocks = lm_blocks(tokenizer, ["Once upon a time there was a cat."] * 20, 16)
    assert blocks.shape[1] == 16 and blocks.dtype == torch.long
    assert blocks[0, 0] == tokenizer.bos_token_id


def test_read_sts_parses_columns():
    rows = read_sts(DATA / "stsb_dev.csv")
    assert len(rows) == 1500
    assert rows[0] == ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
