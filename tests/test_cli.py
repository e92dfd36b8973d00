"""The `compress` command end to end (bad inputs and faults: tests/test_bad_inputs.py, tests/test_faults.py)."""

import json

import pytest
from transformers import AutoModel, AutoModelForCausalLM

from compressor.cli import main
from compressor.ir.families.moe import MOE_KD_WEIGHT
from passes.distill_config import DistillConfig
from targets import get_target
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
        "layers=0.67",
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
    general = report["quality"]["general_english"]  # the built-in corpus, beside the user's held-out
    student_general = report["quality"]["student"]["perplexity_general_english"]
    teacher_general = report["quality"]["teacher"]["perplexity_general_english"]
    assert general["student_over_teacher"] == pytest.approx(student_general / teacher_general, rel=1e-3)
    assert report["cached_passes"] == []
    assert [p["name"] for p in report["passes"]] == ["inherit", "distill", "export"]
    speed = report["speed"]  # measured by default: teacher PyTorch vs the shipped ONNX student
    assert speed["measured"] and speed["student_file"] == report["deployment"]["deploy_file"]
    assert speed["teacher"]["latency"]["p50_ms"] > 0 and speed["student"]["per_token"]["p50_ms"] > 0
    assert set(speed["speedup"]) == {"latency", "throughput", "per_token"}
    assert "| latency p50, batch 1 × 128 (ms) |" in (out / "REPORT.md").read_text().split("## What was lost")[0]
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
    other = [*args[:3], "layers=0.34", *args[4:]]  # another size budget is another student, never a cache hit
    code, _, err = run(capsys, *other, "--overwrite")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["cached_passes"] == [] and report["student"]["layers"] == 1


