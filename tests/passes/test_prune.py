"""`prune`: one-shot structured pruning through the coupled groups (ALGORITHMS §3b, §8)."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from compressor.budget import Budget
from compressor.errors import UserError
from compressor.ir import ModelIR
from passes.prune import Prune, PruneConfig
from passes.prune_cut import between, gqa_heads, top
from passes.prune_report import prune_lines
from passes.prune_shapes import Shape, candidate_shapes, params_of, shape_of
from tests.helpers import (
    DECODERS,
    MOES,
    STORIES,
    expert_down,
    make_tiny_classifier,
    minilm_dir,
    outputs,
    pass_context,
    sample_inputs,
)


def prune(ir, tmp_path, budget=None, **config):
    ctx = pass_context(ir, tmp_path)
    ctx.budget = budget or Budget()
    return Prune(PruneConfig(**config)).run(ir, ctx), ctx.metrics


@pytest.mark.parametrize("importance", ["activation", "magnitude", "taylor"])
def test_keeping_everything_is_the_identity(tiny_dirs, tmp_path, importance):
    ir = ModelIR.load(tiny_dirs["llama"])
    s = shape_of(ir)
    student, _ = prune(ir, tmp_path, importance=importance, layers=s.layers, heads=s.heads, ffn=s.ffn, hidden=s.hidden)
    inputs = sample_inputs("llama")
    assert torch.equal(outputs(student.materialize(), inputs), outputs(ir.materialize(), inputs))


@pytest.mark.parametrize("model_type", [*DECODERS, "bert"])
def test_every_family_prunes_to_a_stock_model_that_reloads(tiny_dirs, tmp_path, model_type):
    ir = ModelIR.load(tiny_dirs[model_type])
    widths = {"ffn": 32} if model_type == "bert" else {"ffn": 32, "heads": 2, "hidden": 24}
    student, metrics = prune(ir, tmp_path, layers=2, **widths)
    model = student.materialize()
    assert (
        student.summary()["totals"]["params"] == sum(p.numel() for p in model.parameters()) == metrics["params_after"]
    )
    assert metrics["shape_after"]["ffn"] == 32 and student.num_layers == 2
    saved = student.save(tmp_path / "saved")
    cls = AutoModel if model_type == "bert" else AutoModelForCausalLM
    inputs = sample_inputs(model_type)
    assert torch.allclose(outputs(cls.from_pretrained(saved).eval(), inputs), outputs(model, inputs), atol=1e-6)


def test_a_dead_ffn_unit_is_the_first_to_go(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    name = "model.layers.0.mlp.up_proj.weight"
    up = ir.weights[name].clone()
    up[17] = 0
    student, _ = prune(ir.set_weights({name: up}), tmp_path, ffn=63)
    kept_up = student.weights[name]
    assert kept_up.shape[0] == 63 and not any(torch.equal(row, up[17]) for row in kept_up)


def test_gqa_keeps_every_kv_group_and_the_same_count_inside_each():
    teacher, shape = Shape(1, 8, 2, 16, 16), Shape(1, 4, 2, 16, 16)
    scores = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.5, 0.4, 0.3, 0.7])
    assert gqa_heads(scores, teacher, shape) == [1, 2, 4, 7]
    assert top(torch.tensor([3.0, 1.0, 2.0, 2.0]), 2) == [0, 2]


def test_a_parameter_budget_is_met_by_the_best_scored_candidate(tmp_path):
    ir = ModelIR.load(STORIES)
    config = dict(calibration_batches=2, score_blocks=4, shape_score="oneshot")
    student, metrics = prune(ir, tmp_path, Budget(params=0.65), **config)
    assert metrics["params_after"] <= 0.65 * metrics["params_before"]
    scored = metrics["candidates"]
    assert {"ffn", "depth"} <= set(scored) and metrics["chosen"] in scored
    assert scored[metrics["chosen"]]["loss_to_teacher"] == min(c["loss_to_teacher"] for c in scored.values())
    assert metrics["ranking"]["by"] == "oneshot"
    assert (tmp_path / "artifacts" / "plots" / "prune_importance.png").exists()


def test_the_kd_ranking_distils_every_candidate_and_keeps_the_winner_trained(tmp_path):
    ir = ModelIR.load(STORIES)
    config = dict(calibration_batches=2, score_blocks=4, shape_score="kd", score_steps=12, score_batch_size=4)
    student, metrics = prune(ir, tmp_path, Budget(params=0.6), **config)
    scored, ranking = metrics["candidates"], metrics["ranking"]
    assert ranking["by"] == "kd" and ranking["tokens"] == len(scored) * 12 * 4 * 128
    for name, row in scored.items():  # distillation from the teacher lowers the KL to it
        assert row["loss_after_kd"] < row["loss_to_teacher"], name
    chosen = metrics["chosen"]
    assert scored[chosen]["loss_after_kd"] == min(c["loss_after_kd"] for c in scored.values())
    fresh, _ = prune(ir, tmp_path / "fresh", calibration_batches=2, **{k: v for k, v in metrics["shape_after"].items()
                                                                         if k != "kv_heads"})  # fmt: skip
    changed = [n for n, w in student.weights.items() if not torch.equal(w, fresh.weights[n])]
    assert changed  # the winner ships with the steps it was ranked by
    text = "\n".join(prune_lines({}, metrics))
    assert "distilled for 12 steps" in text and "KL after KD" in text


def test_auto_ranks_one_shot_when_the_kd_ranking_would_take_too_long(tmp_path):
    ir = ModelIR.load(STORIES)
    config = dict(calibration_batches=2, score_blocks=2, score_seconds=1e-6)
    _, metrics = prune(ir, tmp_path, Budget(params=0.6), **config)
    why = metrics["ranking"]["why"]
    assert metrics["ranking"]["by"] == "oneshot" and why
    assert all("loss_after_kd" not in row for row in metrics["candidates"].values())
    assert why in "\n".join(prune_lines({}, metrics))  # the report says why it did not distil the candidates


def test_candidates_fit_the_budget_and_use_it(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["qwen3"])
    total = params_of(ir, shape_of(ir))
    for name, shape in candidate_shapes(ir, int(0.7 * total)).items():
        assert params_of(ir, shape) <= 0.7 * total, name
        assert params_of(ir, shape) > 0.4 * total, name  # the largest fitting size, not any small one


def test_impossible_asks_are_refused_before_any_work(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    with pytest.raises(UserError, match="prune.ffn: 99 asked"):
        Prune(PruneConfig(ffn=99)).check(ir, Budget())
    with pytest.raises(UserError, match="multiple of the 2 kv groups"):
        Prune(PruneConfig(heads=3)).check(ir, Budget())
    bert = ModelIR.load(tiny_dirs["bert"])  # hidden 32, 4 heads of 8: the attention width is the hidden size
    with pytest.raises(UserError, match="not a multiple of the head size 8"):
        Prune(PruneConfig(hidden=12)).check(bert, Budget())
    with pytest.raises(UserError, match="hidden = heads × 8"):
        Prune(PruneConfig(heads=2, hidden=24)).check(bert, Budget())
    with pytest.raises(UserError, match="no uniform shape .* fits"):
        Prune(PruneConfig()).check(ir, Budget(params=0.01))
    with pytest.raises(UserError, match="more than the teacher's"):
        Prune(PruneConfig()).check(ir, Budget(params=10**9))
    with pytest.raises(UserError, match="schedule: iterative distils logits"):
        Prune(PruneConfig(schedule="iterative", ffn=16)).check(bert, Budget())
    with pytest.raises(UserError, match="shape_score: kd distils logits"):
        Prune(PruneConfig(shape_score="kd")).check(bert, Budget(params=0.5))
    moe = ModelIR.load(tiny_dirs["mixtral"])  # 4 experts, top-2
    with pytest.raises(UserError, match="give prune.keep_experts"):
        Prune(PruneConfig()).check(moe, Budget())
    with pytest.raises(UserError, match="cuts whole experts only"):
        Prune(PruneConfig(ffn=16)).check(moe, Budget())
    with pytest.raises(UserError, match="keep between the router's top-k \\(2\\) and the 4 experts"):
        Prune(PruneConfig(keep_experts=1)).check(moe, Budget())
    with pytest.raises(UserError, match="top-k \\(2\\) experts in every layer leaves"):
        Prune(PruneConfig()).check(moe, Budget(params=0.05))
    with pytest.raises(UserError, match="experts are cut in MoE models"):
        Prune(PruneConfig(keep_experts=2)).check(ir, Budget())


def test_pca_hidden_method_projects_the_stream_and_reports_it(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    student, metrics = prune(ir, tmp_path, hidden=24, hidden_method="pca", calibration_batches=2)
    model = student.materialize()
    assert student.config.hidden_size == 24 == metrics["shape_after"]["hidden"]
    assert metrics["params_after"] == sum(p.numel() for p in model.parameters())
    assert any("principal directions" in line for line in prune_lines({}, metrics))


def test_joint_and_pca_are_refused_where_they_cannot_work(tiny_dirs, tmp_path):
    bert = ModelIR.load(tiny_dirs["bert"])
    with pytest.raises(UserError, match="pre-norm"):
        Prune(PruneConfig(hidden_method="pca")).check(bert, Budget())
    llama = ModelIR.load(tiny_dirs["llama"])
    with pytest.raises(UserError, match="parameter budget"):
        Prune(PruneConfig(method="joint")).check(llama, Budget(layers=0.5))


def test_bert_heads_and_hidden_are_cut_together_and_reach_the_embeddings(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["bert"])
    student, metrics = prune(ir, tmp_path, heads=2, ffn=32)  # hidden follows: 2 heads × 8
    assert student.config.hidden_size == 16 == metrics["shape_after"]["hidden"]
    assert student.config.num_attention_heads == 2
    embeddings = [n for n in student.weights if "word_embeddings" in n]
    assert student.weights[embeddings[0]].shape[1] == 16
    assert metrics["params_after"] == sum(p.numel() for p in student.materialize().parameters())


def test_a_classifier_keeps_its_pooler_and_head_consistent_when_the_hidden_is_cut(tmp_path):
    ir = ModelIR.load(make_tiny_classifier(tmp_path / "classifier"))
    student, _ = prune(ir, tmp_path, hidden=16)
    saved = student.save(tmp_path / "saved")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    logits = model(**sample_inputs("bert")).logits
    assert logits.shape[-1] == 2 and torch.isfinite(logits).all()


def test_minilm_at_half_the_parameters_really_halves_them_by_cutting_the_hidden(tmp_path):
    ir = ModelIR.load(minilm_dir())
    student, metrics = prune(ir, tmp_path, Budget(params=0.5), calibration_batches=2, score_blocks=2)
    assert metrics["params_after"] <= 0.5 * metrics["params_before"]
    assert metrics["params_after"] > 0.4 * metrics["params_before"]  # the budget is used, not undershot
    assert metrics["embedding_params"] > 0.5 * metrics["params_before"]  # depth alone could never meet it
    assert student.config.hidden_size < ir.config.hidden_size
    assert student.config.hidden_size == 32 * student.config.num_attention_heads
    saved = student.save(tmp_path / "saved")
    assert ModelIR.load(saved).summary()["totals"]["params"] == metrics["params_after"]
    pooling = (saved / "1_Pooling" / "config.json").read_text()
    assert f'"word_embedding_dimension": {student.config.hidden_size}' in pooling


def test_a_flops_budget_is_met_by_flops_not_by_parameters(tmp_path):
    ir = ModelIR.load(STORIES)
    student, metrics = prune(ir, tmp_path, Budget(flops=0.6), calibration_batches=2, score_blocks=2,
                             shape_score="oneshot")  # fmt: skip
    whole = ir.summary()["totals"]["flops_per_token"]
    assert student.summary()["totals"]["flops_per_token"] <= 0.6 * whole
    for candidate in metrics["candidates"].values():
        assert candidate["flops_per_token"] <= 0.6 * whole


def test_between_starts_at_the_teacher_and_ends_at_the_student():
    teacher, final = Shape(6, 8, 2, 96, 64), Shape(3, 4, 2, 40, 32)
    assert between(teacher, final, 0.0) == teacher and between(teacher, final, 1.0) == final
    steps = [between(teacher, final, r / 4) for r in range(5)]
    for earlier, later in zip(steps, steps[1:], strict=False):  # every count shrinks monotonically
        assert all(getattr(later, a) <= getattr(earlier, a) for a in ("layers", "heads", "kv_heads", "ffn", "hidden"))
    assert all(s.heads % s.kv_heads == 0 for s in steps)  # GQA: the same query count in every kv group
    tied = between(Shape(2, 4, 4, 64, 32), Shape(2, 2, 2, 64, 16), 0.5, tied_head_size=8)
    assert tied.hidden == tied.heads * 8


def test_the_iterative_schedule_reaches_the_shape_in_rounds_and_reloads(tmp_path):
    ir = ModelIR.load(STORIES)
    config = dict(calibration_batches=2, score_blocks=2, schedule="iterative", rounds=3, round_steps=4,
                  score_batch_size=2, layers=4, ffn=96)  # fmt: skip
    student, metrics = prune(ir, tmp_path, **config)
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[-1]["shape"] == metrics["shape_after"] and student.num_layers == 4
    assert [r["params"] for r in rounds] == sorted((r["params"] for r in rounds), reverse=True)
    assert all(r["loss_after_kd"] < r["loss_after_cut"] for r in rounds)  # each cut is partly recovered
    assert student.summary()["totals"]["params"] == sum(p.numel() for p in student.materialize().parameters())
    saved = student.save(tmp_path / "saved")
    assert ModelIR.load(saved).summary()["totals"]["params"] == metrics["params_after"]
    assert "Iterative schedule: 3 cuts" in "\n".join(prune_lines({}, metrics))


@pytest.mark.parametrize("model_type", MOES)
def test_expert_pruning_keeps_an_moe_of_each_layers_best_experts_that_reloads(tiny_dirs, tmp_path, model_type):
    ir = ModelIR.load(tiny_dirs[model_type])
    down = expert_down(ir, 0, 2)
    silent = ir.set_weights({down: torch.zeros_like(ir.weights[down])})
    small = dict(calibration_batches=2, calibration_batch_size=2, seq_len=16)
    student, metrics = prune(silent, tmp_path, keep_experts=3, **small)
    assert student.adapter.is_moe and student.adapter.expert_count(student.config) == 3
    assert metrics["kept_experts"][0] == [0, 1, 3]  # layer 0's silent expert goes first
    model = student.materialize()
    params = sum(p.numel() for p in model.parameters())
    assert student.summary()["totals"]["params"] == params == metrics["params_after"]
    saved = student.save(tmp_path / "saved")
    inputs = sample_inputs(model_type)
    assert torch.allclose(outputs(AutoModelForCausalLM.from_pretrained(saved).eval(), inputs), outputs(model, inputs),
                          atol=1e-6)  # fmt: skip
    assert "Expert pruning" in "\n".join(prune_lines({}, metrics))


def test_a_params_budget_on_an_moe_keeps_the_most_experts_that_fit(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["mixtral"])
    whole = ir.summary()["totals"]["params"]
    three = ir.slice_group("experts", [0, 1, 2]).summary()["totals"]["params"]
    student, metrics = prune(ir, tmp_path, Budget(params=(three + 1) / whole), calibration_batches=2,
                             calibration_batch_size=2, seq_len=16)  # fmt: skip
    assert metrics["experts_after"] == 3 and metrics["params_after"] == three
