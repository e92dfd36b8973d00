"""Safe writes: atomic folders with umask modes, owner markers, stale partials, input/output overlap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compressor.errors import UserError
from compressor.fs import (
    atomic_directory,
    check_disjoint,
    check_replaceable,
    clean_stale_scratch,
    remove_stale_siblings,
)
from tests.helpers import dead_pid


def test_a_failed_build_leaves_the_old_folder_and_no_partial(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "old.txt").read_text() == "old"


def test_built_folders_follow_the_umask_not_mkdtemp(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "f.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "sub" / "f.txt").stat().st_mode & 0o777 == 0o644


def test_an_owned_folder_is_replaced_only_by_its_owner(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "mine.txt").write_text("user data")
    with pytest.raises(UserError, match="not written by Compressor"):
        with atomic_directory(folder, owner="teacher-generated corpus"):
            pass
    assert (folder / "mine.txt").read_text() == "user data"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        check_replaceable(tmp_path / "a-file", "logit cache")


def test_only_partials_of_dead_processes_are_removed(tmp_path):
    dest = tmp_path / "out"
    dead = tmp_path / f".out.partial-{dead_pid()}-aaaa"
    live = tmp_path / f".out.partial-{os.getpid()}-bbbb"
    other = tmp_path / f".outer.partial-{dead_pid()}-cccc"  # another destination's partial
    for folder in (dead, live, other):
        folder.mkdir()
    assert remove_stale_siblings(dest) == [dead]
    assert live.exists() and other.exists()


def test_stale_scratch_of_dead_processes_is_removed(tmp_path):
    dead = tmp_path / f"compressor-{dead_pid()}-x"
    dead_bench = tmp_path / f"compressor-bench-{dead_pid()}-y"
    live = tmp_path / f"compressor-{os.getpid()}-z"
    unrelated = tmp_path / "compressor-notapid"
    for folder in (dead, dead_bench, live, unrelated):
        folder.mkdir()
    assert sorted(clean_stale_scratch(tmp_path)) == sorted([dead, dead_bench])
    assert live.exists() and unrelated.exists()


@pytest.mark.parametrize(
    "output,relation",
    [("t", "is"), (".", "contains"), ("t/sub", "lies inside"), ("data.txt", "is"), ("elsewhere", None)],
)
def test_outputs_never_overlap_inputs(tmp_path, output, relation):
    (tmp_path / "t").mkdir()
    (tmp_path / "data.txt").write_text("x")
    inputs = {"teacher": tmp_path / "t", "data": tmp_path / "data.txt", "recipe": None}
    out = (tmp_path / output).resolve()
    if relation is None:
        check_disjoint(out, inputs)
        return
    with pytest.raises(UserError, match=relation):
        check_disjoint(out, inputs)


def test_overlap_is_seen_through_symlinks(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "t")
    with pytest.raises(UserError, match="is the teacher"):
        check_disjoint(Path(tmp_path / "link"), {"teacher": tmp_path / "t"})
