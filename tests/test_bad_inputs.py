"""The catalogue of bad inputs and faults (issue 9): every one ends in exit 2 with one line naming the input,
nothing written, and the user's files byte-identical. Cases that already held stay here so none regresses."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compressor.cli import main
from tests.helpers import DATA, STORIES, dead_pid

TINYSTORIES = DATA / "tinystories_dev.txt"


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def record(code: int, line: str) -> None:
    """With COMPRESSOR_CATALOGUE=FILE, append each case's exit code and message (for the issue's case list)."""
    target = os.environ.get("COMPRESSOR_CATALOGUE")
    if target:
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
        with open(target, "a") as handle:
            handle.write(json.dumps({"case": case, "exit": code, "message": line}) + "\n")


def assert_bad_input(code, err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("compress: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    record(code, lines[0])
    return lines[0]


def assert_failed_after_work(code, err, *fragments):
    """A failure found during the work: progress lines may precede it; it ends with exactly one error line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines[-1].startswith("compress: error: ") and sum(ln.startswith("compress:") for ln in lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    record(code, lines[-1])
    return lines[-1]


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file and folder under root (the root too, when it is a file) with its content hash."""
    root = Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def nothing_left(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


@pytest.fixture
def teacher(tmp_path, tiny_dirs):
    """A private copy of the tiny llama, free to move, break or hash."""
    return shutil.copytree(tiny_dirs["llama"], tmp_path / "teacher")


# ---- 1. the teacher and other inputs are never destroyed -------------------------------------------------
def test_out_equal_to_the_teacher_is_refused_even_with_overwrite(capsys, teacher):
    before = tree_hashes(teacher)
    code, _, err = run(capsys, "model", teacher, "--data", TINYSTORIES, "--out", teacher, "--steps", "2", "--overwrite")
    assert_bad_input(code, err, str(teacher), "is the teacher")
    assert tree_hashes(teacher) == before


def test_out_that_contains_the_teacher_is_refused(capsys, teacher):
    before = tree_hashes(teacher.parent)
    code, _, err = run(capsys, "model", teacher, "--out", teacher.parent, "--overwrite")
    assert_bad_input(code, err, "contains the teacher")
    assert tree_hashes(teacher.parent) == before


def test_out_inside_the_teacher_is_refused(capsys, teacher):
    before = tree_hashes(teacher)
    code, _, err = run(capsys, "model", teacher, "--out", teacher / "student")
    assert_bad_input(code, err, "lies inside the teacher")
    assert tree_hashes(teacher) == before


def test_export_onto_its_own_input_is_refused(capsys, teacher):
    before = tree_hashes(teacher)
    code, _, err = run(capsys, "export", teacher, "--out", teacher, "--overwrite")
    assert_bad_input(code, err, "is the --in model")
    assert tree_hashes(teacher) == before


def test_pass_out_onto_its_input_is_refused(capsys, teacher):
    before = tree_hashes(teacher)
    code, _, err = run(capsys, "pass", "inherit", "--in", teacher, "--out", teacher, "--overwrite")
    assert_bad_input(code, err, "is the --in model")
    assert tree_hashes(teacher) == before


@pytest.mark.parametrize("which", ["data", "eval data", "STS file", "recipe"])
def test_out_onto_a_data_or_recipe_file_is_refused(capsys, tmp_path, teacher, which):
    folder = tmp_path / "inputs"
    folder.mkdir()
    files = {
        "data": shutil.copy(TINYSTORIES, folder / "train.txt"),
        "eval data": shutil.copy(TINYSTORIES, folder / "eval.txt"),
        "STS file": shutil.copy(DATA / "stsb_dev.csv", folder / "sts.csv"),
        "recipe": folder / "recipe.yaml",
    }
    files["recipe"].write_text("passes:\n  - inherit: {}\n")
    flags = {"data": "--data", "eval data": "--eval-data", "STS file": "--sts", "recipe": "--recipe"}
    before = tree_hashes(folder)
    code, _, err = run(capsys, "model", teacher, flags[which], files[which], "--out", folder, "--overwrite")
    assert_bad_input(code, err, f"contains the {which}")
    assert tree_hashes(folder) == before


# ---- 2. folders the tool replaces on its own must be ours -----------------------------------------------
def test_logit_cache_pointing_at_the_teacher_is_refused(capsys, tmp_path, teacher, out):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"passes:\n  - distill: {{train.steps: 2, teacher: {{signal: rs_cache, logit_cache: '{teacher}'}}}}\n"
    )
    before = tree_hashes(teacher)
    code, _, err = run(capsys, "model", teacher, "--recipe", recipe, "--data", TINYSTORIES, "--out", out)
    assert_bad_input(code, err, str(teacher), "not written by Compressor", "logit cache")
    assert tree_hashes(teacher) == before and nothing_left(out)


def test_logit_cache_of_ours_is_rebuilt_in_place(tmp_path):
    from compressor.fs import atomic_directory, check_replaceable

    folder = tmp_path / "cache"
    with atomic_directory(folder, owner="logit cache") as tmp:
        (tmp / "old.txt").write_text("old")
    check_replaceable(folder, "logit cache")  # ours: may be replaced
    with atomic_directory(folder, owner="logit cache") as tmp:
        (tmp / "new.txt").write_text("new")
    assert (folder / "new.txt").exists() and not (folder / "old.txt").exists()
    from compressor.errors import UserError

    with pytest.raises(UserError, match="a logit cache"):
        check_replaceable(folder, "teacher-generated corpus")


def test_cache_dir_holding_user_files_is_refused(capsys, tmp_path, teacher, out):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("do not touch")
    code, _, err = run(capsys, "model", teacher, "--data", TINYSTORIES, "--cache-dir", mine, "--out", out)
    assert_bad_input(code, err, str(mine), "not Compressor's", "thesis.tex")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"] and nothing_left(out)


def test_cache_dir_that_is_a_file_is_refused(capsys, tmp_path, teacher, out):
    cache = tmp_path / "cache.txt"
    cache.write_text("a file")
    code, _, err = run(capsys, "model", teacher, "--data", TINYSTORIES, "--cache-dir", cache, "--out", out)
    assert_bad_input(code, err, str(cache), "not a directory")
    assert cache.read_text() == "a file" and nothing_left(out)


def test_unwritable_cache_dir_is_refused_before_any_work(capsys, tmp_path, teacher, out):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    cache = blocker / "cache"  # under a file: can never be created
    code, _, err = run(capsys, "model", teacher, "--data", TINYSTORIES, "--cache-dir", cache, "--out", out)
    assert_bad_input(code, err, str(cache), "not writable")
    assert nothing_left(out)


# ---- 3. a student's teacher is found by absolute path and fingerprint, never replaced by the student ---------
@pytest.fixture
def student(tmp_path, teacher, capsys, monkeypatch):
    """A 2-layer student made from a relative --in path, as a user in the teacher's parent folder would."""
    monkeypatch.chdir(teacher.parent)
    code, _, err = run(
        capsys, "pass", "inherit", "--in", teacher.name, "--out", "student", "--set", "strategy=first", "--set",
        "layers=2", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    monkeypatch.chdir(tmp_path.parent)
    return tmp_path / "student"


def test_eval_from_another_folder_finds_the_real_teacher(capsys, student, teacher, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, printed, err = run(capsys, "eval", os.path.relpath(student, elsewhere), "--data", TINYSTORIES)
    assert code == 0, err
    result = json.loads(printed)
    assert result["teacher_path"] == os.path.realpath(teacher)
    assert result["teacher"]["perplexity"] != result["student"]["perplexity"]


def test_eval_with_the_teacher_moved_away_is_refused(capsys, student, teacher):
    teacher.rename(teacher.with_name("moved"))
    code, _, err = run(capsys, "eval", student, "--data", TINYSTORIES)
    assert_bad_input(code, err, str(student), str(teacher), "--teacher")


def test_eval_with_a_changed_teacher_is_refused(capsys, student, teacher):
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    code, _, err = run(capsys, "eval", student, "--data", TINYSTORIES)
    assert_bad_input(code, err, str(teacher), "has changed")


def test_eval_of_a_model_without_lineage_needs_a_teacher(capsys, teacher):
    code, _, err = run(capsys, "eval", teacher, "--data", TINYSTORIES)
    assert_bad_input(code, err, str(teacher), "no teacher recorded", "--teacher")


def test_distill_pass_with_the_teacher_moved_away_is_refused(capsys, student, teacher, out):
    teacher.rename(teacher.with_name("moved"))
    code, _, err = run(capsys, "pass", "distill", "--in", student, "--out", out, "--set", "train.steps=2")
    assert_bad_input(code, err, str(teacher), "--teacher")
    assert nothing_left(out)


# ---- 4. data that is silently accepted -----------------------------------------------------------------
def test_jsonl_with_many_lines_missing_the_text_field_is_refused(capsys, tmp_path, teacher, out):
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"body": f"line {i}"} if i % 3 else {"text": f"story {i}"}) + "\n" for i in range(60))
    )
    code, _, err = run(capsys, "model", teacher, "--data", data, "--out", out)
    assert_bad_input(code, err, str(data), "40 of 60 lines", "'text'")
    assert nothing_left(out)


