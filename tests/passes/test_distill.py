import math

import pytest
import torch

from compressor.ir import ModelIR
from passes.distill import Distill, DistillConfig
from tests.helpers import pass_context


def run_distill(teacher_ir, tmp_path, **config):
    ctx = pass_context(teacher_ir, tmp_path)
    ctx.run_dir = tmp_path / "run"
    student = teacher_ir.drop_layers([0, 2])
    trained = Distill(DistillConfig(**config)).run(student, ctx)
    return student, trained, ctx.metrics


def test_lm_distillation_lowers_the_kd_loss_and_writes_weights_back(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["llama"])
    student, trained, metrics = run_distill(
        teacher, tmp_path, train=dict(steps=40, batch_size=4, seq_len=32, lr=3e-3), loss=dict(alpha=1.0)
    )
    assert metrics["loss_last"] < metrics["loss_first"]
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(student.weights[name], trained.weights[name])
    assert trained.config.num_hidden_layers == 2


def test_encoder_distillation_lowers_the_embedding_loss(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["bert"])
    _, trained, metrics = run_distill(teacher, tmp_path, train=dict(steps=30, batch_size=8, seq_len=32, lr=1e-3))
    assert metrics["loss_last"] < metrics["loss_first"]
    assert trained.family == "bert"


@pytest.mark.parametrize("loss", ["rkl", "skew_kl", "skew_rkl", "jsd", "tvd", "taid"])
def test_every_lm_loss_trains_the_student(tiny_dirs, tmp_path, loss):
    teacher = ModelIR.load(tiny_dirs["llama"])
    student, trained, metrics = run_distill(
        teacher,
        tmp_path,
        # eval_every 0: the last weights, not the best held-out ones (which may be the untrained student's)
        train=dict(steps=6, batch_size=2, seq_len=16, eval_every=0),
        loss=dict(divergence=loss, alpha=1.0, temperature_schedule="dts" if loss == "tvd" else "constant"),
    )
    name = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(student.weights[name], trained.weights[name])
    assert all(math.isfinite(v) for v in metrics["loss_curve"])


def test_rs_kd_cache_is_built_once_reused_and_refused_for_another_teacher(tiny_dirs, tmp_path, monkeypatch):
    from compressor.errors import UserError

    teacher = ModelIR.load(tiny_dirs["llama"])
    config = dict(
        train=dict(steps=4, batch_size=2, seq_len=16),
        teacher=dict(signal="rs_cache", cache_draws=20),
        loss=dict(alpha=1.0),
    )
    _, trained, metrics = run_distill(teacher, tmp_path / "a", **config)
    assert metrics["logit_cache"]["reused"] is False and 1 <= metrics["logit_cache"]["mean_kept_tokens"] <= 20
    _, again, metrics = run_distill(teacher, tmp_path / "b", **config)
    assert metrics["logit_cache"]["reused"] is True
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(trained.weights[name], again.weights[name])  # same targets, same seed: same student
    folder = metrics["logit_cache"]["folder"]
    other = ModelIR.load(tiny_dirs["mistral"])
    with pytest.raises(UserError, match="another teacher"):
        run_distill(other, tmp_path / "c", **{**config, "teacher": {**config["teacher"], "logit_cache": folder}})