def test_moe_teacher_default_run_is_moe_to_dense_distill_export(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "moe"
    args = ["model", tiny_dirs["mixtral"], "--data", DATA / "tinystories_dev.txt", "--steps", "2", "--out", out]
    code, _, err = run(capsys, *args, "--quiet")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["moe_to_dense", "distill", "export"]
    assert report["passes"][1]["config"]["loss"]["alpha"] == MOE_KD_WEIGHT != DistillConfig().loss.alpha
    assert report["passes"][1]["config"]["data"]["source"] == "data" != DistillConfig().data.source
    assert report["onnx"]["passed"]
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.model_type == "mistral"
    gathered = report["passes"][0]["metrics"]
    assert len(gathered["layers"]) == 3 and "gathered_ppl" in gathered
    markdown = (out / "REPORT.md").read_text()
    assert "## MoE → dense" in markdown and "Student ONNX (`model" in markdown
    assert "## Training" in markdown and "set by the steps given" in markdown
    assert report["speed"]["measured"] and report["speed"]["student"]["latency"]["p50_ms"] > 0
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
    decode = report["speed"]["decode"]  # issue 14: decode speed of the teacher and the shipped student
    assert decode["teacher"]["decode_tokens_per_s"] > 0 and decode["student_fp32"]["decode_tokens_per_s"] > 0
    assert decode["teacher"]["prompt_tokens"] == 128 and decode["teacher"]["new_tokens"] == 128
    deployment = report["deployment"]
    assert deployment["quantization"]["kind"] in get_target("cpu").lm_weight_only
    assert (out / "onnx" / "genai_config.json").exists() and deployment["genai"]["model_file"] == deployment[
        "deploy_file"
    ]
    text = (out / "REPORT.md").read_text()
    assert "decode tokens/s" in text and "| variant | size | gate | result |" in text


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
    args = ["model", tiny_dirs["bert"], "--budget", "0.67", "--steps", "2", "--out", out, "--quiet", "--no-bench"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["speed"] == {
        "measured": False,
        "reason": "skipped (--no-bench)",
    }
    assert "not measured: skipped (--no-bench)" in (out / "REPORT.md").read_text()
    code, printed, err = run(capsys, "bench", tiny_dirs["bert"], out, "--runs", "3", "--quiet")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    bench = report["bench"]
    assert bench["flops_ratio"] == round(report["teacher"]["flops_per_token"] / report["student"]["flops_per_token"], 4)
    assert {"teacher_pytorch", "teacher_onnx", "student_onnx_fp32"} <= set(bench["variants"])
    assert bench["variants"]["teacher_onnx"]["speedup"] == 1.0
    assert "## Speed" in (out / "REPORT.md").read_text() and (out / "plots" / "bench.png").exists()


def test_bench_of_a_language_model_times_decoding_of_every_variant(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "run"
    args = ["model", tiny_dirs["qwen2"], "--budget", "0.67", "--steps", "2", "--out", out, "--quiet", "--no-bench"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    code, _, err = run(capsys, "bench", tiny_dirs["qwen2"], out, "--runs", "3", "--quiet")
    assert code == 0, err
    variants = json.loads((out / "report.json").read_text())["bench"]["variants"]
    deploy = json.loads((out / "report.json").read_text())["deployment"]["deploy_file"]
    assert all(v["decode"]["decode_tokens_per_s"] > 0 for v in variants.values())
    shipped = [name for name in variants if name.startswith("student_onnx_") and name != "student_onnx_fp32"]
    assert len(shipped) == (deploy != "model.onnx")
    assert "Greedy decoding with the KV cache" in (out / "REPORT.md").read_text()


def distill_metrics(out):
    report = json.loads((out / "report.json").read_text())
    return next(p for p in report["passes"] if p["name"] == "distill")


def test_a_token_budget_sets_the_training_length(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "run"
    code, _, err = run(
        capsys, "model", tiny_dirs["llama"], "--data", DATA / "tinystories_dev.txt", "--train-tokens", "6k",
        "--out", out, "--quiet", "--no-cache",
    )  # fmt: skip
    assert code == 0, err
    assert "distill: training 6.14k tokens (3 steps of 2,048 tokens" in err and "on this machine" in err
    distill = distill_metrics(out)
    plan = distill["metrics"]["plan"]
    assert distill["config"]["train"]["tokens"] == 6000 and plan["reason"] == "train_tokens" and plan["steps"] == 3
    assert distill["metrics"]["tokens"] == 3 * 2048 and distill["metrics"]["steps_done"] == 3
    assert [e["step"] for e in distill["metrics"]["evaluations"]] == [0, 3]  # held-out at the start and the end


def test_a_time_budget_caps_the_training(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("budget: {train_tokens: 50M}\n")  # far more than 2 s allow
    code, _, err = run(
        capsys, "model", tiny_dirs["llama"], "--data", DATA / "tinystories_dev.txt", "--recipe", recipe,
        "--time-budget", "2s", "--out", out, "--quiet", "--no-cache",
    )  # fmt: skip
    assert code == 0, err
    distill = distill_metrics(out)
    plan = distill["metrics"]["plan"]
    assert distill["config"]["train"]["time"] == 2 and distill["config"]["train"]["tokens"] == 50_000_000
    assert plan["reason"] == "time_budget" and plan["time_limit"] == 2.4
    assert distill["metrics"]["steps_done"] <= plan["steps"] < 50_000_000 // 2048


def test_minilm_on_a_file_of_one_sentence_per_line(capsys, tmp_path):
    lines = [row.split("\t")[0] for row in (DATA / "sst2_train.tsv").read_text().splitlines()[1:400]]
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    code, _, err = run(capsys, "model", "--data", data, "--steps", "2", "--out", out, "--quiet", "--no-bench")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    counts = report["data"]
    assert counts["train_documents"] + counts["validation_documents"] + counts["eval_documents"] == len(lines)
    assert counts["validation_documents"] == (counts["train_documents"] + counts["validation_documents"]) // 20


def test_a_dataset_saved_with_save_to_disk_trains_an_encoder(capsys, tmp_path, tiny_dirs):
    datasets = pytest.importorskip("datasets")
    rows = [row.split("\t") for row in (DATA / "sst2_train.tsv").read_text().splitlines()[1:300]]
    dataset = datasets.Dataset.from_dict({"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]})
    dataset.save_to_disk(str(tmp_path / "sst2"))
    out = tmp_path / "run"
    args = ["model", tiny_dirs["bert"], "--data", tmp_path / "sst2", "--steps", "2", "--out", out, "--quiet"]
    code, _, err = run(capsys, *args, "--no-bench")
    assert code == 0, err
    counts = json.loads((out / "report.json").read_text())["data"]
    assert counts["train_documents"] + counts["validation_documents"] == 269 and counts["eval_documents"] == 30


def test_a_classifier_distils_on_its_labels_and_reports_accuracy(capsys, tmp_path):
    from tests.helpers import make_tiny_classifier

    teacher = make_tiny_classifier(tmp_path / "teacher")
    rows = (DATA / "sst2_train.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(rows[:801]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join([rows[0], *rows[801:901]]) + "\n")
    out = tmp_path / "run"
    code, _, err = run(
        capsys, "model", teacher, "--budget", "0.67", "--data", tmp_path / "train.tsv", "--eval-data",
        tmp_path / "dev.tsv", "--steps", "4", "--out", out, "--quiet", "--no-bench",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    quality = report["quality"]
    assert quality["metric"] == "accuracy" and quality["eval_texts"] == 100
    assert 0 <= quality["student"]["accuracy"] <= 1 and 0 <= quality["teacher"]["accuracy"] <= 1
    assert quality["retention"] == pytest.approx(
        quality["student"]["accuracy"] / quality["teacher"]["accuracy"], abs=1e-3
    )
    assert 0 <= quality["student"]["agreement"] <= 1
    distill = next(p for p in report["passes"] if p["name"] == "distill")["metrics"]
    assert {"accuracy", "teacher_accuracy", "agreement"} <= set(distill["evaluations"][-1])
    assert report["onnx"]["task"] == "text-classification"


def test_library_warnings_go_to_the_log_and_the_summary_reads_as_sentences(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "run"
    args = ["model", tiny_dirs["qwen2"], "--data", DATA / "tinystories_dev.txt", "--steps", "2", "--out", out]
    code, printed, err = run(capsys, *args, "--quiet", "--no-bench", "--no-cache")
    assert code == 0, err
    noise = [line for line in err.splitlines() if "Warning" in line or "warn(" in line or "deprecated" in line]
    assert noise == []
    log = (out / "logs" / "compress.log").read_text()
    assert "Found different candidate ONNX initializers" in log  # Optimum's warning on a tied head, in the log
    assert "{" not in printed and "quality, student: perplexity" in printed
    assert f"deploy: {out}/onnx/" in printed and f"report: {out}/REPORT.md" in printed


def test_export_and_pass_send_library_warnings_to_their_log(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "onnx"
    code, _, err = run(capsys, "pass", "export", "--in", tiny_dirs["qwen2"], "--out", out, "--quiet", "--no-cache")
    assert code == 0, err
    noise = [line for line in err.splitlines() if "Warning" in line or "warn(" in line or "deprecated" in line]
    assert noise == []
    assert "Found different candidate ONNX initializers" in (out / "logs" / "compress.log").read_text()


def test_inspect_draws_the_graph_with_its_groups_and_never_replaces_a_file_unasked(capsys, tmp_path, tiny_dirs):
    picture = tmp_path / "graph.png"
    code, out, err = run(capsys, "inspect", tiny_dirs["mixtral"], "--graph", picture, "--json")
    assert code == 0, err
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    groups = json.loads(out)["graph"]["groups"]
    assert {"hidden", "layer.0.heads", "layer.0.ffn", "layer.0.experts"} <= set(groups)
    assert "coupled groups: experts, ffn, heads, hidden" in err
    before = picture.read_bytes()
    code, _, err = run(capsys, "inspect", tiny_dirs["llama"], "--graph", picture)
    assert code == 2 and "already exists; pass --overwrite" in err and picture.read_bytes() == before
    code, _, err = run(capsys, "inspect", tiny_dirs["llama"], "--graph", tmp_path / "graph.svg")
    assert code == 2 and "ending in .png" in err and not (tmp_path / "graph.svg").exists()
    code, _, err = run(capsys, "inspect", tiny_dirs["llama"], "--graph", picture, "--overwrite")
    assert code == 0 and picture.read_bytes() != before


def test_a_parameter_budget_from_the_command_line_prunes_with_a_recipe_and_reports_it(capsys, tmp_path, tiny_dirs):
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(
        "passes:\n  - prune: {calibration_batches: 2, score_blocks: 2}\n  - distill: {}\n  - export: {}\n"
    )
    out = tmp_path / "run"
    args = ["model", tiny_dirs["llama"], "--recipe", recipe, "--budget", "params=0.7", "--steps", "2"]
    code, _, err = run(capsys, *args, "--data", DATA / "tinystories_dev.txt", "--out", out, "--quiet", "--no-bench")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["params"] <= 0.7 * report["teacher"]["params"]
    assert report["passes"][0]["metrics"]["candidates"]
    markdown = (out / "REPORT.md").read_text()
    assert "## Pruning" in markdown and (out / "plots" / "prune_importance.png").exists()
    assert AutoModelForCausalLM.from_pretrained(out / "student").num_parameters() == report["student"]["params"]


def test_a_bare_budget_is_a_parameter_share_searched_by_default_or_pruned_when_the_run_is_short(
    capsys, tmp_path, tiny_dirs
):
    out = tmp_path / "run"
    args = ["model", tiny_dirs["llama"], "--budget", "0.6", "--steps", "2", "--data", DATA / "tinystories_dev.txt"]
    code, _, err = run(capsys, *args, "--out", out, "--quiet", "--no-bench")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["search", "distill", "export"]
    assert report["passes"][0]["config"]["train"]["steps"] == 2  # the run's length, which the search's share is of
    assert report["passes"][0]["metrics"]["fallback"]["to"] == "prune"  # 2 steps: any search is over its share
    assert report["student"]["params"] <= 0.6 * report["teacher"]["params"]
    markdown = (out / "REPORT.md").read_text()
    assert "of the teacher's parameters are embeddings" in markdown and "Shape chosen among candidates" in markdown
    assert "## Search\n\nNot run: " in markdown


def test_a_recipe_that_makes_an_moe_dense_then_prunes_it_is_checked_against_the_model_each_pass_sees(
    capsys, tmp_path, tiny_dirs
):
    recipe = tmp_path / "moe.yaml"  # prune's ffn cut would be refused on the MoE teacher; it runs on the dense model
    recipe.write_text("passes:\n  - moe_to_dense: {}\n  - prune: {ffn: 24, calibration_batches: 2}\n  - distill: {}\n")
    out = tmp_path / "run"
    args = ["model", tiny_dirs["mixtral"], "--recipe", recipe, "--steps", "2", "--data", DATA / "tinystories_dev.txt"]
    code, _, err = run(capsys, *args, "--out", out, "--quiet", "--no-bench")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["passes"]][:3] == ["moe_to_dense", "prune", "distill"]
    assert AutoModelForCausalLM.from_pretrained(out / "student").config.intermediate_size == 24


def test_pass_prune_keeps_an_moe_with_fewer_experts(capsys, tmp_path, tiny_dirs):
    out = tmp_path / "fewer"
    args = ["pass", "prune", "--in", tiny_dirs["mixtral"], "--out", out, "--set", "keep_experts=3", "--set",
            "calibration_batches=2", "--data", DATA / "tinystories_dev.txt"]  # fmt: skip
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert AutoModelForCausalLM.from_pretrained(out).config.num_local_experts == 3


def test_a_latency_budget_searches_measured_shapes_and_reports_the_shipped_latency(
    capsys, tmp_path, tiny_dirs, monkeypatch
):
    import passes.search_latency as search_latency
    from compressor.recipe import default_passes
    from passes.prune_shapes import ShapeCost

    assert [next(iter(p)) for p in default_passes(str(tiny_dirs["llama"]), "latency")] == ["search", "distill",
                                                                                           "export"]  # fmt: skip
    law = {}

    def fake_ms(ir, shape, target, scratch, runs=30):  # a deterministic machine: 0.1 ms + 0.02 ms per layer + FLOPs
        law.setdefault("flops", ShapeCost(ir, "flops"))
        return 0.1 + 0.02 * shape.layers + law["flops"](shape) / 1e5

    monkeypatch.setattr(search_latency, "measure_shape", fake_ms)
    recipe = tmp_path / "search.yaml"
    recipe.write_text("passes:\n  - search: {score: inherited, calibration_batches: 1, score_blocks: 2, "
                      "min_budget_use: 0.5}\n  - distill: {}\n  - export: {}\n")  # fmt: skip
    out = tmp_path / "run"
    args = ["model", tiny_dirs["llama"], "--recipe", recipe, "--budget", "latency=0.6ms", "--steps", "2"]
    code, _, err = run(capsys, *args, "--data", DATA / "tinystories_dev.txt", "--out", out, "--quiet")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    metrics = report["passes"][0]["metrics"]
    within = 0.6 * (1 - 0.05)  # the default latency_margin keeps room for the re-measurement of the shipped file
    assert metrics["cost"] == "latency" and metrics["latency"]["chosen_measured_ms"] <= within
    chosen = metrics["candidates"][metrics["chosen"]]
    assert chosen["latency_measured"] and all(r["latency_ms"] <= within for r in metrics["candidates"].values())
    assert report["speed"]["latency_budget"]["ms"] == 0.6  # the shipped file measured for real against the budget
    markdown = (out / "REPORT.md").read_text()
    assert "measurement of this machine" in markdown and "Latency budget 0.6 ms" in markdown
    assert "0.6 ms budget less a 5% margin" in markdown
    impossible = [*args[:4], "--budget", "latency=0.001ms", "--steps", "2", "--data", DATA / "tinystories_dev.txt"]
    code, _, err = run(capsys, *impossible, "--out", tmp_path / "impossible", "--quiet")
    assert code == 2 and "even the smallest student shape measured" in err
    assert not (tmp_path / "impossible").exists()