def test_jsonl_with_a_few_lines_missing_the_text_field_says_how_many(capsys, tmp_path):
    from compressor.data import read_documents

    data = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": f"Story number {i}."}) for i in range(99)] + [json.dumps({"title": "x"})]
    data.write_text("\n".join(lines))
    assert len(read_documents(data)) == 99
    assert "skipped 1 of 100 lines" in capsys.readouterr().err


def test_a_file_of_nul_characters_is_refused(capsys, tmp_path, teacher, out):
    data = tmp_path / "nul.txt"
    data.write_bytes(b"\x00" * 4096)
    code, _, err = run(capsys, "model", teacher, "--data", data, "--out", out)
    assert_bad_input(code, err, str(data), "not text", "control characters")
    assert nothing_left(out)


def test_a_file_without_letters_is_refused(capsys, tmp_path, teacher, out):
    data = tmp_path / "digits.txt"
    data.write_text("\n".join(f"3.14159 2.71828 1.41421 {i}" for i in range(200)))
    code, _, err = run(capsys, "model", teacher, "--data", data, "--out", out)
    assert_bad_input(code, err, str(data), "not text", "letters")


def test_an_empty_pipeline_is_refused(capsys, tmp_path, teacher, out):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes: []\n")
    code, _, err = run(capsys, "model", teacher, "--recipe", recipe, "--out", out)
    assert_bad_input(code, err, str(recipe), "passes", "empty")
    assert nothing_left(out)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd"])