def test_lora_kd_merged_logits_equal_adapter_logits(tiny_dirs, tmp_path):
    from peft import LoraConfig, get_peft_model

    from passes.lora_kd import LoraKD, LoraKDConfig
    from tests.helpers import outputs, sample_inputs

    teacher = ModelIR.load(tiny_dirs["qwen2"])
    student = teacher.drop_layers([0, 2])
    step = LoraKD(LoraKDConfig(train=dict(steps=8, batch_size=2, seq_len=16, eval_every=0), lora=dict(rank=4)))
    ctx = pass_context(teacher, tmp_path)
    captured = {}
    original = step.finished

    def keep_adapter_logits(model):
        captured["adapter"] = outputs(model, sample_inputs("qwen2"))
        return original(model)

    step.finished = keep_adapter_logits
    merged = step.run(student, ctx)
    assert torch.allclose(outputs(merged.materialize(), sample_inputs("qwen2")), captured["adapter"], atol=1e-5)
    assert not torch.equal(
        merged.weights["model.layers.0.self_attn.q_proj.weight"],
        student.weights["model.layers.0.self_attn.q_proj.weight"],
    )
    assert merged.weights["model.embed_tokens.weight"].equal(student.weights["model.embed_tokens.weight"])
    assert ctx.metrics["trainable_params"] < sum(t.numel() for t in student.weights.values()) / 5
    # B = 0 at initialisation: merging an untrained adapter gives back the base model
    fresh = get_peft_model(student.materialize(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert torch.allclose(
        outputs(fresh.merge_and_unload(), sample_inputs("qwen2")),
        outputs(student.materialize(), sample_inputs("qwen2")),
    )


def test_on_policy_batches_train_on_student_samples(tiny_dirs, tmp_path):
    import json

    teacher = ModelIR.load(tiny_dirs["llama"])
    student, trained, metrics = run_distill(
        teacher,
        tmp_path,
        train=dict(steps=6, batch_size=2, seq_len=16, checkpoint_every=0),
        on_policy=dict(share=1.0),
        loss=dict(divergence="jsd"),
    )
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(line.get("on_policy") == 1.0 and line["ce"] == 0.0 for line in lines)
    assert not torch.equal(
        student.weights["model.layers.0.mlp.up_proj.weight"], trained.weights["model.layers.0.mlp.up_proj.weight"]
    )


def test_teacher_generated_corpus_is_made_once_and_reused(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["llama"])
    config = dict(train=dict(steps=3, batch_size=2, seq_len=16), data=dict(source="teacher", prompt_tokens=4))
    _, first, metrics = run_distill(teacher, tmp_path / "a", **config)
    assert metrics["teacher_corpus"] == {**metrics["teacher_corpus"], "sequences": 6, "reused": False}
    _, second, metrics = run_distill(teacher, tmp_path / "b", **config)
    assert metrics["teacher_corpus"]["reused"] is True
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(first.weights[name], second.weights[name])


def test_adaptive_off_policy_trains_on_generated_and_replayed_batches(tiny_dirs, tmp_path):
    import json

    teacher = ModelIR.load(tiny_dirs["llama"])
    run_distill(
        teacher,
        tmp_path,
        train=dict(steps=12, batch_size=2, seq_len=16, eval_every=6, eval_blocks=2),
        on_policy=dict(adaptive=True, replay_phi=0.9, replay_capacity=2),
        loss=dict(divergence="skew_kl"),
    )
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kinds = {"generated" if "generated" in line else "replayed" if "replayed" in line else "data" for line in lines}
    assert {"generated", "replayed"} <= kinds
    assert [line["eval"]["replay_phi"] for line in lines if "eval" in line]


def test_hidden_and_relation_losses_start_at_zero_for_a_copy_of_the_teacher(tiny_dirs, tmp_path):
    import json

    teacher = ModelIR.load(tiny_dirs["qwen3"])
    ctx = pass_context(teacher, tmp_path)
    ctx.run_dir = tmp_path / "run"
    config = DistillConfig(
        train=dict(steps=3, batch_size=2, seq_len=16, lr=1e-3), loss=dict(hidden_weight=1.0, relation_weight=1.0)
    )
    trained = Distill(config).run(teacher, ctx)  # the student is the teacher itself
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["hidden"] < 1e-10 and first["relation"] < 1e-6 and first["kd"] < 1e-6
    assert set(trained.weights) == set(teacher.weights)  # the projections were dropped


def test_hidden_loss_trains_a_projection_for_a_different_width(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["llama"])
    narrow = teacher.drop_layers([0, 2]).slice_group("hidden", list(range(24)))
    ctx = pass_context(teacher, tmp_path)
    trained = Distill(DistillConfig(train=dict(steps=4, batch_size=2, seq_len=16), loss=dict(hidden_weight=1.0))).run(
        narrow, ctx
    )
    assert trained.config.hidden_size == 24 and ctx.metrics["loss_last"] > 0


def dense_student_of(teacher, tmp_path):
    from passes.moe_to_dense import MoEToDense, MoEToDenseConfig

    config = MoEToDenseConfig(calibration_tokens=256, seq_len=32, eval_blocks=0, speed_runs=0)
    return MoEToDense(config).run(teacher, pass_context(teacher, tmp_path / "gather"))


@pytest.mark.parametrize("routing", ["ka", "sar"])
def test_moe_teacher_routing_modes_train_the_dense_student(tiny_dirs, tmp_path, routing):
    from compressor.kd.moe_teacher import router_parameters

    teacher = ModelIR.load(tiny_dirs["mixtral"])
    student = dense_student_of(teacher, tmp_path)
    ctx = pass_context(teacher, tmp_path)
    before = [p.detach().clone() for p in router_parameters(ctx.teacher_model)]
    config = DistillConfig(
        train=dict(steps=3, batch_size=2, seq_len=32, checkpoint_every=0), teacher=dict(routing=routing)
    )
    trained = Distill(config).run(student, ctx)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(student.weights[name], trained.weights[name])
    assert all(torch.equal(a, b) for a, b in zip(before, router_parameters(ctx.teacher_model), strict=True))
    if routing == "sar":  # the private teacher's routers moved; the run's teacher did not
        assert ctx.metrics["sar_router_shift"] > 0


def test_moe_routing_modes_need_an_moe_teacher(tiny_dirs, tmp_path):
    from compressor.errors import UserError

    teacher = ModelIR.load(tiny_dirs["llama"])
    with pytest.raises(UserError, match="not a mixture of experts"):
        run_distill(teacher, tmp_path, train=dict(steps=1, batch_size=2, seq_len=32), teacher=dict(routing="ka"))


def test_a_plan_past_the_data_s_repeat_cap_trains_on_teacher_written_text_for_the_rest(tiny_dirs, tmp_path):
    """`data.source: auto`: each data block is read at most `max_data_epochs` times; the teacher writes the rest."""
    from tests.helpers import DATA

    lines = (DATA / "tinystories_dev.txt").read_text().split("\n\n")[:40]
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join(lines))
    teacher = ModelIR.load(tiny_dirs["llama"])
    ctx = pass_context(teacher, tmp_path, corpus_file=str(small))
    ctx.run_dir = tmp_path / "run"
    student = teacher.drop_layers([0, 2])
    config = DistillConfig(train=dict(tokens=6_000, batch_size=4, seq_len=16), data=dict(max_data_epochs=1))
    Distill(config).run(student, ctx)
    plan, mix = ctx.metrics["plan"], ctx.metrics["data_mix"]
    assert plan["generated"] == mix["teacher_blocks"] > 0 and mix["data_reads"] == 1
    reads = plan["steps"] * 4
    assert reads <= mix["data_blocks"] + mix["teacher_blocks"] < reads + 4  # one pass over the pool, not more
    assert ctx.metrics["teacher_corpus"]["reused"] is False

    plain = pass_context(teacher, tmp_path / "plain", corpus_file=str(small))
    Distill(DistillConfig(train=dict(tokens=6_000, batch_size=4, seq_len=16), data=dict(source="data"))).run(
        student, plain
    )
    assert "data_mix" not in plain.metrics and plain.metrics["plan"]["generated"] == 0


def test_the_training_section_says_whose_text_the_student_read_and_which_step_was_kept():
    from passes.distill_report import distill_section

    plan = dict(tokens=4096, steps=2, tokens_per_step=2048, reason="max_epochs", estimated_seconds=30, data_epochs=4)
    metrics = dict(
        plan=plan, steps_done=2, tokens=4096, seconds=31, best_step=1, best_heldout=9.5,
        evaluations=[{"step": 0, "perplexity": 12.0}, {"step": 1, "perplexity": 9.5}],
        data_mix=dict(data_blocks=10, data_reads=4, teacher_blocks=24, teacher_tokens=3072),
    )  # fmt: skip
    text = "\n".join(distill_section(metrics))
    assert "your 10 blocks read 4 times each, plus 24 blocks (3.07k tokens) that the teacher wrote" in text
    assert "Kept the weights of step 1 (best perplexity" in text
    assert "passes over your data" not in text
    metrics.pop("data_mix")
    assert "4.00 passes over your data" in "\n".join(distill_section(metrics))
    assert "re-planned" not in text
    metrics["replan"] = "steps took 0.15 s here, not the 0.12 s the probe measured: re-planned at step 10 to 80 steps"
    assert "The probe's estimate was off: steps took 0.15 s here" in "\n".join(distill_section(metrics))


def test_the_training_section_says_whether_more_training_would_help():
    from passes.distill_report import more_training_verdict

    def curve(values, name="perplexity"):
        return [{"step": 100 * i, name: v} for i, v in enumerate(values)]

    falling = curve([30, 20, 15, 12, 11, 10.5, 10.2, 10.0, 9.8, 9.5])  # last fifth (2 of 10 steps): 10 → 9.5
    assert "Still improving" in more_training_verdict(falling, "min", None)
    assert "10 → 9.5" in more_training_verdict(falling, "min", None)
    flat = curve([30, 20, 15, 12, 11, 10.5, 10.2, 10.0, 10.0, 9.99])  # 0.1 % over the last fifth
    assert "flattened" in more_training_verdict(flat, "min", None)
    assert "flattened" in more_training_verdict(curve([30, 12, 9.0, 9.5]), "min", None)  # best is not the last
    assert "unlikely to help" in more_training_verdict(falling, "min", "no improvement in 5 evaluations")
    rising = curve([0.5, 0.7, 0.8, 0.85, 0.9], "agreement")  # higher is better for encoders and classifiers
    assert "Still improving" in more_training_verdict(rising, "max", None)
    assert "flattened" in more_training_verdict(rising, "min", None)
    assert more_training_verdict(curve([30, 20]), "min", None) is None  # too few evaluations to say


def test_default_learning_rate_shrinks_with_the_student_s_width():
    from types import SimpleNamespace

    def ir(task, hidden):
        return SimpleNamespace(task=task, config=SimpleNamespace(hidden_size=hidden))

    rate = Distill().default_lr
    assert rate(ir("causal-lm", 64)) == pytest.approx(3e-3) and rate(ir("causal-lm", 32)) == pytest.approx(3e-3)
    assert rate(ir("causal-lm", 576)) == pytest.approx(1e-3)
    assert rate(ir("causal-lm", 2048)) < rate(ir("causal-lm", 576))
    assert rate(ir("feature-extraction", 384)) == 2e-4
