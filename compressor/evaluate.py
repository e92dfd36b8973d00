"""Quality metrics: perplexity and teacher agreement for causal LMs; embedding similarity and STS Spearman
for encoders. Each works on plain transformers models so `compress eval` can compare any two checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from compressor.kd.losses import mean_pool


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over every predicted token of the blocks [N, T]."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size].to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += ids[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def top1_agreement(student, teacher, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Share of positions where the student's argmax next token equals the teacher's."""
    device = next(student.parameters()).device
    agree, count = 0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size].to(device)
        s = student(input_ids=ids).logits.argmax(-1)
        t = teacher(input_ids=ids).logits.argmax(-1)
        agree += int((s == t).sum())
        count += s.numel()
    return agree / count


@torch.no_grad()
def sentence_embeddings(
    model, tokenizer, texts: Sequence[str], max_len: int = 128, batch_size: int = 64
) -> torch.Tensor:
    """Mean-pooled last hidden states, one row per text (the all-MiniLM pooling)."""
    from compressor.data import encoded_batches

    rows = []
    for enc in encoded_batches(tokenizer, list(texts), max_len, batch_size, next(model.parameters()).device):
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
        rows.append(mean_pool(hidden.float(), enc["attention_mask"]).cpu())
    return torch.cat(rows)