def test_a_shard_index_pointing_outside_the_model_folder_is_refused(capsys, tmp_path, teacher, out, shard):
    tensors = load_file(teacher / "model.safetensors")
    (teacher / "model.safetensors").unlink()
    save_file(tensors, tmp_path / "outside.safetensors")
    index = {"metadata": {}, "weight_map": {name: shard for name in tensors}}
    (teacher / "model.safetensors.index.json").write_text(json.dumps(index))
    code, _, err = run(capsys, "model", teacher, "--out", out)
    assert_bad_input(code, err, "model.safetensors.index.json", "outside the model folder")
    assert nothing_left(out)


def test_auto_map_needs_trust_remote_code(capsys, teacher, out):
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    code, _, err = run(capsys, "model", teacher, "--out", out)
    assert_bad_input(code, err, "config.json", "auto_map", "--trust-remote-code")
    assert nothing_left(out)


def test_auto_map_is_never_copied_into_a_student(tmp_path, teacher):
    from compressor.ir import ModelIR

    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    ir = ModelIR.load(teacher, trust_remote_code=True)
    ir.drop_layers([0, 1]).save(tmp_path / "student")
    assert "auto_map" not in json.loads((tmp_path / "student" / "config.json").read_text())


# ---- 8. bad input that used to end as "internal error" ----------------------------------------------------
def test_teacher_without_tokenizer_files(capsys, teacher, out):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (teacher / name).unlink()
    code, _, err = run(capsys, "model", teacher, "--data", TINYSTORIES, "--out", out)
    assert_bad_input(code, err, str(teacher), "no tokenizer files")
    assert nothing_left(out)


