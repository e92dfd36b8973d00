"""The `compress` command end to end, and every kind of bad input: exit 2, one line, nothing left behind."""

import json
import shutil

import pytest
from transformers import AutoModel, AutoModelForCausalLM

from compressor.cli import main
from tests.helpers import DATA, STORIES


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_bad_input(code, err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("compress: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def nothing_left(out):
    return not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())


def test_missing_teacher_path(capsys, out, tmp_path):
    code, _, err = run(capsys, "model", tmp_path / "nope", "--out", out)
    assert_bad_input(code, err, "nope", "no such file or directory")
    assert nothing_left(out)


def test_directory_without_config(capsys, out, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "model", tmp_path / "empty", "--out", out)
    assert_bad_input(code, err, "empty", "no config.json")
    assert nothing_left(out)


def test_truncated_safetensors(capsys, out, tmp_path, tiny_dirs):
    broken = shutil.copytree(tiny_dirs["llama"], tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-500])
    code, _, err = run(capsys, "model", broken, "--out", out)
    assert_bad_input(code, err, "model.safetensors", "truncated or corrupt")
    assert nothing_left(out)


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


def test_empty_data_file(capsys, out, tmp_path, tiny_dirs):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--data", empty, "--out", out)
    assert_bad_input(code, err, "empty.txt", "empty")
    assert nothing_left(out)


@pytest.mark.parametrize("budget,fragment", [("0", "(0, 1]"), ("0.1", "fewer than one"), ("1.5", "(0, 1]")])
def test_impossible_budget(capsys, out, tiny_dirs, budget, fragment):
    code, _, err = run(capsys, "model", tiny_dirs["llama"], "--budget", budget, "--out", out)
    assert_bad_input(code, err, fragment)
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


def test_unknown_pass(capsys, out, tiny_dirs):
    code, _, err = run(capsys, "pass", "shrink", "--in", tiny_dirs["llama"], "--out", out)
    assert_bad_input(code, err, "unknown pass 'shrink'", "distill", "export", "inherit")


