"""The `compress` command end to end (bad inputs and faults: tests/test_bad_inputs.py, tests/test_faults.py)."""

import json

from transformers import AutoModel, AutoModelForCausalLM

from compressor.cli import main
from tests.helpers import DATA, STORIES


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