def test_non_utf8_sts_file(capsys, tmp_path, out):
    sts = tmp_path / "sts.csv"
    sts.write_bytes(b"a\tb\tc\td\t\xff\xfe\tx\ty\n")
    code, _, err = run(capsys, "model", "--sts", sts, "--out", out)
    assert_bad_input(code, err, str(sts), "not UTF-8")
    assert nothing_left(out)


@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x", "cuda:99"])
def test_unknown_or_absent_device(capsys, teacher, out, device):
    code, _, err = run(capsys, "model", teacher, "--device", device, "--data", TINYSTORIES, "--out", out)
    assert_bad_input(code, err, f"device {device!r}")
    assert nothing_left(out)


def test_unwritable_out_is_refused_before_any_work(capsys, teacher):
    out = Path("/proc/compressor-out")  # procfs takes no new files, not even from root
    code, _, err = run(capsys, "model", teacher, "--data", TINYSTORIES, "--out", out)
    assert_bad_input(code, err, str(out), "not writable")


def test_out_under_a_file_is_refused(capsys, tmp_path, teacher):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "model", teacher, "--out", blocker / "out")
    assert_bad_input(code, err, "not a directory")


def test_teacher_with_nan_weights_names_the_tensors(capsys, teacher, out):
    tensors = load_file(teacher / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    tensors["model.norm.weight"][0] = float("inf")
    save_file(tensors, teacher / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run(capsys, "model", teacher, "--data", TINYSTORIES, "--out", out)
    assert_bad_input(code, err, "2 tensor(s) hold NaN or inf", "model.layers.1.mlp.up_proj.weight", "model.norm.weight")
    assert nothing_left(out)


def test_bench_on_a_run_with_a_corrupt_report(capsys, tmp_path, tiny_dirs):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_dirs["llama"], run_dir / "student")
    (run_dir / "onnx").mkdir()
    (run_dir / "report.json").write_text('{"teacher": {"params"')
    code, _, err = run(capsys, "bench", tiny_dirs["llama"], run_dir, "--runs", "3", "--quiet")
    assert_bad_input(code, err, "report.json", "unreadable report")
    assert (run_dir / "report.json").read_text() == '{"teacher": {"params"'


def test_disk_full_is_one_short_line_and_leaves_nothing(capsys, tmp_path, teacher, out, monkeypatch):
    from compressor.ir import ModelIR

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device: " + "x" * 5000, str(path))

    monkeypatch.setattr(ModelIR, "save", full)
    code, _, err = run(capsys, "pass", "inherit", "--in", teacher, "--out", out, "--set", "strategy=first", "--quiet")
    line = assert_failed_after_work(code, err, "no space left on device", "free")
    assert len(line) < 400 and ".partial-" not in line and nothing_left(out)


# ---- 9. messages that name the input ---------------------------------------------------------------------
def test_a_single_document_names_the_file_and_what_would_work(capsys, tmp_path, teacher, out):
    data = tmp_path / "one.txt"
    data.write_text("Once upon a time there was one story only.")
    code, _, err = run(capsys, "model", teacher, "--data", data, "--out", out)
    assert_bad_input(code, err, str(data), "only 1 document", "--eval-data")


def test_too_few_tokens_names_the_file_and_what_would_work(capsys, tmp_path, teacher, out):
    data = tmp_path / "short.txt"
    data.write_text("A short line.\nAnother short line.\n")
    code, _, err = run(capsys, "model", teacher, "--data", data, "--out", out)
    assert_bad_input(code, err, str(data), "fewer than one block", "at least 128 tokens")


def test_indices_error_carries_its_key_path(capsys, tmp_path, teacher, out):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - inherit: {strategy: indices, indices: [0, 7]}\n  - export: {}\n")
    code, _, err = run(capsys, "model", teacher, "--recipe", recipe, "--data", TINYSTORIES, "--out", out)
    assert_bad_input(code, err, "recipe.yaml: passes[0].inherit.indices", "[7] out of range")
    assert nothing_left(out)


# ---- 10. outputs keep the user's umask ---------------------------------------------------------------------
@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_outputs_follow_the_umask(capsys, teacher, out, umask, dir_mode, file_mode):
    old = os.umask(umask)
    try:
        code, _, err = run(capsys, "pass", "inherit", "--in", teacher, "--out", out, "--set", "strategy=first")
    finally:
        os.umask(old)
    assert code == 0, err
    assert out.stat().st_mode & 0o777 == dir_mode
    assert (out / "model.safetensors").stat().st_mode & 0o777 == file_mode
    assert (out / "config.json").stat().st_mode & 0o777 == file_mode


# ---- 7. stale partials and scratch folders of dead processes are cleaned ---------------------------------
def test_stale_partials_and_scratch_of_dead_runs_are_removed(capsys, teacher, out):
    pid = dead_pid()
    stale = out.parent / f".{out.name}.partial-{pid}-abc123"
    live = out.parent / f".{out.name}.partial-{os.getpid()}-def456"
    scratch = Path(tempfile.gettempdir()) / f"compressor-{pid}-xyz"
    for folder in (stale, live, scratch):
        folder.mkdir()
        (folder / "half-written.bin").write_bytes(b"x")
    try:
        code, _, err = run(capsys, "pass", "inherit", "--in", teacher, "--out", out, "--set", "strategy=first")
        assert code == 0, err
        assert not stale.exists() and not scratch.exists()
        assert live.exists()  # another running process's work is left alone
    finally:
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


# ---- cases that already held: kept here so none regresses ---------------------------------------------------
def test_missing_teacher_path(capsys, out, tmp_path):
    code, _, err = run(capsys, "model", tmp_path / "nope", "--out", out)
    assert_bad_input(code, err, "nope", "no such file or directory")
    assert nothing_left(out)


def test_directory_without_config(capsys, out, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "model", tmp_path / "empty", "--out", out)
    assert_bad_input(code, err, "empty", "no config.json")
    assert nothing_left(out)


def test_config_that_is_not_json(capsys, out, teacher):
    (teacher / "config.json").write_text("{model_type: llama")
    code, _, err = run(capsys, "model", teacher, "--out", out)
    assert_bad_input(code, err, "config.json", "not valid JSON")


def test_config_without_model_type(capsys, out, teacher):
    (teacher / "config.json").write_text(json.dumps({"hidden_size": 32}))
    code, _, err = run(capsys, "model", teacher, "--out", out)
    assert_bad_input(code, err, "config.json", "no model_type")


def test_truncated_safetensors(capsys, out, teacher):
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-500])
    code, _, err = run(capsys, "model", teacher, "--out", out)
    assert_bad_input(code, err, "model.safetensors", "truncated or corrupt")
    assert nothing_left(out)


