"""`search`: the student shape under a params or FLOPs budget, realised by inheritance (ALGORITHMS §1, §2)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.budget import Budget
from compressor.errors import UserError
from compressor.ir import ModelIR
from passes.prune import Prune
from passes.prune_shapes import Shape, ShapeCost
from passes.search import Search, SearchConfig
from passes.search_report import search_lines
from tests.helpers import pass_context


def search(ir, tmp_path, budget, **config):
    ctx = pass_context(ir, tmp_path)
    ctx.budget = budget
    return Search(SearchConfig(**config)).run(ir, ctx), ctx.metrics


def test_an_exhaustive_search_returns_the_best_scored_shape_within_the_budget(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    student, metrics = search(ir, tmp_path, Budget(params=0.6), score="inherited", calibration_batches=1,
                              calibration_batch_size=2,
                              seq_len=32, score_blocks=2, min_budget_use=0.9, max_exhaustive=400)  # fmt: skip
    assert metrics["strategy"] == "exhaustive" and metrics["scored"] > 5
    whole = ir.summary()["totals"]["params"]
    for row in metrics["candidates"].values():
        assert 0.9 * 0.6 * whole <= row["params"] <= 0.6 * whole
    chosen = metrics["candidates"][metrics["chosen"]]
    assert chosen["score"] == max(r["score"] for r in metrics["candidates"].values())
    assert student.summary()["totals"]["params"] == chosen["params"] == metrics["params_after"]
    assert metrics["chosen"] in metrics["front"]  # the best score is never dominated
    saved = student.save(tmp_path / "saved")
    assert AutoModelForCausalLM.from_pretrained(saved).num_parameters() == chosen["params"]
    text = "\n".join(search_lines(metrics))
    assert (
        "## Search" in text and "(chosen)" in text and (tmp_path / "artifacts" / "plots" / "search_front.png").exists()
    )


@pytest.mark.parametrize("seed", range(3))
def test_an_evolutionary_search_never_returns_a_shape_over_a_random_flops_budget(tiny_dirs, tmp_path, seed):
    import random

    ir = ModelIR.load(tiny_dirs["llama"])
    share = random.Random(seed).uniform(0.3, 0.9)
    student, metrics = search(ir, tmp_path, Budget(flops=share), score="inherited", strategy="evolution",
                              population=6, sample=4,
                              cycles=12, calibration_batches=1, calibration_batch_size=2, seq_len=16, score_blocks=1,
                              min_budget_use=0.5)  # fmt: skip
    whole = ir.summary()["totals"]["flops_per_token"]
    assert student.summary()["totals"]["flops_per_token"] <= share * whole
    cost = ShapeCost(ir, "flops")
    assert all(cost(Shape(**r["shape"])) <= share * whole for r in metrics["candidates"].values())


def test_diswot_ranks_without_training_and_the_kd_score_trains(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    small = dict(calibration_batches=1, calibration_batch_size=2, seq_len=16, score_blocks=1, min_budget_use=0.9)
    _, diswot = search(ir, tmp_path / "d", Budget(params=0.7), score="diswot", diswot_seeds=1, **small)
    assert diswot["score"] == "diswot" and all(r["score"] <= 0 for r in diswot["candidates"].values())
    _, inherited = search(ir, tmp_path / "i", Budget(params=0.7), score="inherited", **small)
    _, kd = search(ir, tmp_path / "k", Budget(params=0.7), score="kd", kd_steps=3, kd_batch_size=2, **small)
    for name, row in kd["candidates"].items():  # a few steps of distillation bring every shape closer
        if name in inherited["candidates"]:
            assert row["score"] > inherited["candidates"][name]["score"], name


def test_search_refuses_what_it_cannot_do(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    with pytest.raises(UserError, match="needs a params, FLOPs or latency budget"):
        Search().check(ir, Budget(layers=0.5))
    with pytest.raises(UserError, match="diswot needs a language-model head"):
        Search(SearchConfig(score="diswot")).check(ModelIR.load(tiny_dirs["bert"]), Budget(params=0.5))
    with pytest.raises(UserError, match="mixture of experts"):
        Search().check(ModelIR.load(tiny_dirs["mixtral"]), Budget(params=0.5))
    with pytest.raises(UserError, match="no uniform shape"):
        Search().check(ir, Budget(params=0.01))


def test_the_auto_score_falls_back_to_inherited_when_kd_scores_would_not_fit_the_time(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    small = dict(calibration_batches=1, calibration_batch_size=2, seq_len=16, score_blocks=1, min_budget_use=0.9,
                 kd_steps=2, kd_batch_size=2)  # fmt: skip
    _, roomy = search(ir, tmp_path / "roomy", Budget(params=0.7), score="auto", min_kd_scores=1, **small)
    assert roomy["score"] == "kd" and roomy["score_why"].startswith("auto: the short-distillation proxy")
    _, tight = search(ir, tmp_path / "tight", Budget(params=0.7), score="auto", min_kd_scores=10**9, **small)
    assert tight["score"] == "inherited" and "min_kd_scores" in tight["score_why"]


def test_the_encoder_kd_proxy_lowers_the_distill_pass_loss_to_the_teacher(tiny_dirs):
    from compressor.data import encode_sentences
    from compressor.kd.losses import encoder_kd_loss
    from passes.base import load_tokenizer
    from passes.prune_proxy import ProxySettings, short_kd_encoder

    ir = ModelIR.load(tiny_dirs["bert"])
    teacher, tokenizer = ir.materialize(), load_tokenizer(ir.tokenizer_dir)
    student = ir.materialize()
    for layer in student.encoder.layer[1:]:
        layer.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)  # a worse student
    texts = [f"the {w} sat on the mat by the door" for w in ("cat", "dog", "bird", "fox", "child", "old man")]
    batch = encode_sentences(tokenizer, texts, 16)

    def loss() -> float:
        with torch.no_grad():
            return float(encoder_kd_loss(student(**batch, output_hidden_states=True).hidden_states[-1],
                                         teacher(**batch, output_hidden_states=True).hidden_states[-1],
                                         batch["attention_mask"])[0])  # fmt: skip

    before = loss()
    run = short_kd_encoder(teacher, student, texts, tokenizer, ProxySettings(steps=30, batch_size=6, lr=1e-3),
                           torch.device("cpu"), 16)  # fmt: skip
    assert run["steps"] == 30 and run["tokens"] == 30 * int(batch["attention_mask"].sum())
    assert loss() < 0.5 * before and not any(p.requires_grad for p in student.parameters())


def test_the_encoder_kd_proxy_trains_full_width_shapes_on_the_relations_by_default(tiny_dirs):
    """A full-width copy of the teacher with its output scaled by 3 has the teacher's similarity structure: the
    relations proxy (search's default for encoders) sees nothing to learn, the distill pass's cosine + MSE does."""
    from passes.base import load_tokenizer
    from passes.prune_proxy import ProxySettings, short_kd_encoder

    assert SearchConfig().kd_encoder_loss == "relations"
    ir = ModelIR.load(tiny_dirs["bert"])
    teacher, tokenizer = ir.materialize(), load_tokenizer(ir.tokenizer_dir)
    texts = [f"the {w} sat on the mat by the door" for w in ("cat", "dog", "bird", "fox", "child", "old man")]
    settings = ProxySettings(steps=5, batch_size=6, lr=1e-4)
    ends = {}
    for relations in (True, False):
        student = ir.materialize()
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # the proxy trains in train mode: only the scale may differ from the teacher
            if hasattr(module, "dropout_prob"):
                module.dropout_prob = 0.0  # SDPA attention's own dropout
        norm = student.encoder.layer[-1].output.LayerNorm
        with torch.no_grad():
            norm.weight.mul_(3.0)
            norm.bias.mul_(3.0)
        run = short_kd_encoder(teacher, student, texts, tokenizer, settings, torch.device("cpu"), 16,
                               relations=relations)  # fmt: skip
        ends[relations] = run["loss_end"]
    assert ends[True] < 1e-4 and ends[False] > 0.1


def test_a_fallback_search_runs_within_its_share_of_the_run_and_else_lets_prune_choose(
    tiny_dirs, tmp_path, monkeypatch
):
    ir = ModelIR.load(tiny_dirs["llama"])
    importance, scored = Prune.importance, []
    monkeypatch.setattr(Prune, "importance", lambda self, *a: scored.append(1) or importance(self, *a))
    small = dict(score="inherited", calibration_batches=1, calibration_batch_size=2, seq_len=16, score_blocks=1,
                 min_budget_use=0.9, fallback="prune")  # fmt: skip
    _, searched = search(ir, tmp_path / "long", Budget(params=0.6), train={"time": 3600.0}, **small)
    assert "fallback" not in searched and searched["scored"] > 1
    scored.clear()
    student, fell = search(ir, tmp_path / "short", Budget(params=0.6), train={"steps": 1}, **small)
    assert len(scored) == 1  # prune chose on the search's importance scores, not computed a second time
    assert fell["fallback"]["to"] == "prune" and "1 steps at the measured step time" in fell["fallback"]["why"]
    assert "strategy" not in fell and fell["candidates"]  # prune's own metrics: its candidate shapes
    assert student.summary()["totals"]["params"] <= 0.6 * ir.summary()["totals"]["params"]
    text = "\n".join(Search.report_lines({}, fell))
    assert "Not run: no time left for scoring within 25% of the run" in text
    with pytest.raises(UserError, match="fallback: prune chooses shapes under params or FLOPs budgets"):
        Search(SearchConfig(fallback="prune")).check(ir, Budget(latency="5ms"))