def similarity_correlation(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Pearson correlation of the pairwise cosine similarities of two sets of embeddings of the same texts
    ([N, d_S], [N, d_T], any widths): 1 when the student ranks and spaces sentence pairs as the teacher does,
    unchanged by a rotation or scale of either side. The agreement measure for a student narrower than its
    teacher, whose embeddings share no space with the teacher's."""
    from compressor.kd.losses import cosine_matrix

    upper = torch.triu_indices(len(student), len(student), offset=1)
    s = cosine_matrix(student.double())[upper[0], upper[1]]
    t = cosine_matrix(teacher.double())[upper[0], upper[1]]
    return float(torch.corrcoef(torch.stack([s, t]))[0, 1])


def embedding_agreement(
    student,
    teacher,
    tokenizer,
    texts: Sequence[str],
    max_len: int = 128,
    teacher_embeddings: torch.Tensor | None = None,
) -> tuple[str, float]:
    """(metric, value): the mean cosine of the student's sentence embeddings to the teacher's when both have the
    same width, else the correlation of their pairwise similarities (`similarity_correlation`). A run that scores
    the same texts many times passes the teacher's `teacher_embeddings` once computed (they do not change)."""
    s = sentence_embeddings(student, tokenizer, texts, max_len)
    t = (
        teacher_embeddings
        if teacher_embeddings is not None
        else sentence_embeddings(teacher, tokenizer, texts, max_len)
    )
    if s.shape[-1] == t.shape[-1]:
        return "embedding_cosine", float(F.cosine_similarity(s, t, dim=-1).mean())
    return "similarity_correlation", similarity_correlation(s, t)


def rank(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank."""
    values = values.double()
    order = torch.argsort(values)
    ranks = torch.empty_like(values)
    sorted_values = values[order]
    i = 0
    n = len(values)
    while i < n:
        j = i
        while j + 1 < n and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Spearman's rank correlation: the Pearson correlation of the (tie-averaged) ranks."""
    rx, ry = rank(torch.as_tensor(x)), rank(torch.as_tensor(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denominator if denominator else 0.0


def sts_spearman(model, tokenizer, rows: Sequence[tuple[str, str, float]], max_len: int = 128) -> float:
    """Spearman between cos(e(s1), e(s2)) and the gold similarity score, as STS-B is scored."""
    a = sentence_embeddings(model, tokenizer, [r[0] for r in rows], max_len)
    b = sentence_embeddings(model, tokenizer, [r[1] for r in rows], max_len)
    return spearman(F.cosine_similarity(a, b, dim=-1), [r[2] for r in rows])


def compare(
    teacher,
    student,
    tokenizer,
    task: str,
    eval_docs: Sequence[str],
    sts_rows: Sequence[tuple[str, str, float]] | None = None,
    seq_len: int = 128,
    max_blocks: int = 64,
    max_sentences: int = 512,
    classifier: bool = False,
    eval_labels: Sequence[int] | None = None,
    max_texts: int = 8192,
) -> dict:
    """Teacher vs student on held-out data: the quality section of the report."""
    from compressor.data import lm_blocks, sentences

    if task == "causal-lm":
        blocks = lm_blocks(tokenizer, eval_docs, seq_len, max_blocks=max_blocks)
        teacher_ppl, student_ppl = perplexity(teacher, blocks), perplexity(student, blocks)
        return {
            "metric": "perplexity",
            "eval_tokens": int(blocks.numel()),
            "teacher": {"perplexity": round(teacher_ppl, 4)},
            "student": {
                "perplexity": round(student_ppl, 4),
                "top1_agreement": round(top1_agreement(student, teacher, blocks), 4),
            },
            # retention in NLL terms: teacher NLL / student NLL (1.0 = as good as the teacher)
            "retention": round(math.log(teacher_ppl) / math.log(student_ppl), 4) if student_ppl > 1 else 1.0,
        }
    if classifier:
        return classifier_quality(teacher, student, tokenizer, list(eval_docs)[:max_texts], eval_labels, seq_len)
    texts = (sentences(eval_docs) or list(eval_docs))[:max_sentences]
    metric, value = embedding_agreement(student, teacher, tokenizer, texts)
    result = {
        "metric": metric,
        "eval_sentences": len(texts),
        "teacher": {},
        "student": {metric: round(value, 4)},
    }
    result["retention"] = result["student"][metric]
    if sts_rows:
        teacher_rho, student_rho = (
            sts_spearman(teacher, tokenizer, sts_rows),
            sts_spearman(student, tokenizer, sts_rows),
        )
        result["teacher"]["sts_spearman"] = round(teacher_rho, 4)
        result["student"]["sts_spearman"] = round(student_rho, 4)
        result["metric"] = "sts_spearman"
        result["retention"] = round(student_rho / teacher_rho, 4) if teacher_rho > 0 else 0.0
    return result


def add_general_text(quality: dict, teacher, student, tokenizer, docs: Sequence[str], max_blocks: int = 32) -> dict:
    """Perplexity of teacher and student on general English (the built-in corpus), beside the user's held-out:
    a student distilled on one domain can keep its retention there and lose the rest (issue 13 §5)."""
    from compressor.data import lm_blocks

    blocks = lm_blocks(tokenizer, docs, 128, max_blocks=max_blocks, name="built-in corpus")
    teacher_ppl, student_ppl = perplexity(teacher, blocks), perplexity(student, blocks)
    quality["teacher"]["perplexity_general_english"] = round(teacher_ppl, 4)
    quality["student"]["perplexity_general_english"] = round(student_ppl, 4)
    quality["general_english"] = {
        "source": "built-in corpus (English prose from the Python standard library's docstrings), held-out part",
        "eval_tokens": int(blocks.numel()),
        "student_over_teacher": round(student_ppl / teacher_ppl, 4),
    }
    return quality


def classifier_quality(teacher, student, tokenizer, texts, labels, seq_len: int = 128) -> dict:
    """A classifier's quality: accuracy of teacher and student on labelled held-out texts (retention = their
    ratio), and the student's agreement with the teacher's predictions (the retention when there are no labels)."""
    from compressor.kd.classifier import classifier_scores

    labels = list(labels)[: len(texts)] if labels is not None else None
    scores = classifier_scores(student, teacher, tokenizer, texts, labels, seq_len)
    result = {"metric": "agreement", "eval_texts": len(texts), "teacher": {}, "student": {}}
    result["student"]["agreement"] = round(scores["agreement"], 4)
    result["retention"] = result["student"]["agreement"]
    if "accuracy" in scores:
        result["metric"] = "accuracy"
        result["teacher"]["accuracy"] = round(scores["teacher_accuracy"], 4)
        result["student"]["accuracy"] = round(scores["accuracy"], 4)
        result["retention"] = round(scores["accuracy"] / max(scores["teacher_accuracy"], 1e-9), 4)
    return result