def test_weights_of_the_wrong_shape(capsys, out, teacher):
    tensors = load_file(teacher / "model.safetensors")
    tensors["model.norm.weight"] = torch.ones(7)
    save_file(tensors, teacher / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run(capsys, "model", teacher, "--out", out)
    assert_bad_input(code, err, "model.norm.weight")
    assert nothing_left(out)


def test_pickled_weights_only(capsys, out, teacher):
    torch.save(load_file(teacher / "model.safetensors"), teacher / "pytorch_model.bin")
    (teacher / "model.safetensors").unlink()
    code, _, err = run(capsys, "model", teacher, "--out", out)
    assert_bad_input(code, err, "pickled weights", "safetensors")


def test_unsupported_model_type_lists_the_families(capsys, out, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    code, _, err = run(capsys, "model", odd, "--out", out)
    assert_bad_input(code, err, "unsupported model_type 'gpt_neox'", "llama", "mixtral", "bert")
    assert nothing_left(out)


def test_recipe_typo_names_the_key(capsys, out, tmp_path, tiny_dirs):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - inherit: {}\n  - distill: {stpes: 3}\n")
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--recipe", recipe, "--out", out)
    assert_bad_input(code, err, "passes[1].distill.stpes: unknown key")
    assert nothing_left(out)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("passes:\n  - distill: {train.steps: many}\n", "passes[0].distill.train.steps"),
        ("- inherit: {}\n", "a recipe is a mapping"),
        ("teachr: x\n", "teachr: unknown key"),
        ("target: tpu\n", "target"),
        ("gates: {min_quality_retention: 2}\n", "gates.min_quality_retention"),
        ("budget: {layers: 0.5, params: 0.5}\n", "give one of layers, params, flops or latency"),
        ("passes: [shrink: {}]\n", "unknown pass 'shrink'"),
        ("passes: [{inherit: {}, distill: {}}]\n", "one-key mapping"),
        ("passes: [{distill: !!python/object:os.system {}}]\n", "not valid YAML"),
        ("passes: [{distill: {steps: 3}\n", "not valid YAML"),
        ("budget: {time: soon}\n", "budget.time"),
        ("budget: {train_tokens: lots}\n", "budget.train_tokens"),
    ],
)
def test_recipe_errors(capsys, out, tmp_path, tiny_dirs, text, fragment):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--recipe", recipe, "--out", out)
    assert_bad_input(code, err, fragment)
    assert nothing_left(out)


