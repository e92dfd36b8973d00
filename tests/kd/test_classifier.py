"""Task-student losses and scores (issue 13 §6; ALGORITHMS §7.1 on class logits, §7.9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from compressor.errors import UserError
from compressor.kd.classifier import NO_LABEL, classifier_kd_loss, label_ids, mapped_hidden_loss


def test_zero_at_equal_logits_with_kd_only():
    logits = torch.randn(6, 3)
    loss, _ = classifier_kd_loss(logits, logits.clone(), torch.full((6,), NO_LABEL), alpha=1.0, temperature=2.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_ce_part_uses_gold_labels_and_the_teacher_where_none_is_given():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([2, NO_LABEL, 0, NO_LABEL])
    loss, _ = classifier_kd_loss(student, teacher, labels, alpha=0.0, temperature=2.0)
    targets = torch.tensor([2, int(teacher[1].argmax()), 0, int(teacher[3].argmax())])
    assert float(loss) == pytest.approx(float(F.cross_entropy(student, targets)), rel=1e-6)


def test_kd_gradient_is_tau_times_q_minus_p():
    tau = 2.0
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 4)
    loss, _ = classifier_kd_loss(student, teacher, torch.full((5,), NO_LABEL), alpha=1.0, temperature=tau)
    loss.backward()
    expected = tau * (F.softmax(student.detach() / tau, -1) - F.softmax(teacher / tau, -1)) / 5
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_labels_map_from_ids_digits_and_names():
    config = PretrainedConfig(id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    assert label_ids([0, "1", "Positive", None, ""], config, "data.tsv") == [0, 1, 1, NO_LABEL, NO_LABEL]
    assert label_ids(None, config, "data.tsv") is None
    with pytest.raises(UserError, match="data.tsv: label 'maybe'"):
        label_ids(["maybe"], config, "data.tsv")
    with pytest.raises(UserError, match="outside the model's 2 classes"):
        label_ids([3], config, "data.tsv")


def test_mapped_hidden_loss_is_zero_for_the_teachers_own_layers():
    teacher = [torch.randn(2, 5, 8) for _ in range(7)]  # embeddings + 6 layers
    student = [teacher[0], teacher[2], teacher[4], teacher[6]]  # the student kept layers 1, 3, 5 (0-based)
    mask = torch.ones(2, 5)
    assert float(mapped_hidden_loss(student, teacher, [(0, 1), (1, 3), (2, 5)], mask)) == 0.0
    assert float(mapped_hidden_loss(student, teacher, [(0, 0), (1, 3), (2, 5)], mask)) > 0


def test_soft_agreement_is_one_at_equality_zero_when_disjoint_and_symmetric():
    from compressor.kd.classifier import soft_agreement

    p = torch.softmax(torch.randn(7, 3), -1)
    q = torch.softmax(torch.randn(7, 3), -1)
    assert soft_agreement(p, p) == pytest.approx(1.0)
    assert soft_agreement(p, q) == pytest.approx(soft_agreement(q, p)) and 0 <= soft_agreement(p, q) < 1
    one_hot = torch.eye(3)
    assert soft_agreement(one_hot, one_hot.roll(1, dims=0)) == pytest.approx(0.0)
    expected = 1 - 0.5 * (p[0] - q[0]).abs().sum()  # one pair: 1 − total-variation distance
    assert soft_agreement(p[:1], q[:1]) == pytest.approx(float(expected))


def test_validation_scores_run_the_teacher_once_and_monitor_soft_agreement_first(tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from compressor.kd.classifier import ValidationScores, class_probabilities
    from tests.helpers import make_tiny_classifier

    path = make_tiny_classifier(tmp_path / "teacher")
    teacher = BertForSequenceClassification.from_pretrained(path).eval()
    student = BertForSequenceClassification.from_pretrained(make_tiny_classifier(tmp_path / "student", 1)).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["a fine film", "dull and long", "it works", "never again", "bright", "grey"]
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    scores = ValidationScores(teacher, tokenizer, texts, [1, 0, 1, 0, NO_LABEL, 1], max_len=16)
    first, second = scores(student, 4), scores(student, 4)
    assert first == second and len(calls) == 1  # the teacher's distributions are computed once
    assert list(first) == ["soft_agreement", "accuracy", "teacher_accuracy", "agreement"]
    student_probs = class_probabilities(student, tokenizer, texts[:4], 16)
    teacher_probs = class_probabilities(teacher, tokenizer, texts[:4], 16)
    assert first["soft_agreement"] == pytest.approx(
        1 - 0.5 * float((student_probs - teacher_probs).abs().sum(-1).mean())
    )
    assert first["accuracy"] == pytest.approx(
        float((student_probs.argmax(-1) == torch.tensor([1, 0, 1, 0])).float().mean())
    )
    assert scores(teacher, 6)["soft_agreement"] == pytest.approx(1.0)  # more items: the teacher runs on all six