def test_model_end_to_end_and_cached_rerun(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "run"
    args = [
        "model",
        tiny_dirs["llama"],
        "--budget",
        "0.67",
        "--data",
        DATA / "tinystories_dev.txt",
        "--steps",
        "3",
        "--out",
        out,
        "--quiet",
    ]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["layers"] == 2 and report["onnx"]["passed"]
    assert report["quality"]["teacher"]["perplexity"] > 1 and report["quality"]["student"]["perplexity"] > 1
    assert report["cached_passes"] == []
    assert [p["name"] for p in report["passes"]] == ["inherit", "distill", "export"]
    assert (out / "REPORT.md").read_text().startswith("# Compression report")
    assert (out / "onnx" / "model.onnx").exists()
    AutoModelForCausalLM.from_pretrained(out / "student")
    lineage = json.loads((out / "student" / "compressor.json").read_text())["lineage"]
    assert [p["pass"] for p in lineage["passes"]] == ["inherit", "distill"]
    assert "AutoModelForCausalLM.from_pretrained" in (out / "student" / "README.md").read_text()
    assert "ORTModelForCausalLM" in (out / "onnx" / "README.md").read_text()

    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["cached_passes"] == ["inherit", "distill", "export"]


def test_moe_teacher_default_run_is_moe_to_dense_distill_export(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "moe"
    args = ["model", tiny_dirs["mixtral"], "--data", DATA / "tinystories_dev.txt", "--steps", "2", "--out", out]
    code, _, err = run(capsys, *args, "--quiet")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["moe_to_dense", "distill", "export"]
    assert report["onnx"]["passed"]
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.model_type == "mistral"
    gathered = report["passes"][0]["metrics"]
    assert len(gathered["layers"]) == 3 and "gathered_ppl" in gathered
    markdown = (out / "REPORT.md").read_text()
    assert "## MoE → dense" in markdown and "Student ONNX (`model" in markdown
    assert report["student_onnx_speed"]["measured"] and report["student_onnx_speed"]["latency"]["p50_ms"] > 0
    code, _, err = run(capsys, "bench", tiny_dirs["mixtral"], out, "--runs", "3", "--quiet")
    assert code == 0, err
    bench = json.loads((out / "report.json").read_text())["bench"]
    assert (
        not bench["variants"]["teacher_onnx"]["measured"] and "mixtral" in bench["variants"]["teacher_onnx"]["reason"]
    )
    assert bench["speedup_reference"] == "teacher_pytorch" and bench["variants"]["teacher_pytorch"]["speedup"] == 1.0
    assert bench["variants"]["student_onnx_fp32"]["measured"]


def test_single_pass_inspect_and_eval(capsys, tmp_path, tiny_dirs):
    student = tmp_path / "student"
    code, out, err = run(
        capsys,
        "pass",
        "inherit",
        "--in",
        tiny_dirs["qwen3"],
        "--out",
        student,
        "--set",
        "strategy=uniform",
        "--set",
        "layers=2",
        "--quiet",
    )
    assert code == 0, err
    assert json.loads(out)["metrics"]["kept_layers"] == [0, 2]
    code, out, err = run(capsys, "inspect", student, "--json")
    assert code == 0 and json.loads(out)["totals"]["layers"] == 2
    code, out, err = run(capsys, "eval", student, "--data", DATA / "tinystories_dev.txt")
    assert code == 0, err
    result = json.loads(out)
    assert result["teacher_path"] == str(tiny_dirs["qwen3"]) and result["student"]["perplexity"] > 1


def test_stories260k_student_is_a_validated_kv_cache_onnx(capsys, tmp_path):
    out = tmp_path / "stories"
    code, _, err = run(
        capsys,
        "model",
        STORIES,
        "--budget",
        "0.6",
        "--data",
        DATA / "tinystories_dev.txt",
        "--target",
        "cpu",
        "--steps",
        "5",
        "--out",
        out,
        "--quiet",
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["onnx"]["kv_cache_checked"] and report["onnx"]["passed"]
    assert report["onnx"]["task"] == "text-generation-with-past"
    teacher_ppl, student_ppl = report["quality"]["teacher"]["perplexity"], report["quality"]["student"]["perplexity"]
    assert student_ppl > teacher_ppl > 1  # 5 steps cannot recover what dropping 2 of 5 layers lost


def test_default_run_compresses_the_packaged_minilm(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "model", "--steps", "3", "--quiet", "--sts", DATA / "stsb_dev.csv")
    assert code == 0, err
    out = tmp_path / "compressed" / "model-cpu"
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["layers"] == 6 and report["student"]["layers"] == 3
    assert report["onnx"]["passed"] and report["onnx"]["task"] == "feature-extraction"
    assert 0 < report["quality"]["student"]["embedding_cosine"] <= 1
    assert "sts_spearman" in report["quality"]["teacher"]
    AutoModel.from_pretrained(out / "student")


def test_bench_adds_speed_figures_to_the_run(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "run"
    code, _, err = run(capsys, "model", tiny_dirs["bert"], "--budget", "0.67", "--steps", "2", "--out", out, "--quiet")
    assert code == 0, err
    code, printed, err = run(capsys, "bench", tiny_dirs["bert"], out, "--runs", "3", "--quiet")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    bench = report["bench"]
    assert bench["flops_ratio"] == round(report["teacher"]["flops_per_token"] / report["student"]["flops_per_token"], 4)
    assert {"teacher_pytorch", "teacher_onnx", "student_onnx_fp32"} <= set(bench["variants"])
    assert bench["variants"]["teacher_onnx"]["speedup"] == 1.0
    assert "## Speed" in (out / "REPORT.md").read_text() and (out / "plots" / "bench.png").exists()


def test_bench_of_a_plain_student_needs_an_out_folder(capsys, tiny_dirs):
    code, _, err = run(capsys, "bench", tiny_dirs["llama"], tiny_dirs["mistral"])
    assert_bad_input(code, err, "pass --out")


def test_an_out_of_range_option_is_a_usage_error(capsys, tiny_dirs):
    code, _, err = run(capsys, "bench", tiny_dirs["llama"], tiny_dirs["mistral"], "--runs", "2")
    assert_bad_input(code, err, "--runs")