def test_yaml_bomb_is_refused_quickly(capsys, out, tmp_path, tiny_dirs):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    lines.append("passes: [{inherit: {indices: *i}}]")
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--recipe", recipe, "--out", out)
    assert_bad_input(code, err, "expands to more than")


def test_missing_recipe_file(capsys, out, tmp_path, tiny_dirs):
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--recipe", tmp_path / "none.yaml", "--out", out)
    assert_bad_input(code, err, "none.yaml", "not found")


def test_empty_data_file(capsys, out, tmp_path, tiny_dirs):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--data", empty, "--out", out)
    assert_bad_input(code, err, "empty.txt", "empty")
    assert nothing_left(out)


def test_binary_data_file(capsys, out, tmp_path, tiny_dirs):
    data = tmp_path / "weights.txt"
    data.write_bytes(bytes(range(256)) * 64)
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--data", data, "--out", out)
    assert_bad_input(code, err, str(data), "not UTF-8")


@pytest.mark.parametrize("flag", ["--data", "--eval-data", "--sts"])
def test_missing_data_files(capsys, out, tmp_path, tiny_dirs, flag):
    code, _, err = run(capsys, "model", tiny_dirs["llama"], flag, tmp_path / "missing.txt", "--out", out)
    assert_bad_input(code, err, "missing.txt", "not found")
    assert nothing_left(out)


def test_data_that_is_a_directory(capsys, out, tmp_path, tiny_dirs):
    (tmp_path / "folder").mkdir()
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--data", tmp_path / "folder", "--out", out)
    assert_bad_input(code, err, "a folder with no text files", "save_to_disk")


def test_malformed_sts_file(capsys, out, tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text("only\ttwo columns here\n")
    code, _, err = run(capsys, "model", "--sts", sts, "--out", out)
    assert_bad_input(code, err, "sts.csv:1", "column")


@pytest.mark.parametrize(
    "budget,fragment",
    [("0", "(0, 1]"), ("layers=0.1", "fewer than one"), ("layers=1.5", "(0, 1]"), ("1.5", "a count is a whole number"),
     ("0.01", "no uniform shape"), ("flops=0.01", "no uniform shape"), ("params=1G", "more than the teacher's")],
)  # fmt: skip
def test_impossible_budget(capsys, out, tiny_dirs, budget, fragment):
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--budget", budget, "--out", out)
    assert_bad_input(code, err, fragment)
    assert nothing_left(out)


@pytest.mark.parametrize("flag,value", [("--budget", "half"), ("--steps", "many"), ("--seed", "x")])
def test_option_values_of_the_wrong_type(capsys, out, tiny_dirs, flag, value):
    code, _, err = run(capsys, "model", tiny_dirs["llama"], flag, value, "--out", out)
    assert_bad_input(code, err, flag)


@pytest.mark.parametrize("flag,value", [("--train-tokens", "lots"), ("--time-budget", "soon"), ("--train-tokens", "0")])
def test_training_budget_errors_name_the_flag(capsys, out, tiny_dirs, flag, value):
    code, _, err = run(capsys, "model", tiny_dirs["llama"], flag, value, "--out", out)
    assert_bad_input(code, err, flag)
    assert nothing_left(out)


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_steps_must_be_positive(capsys, out, tiny_dirs, steps):
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--steps", steps, "--data", TINYSTORIES, "--out", out)
    assert_bad_input(code, err, "steps")
    assert nothing_left(out)


def test_unknown_target(capsys, out, tiny_dirs):
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--target", "tpu", "--out", out)
    assert_bad_input(code, err, "tpu")
    assert nothing_left(out)


def test_existing_output_is_never_overwritten_without_the_flag(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--out", out)
    assert_bad_input(code, err, "already exists", "--overwrite")
    assert (out / "precious.txt").read_text() == "keep me"


def test_pass_with_a_bad_setting(capsys, out, tiny_dirs):
    code, _, err = run(capsys, "pass", "distill", "--in", tiny_dirs["llama"], "--out", out, "--set", "stpes=3")
    assert_bad_input(code, err, "stpes: unknown key")
    assert nothing_left(out)


def test_set_without_equals(capsys, out, tiny_dirs):
    code, _, err = run(capsys, "pass", "distill", "--in", tiny_dirs["llama"], "--out", out, "--set", "steps")
    assert_bad_input(code, err, "expected key=value")


def test_unknown_pass(capsys, out, tiny_dirs):
    code, _, err = run(capsys, "pass", "shrink", "--in", tiny_dirs["llama"], "--out", out)
    assert_bad_input(code, err, "unknown pass 'shrink'", "distill", "export", "inherit")


def test_bench_of_a_plain_student_needs_an_out_folder(capsys, tiny_dirs):
    code, _, err = run(capsys, "bench", tiny_dirs["llama"], tiny_dirs["mistral"])
    assert_bad_input(code, err, "pass --out")


def test_an_out_of_range_option_is_a_usage_error(capsys, tiny_dirs):
    code, _, err = run(capsys, "bench", tiny_dirs["llama"], tiny_dirs["mistral"], "--runs", "2")
    assert_bad_input(code, err, "--runs")


def test_teacher_code_never_runs_without_the_flag(capsys, out, teacher):
    (teacher / "evil.py").write_text("import pathlib; pathlib.Path('PWNED').write_text('x')\n")
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "evil.Config"}}))
    code, _, err = run(capsys, "model", teacher, "--out", out)
    assert_bad_input(code, err, "auto_map")
    assert not Path("PWNED").exists() and not (teacher / "PWNED").exists()


def test_stories260k_is_untouched_by_a_refused_run(capsys):
    before = tree_hashes(STORIES)
    code, _, err = run(capsys, "model", STORIES, "--out", STORIES, "--overwrite")
    assert_bad_input(code, err, "is the teacher")
    assert tree_hashes(STORIES) == before
