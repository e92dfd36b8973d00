import math

import torch

from compressor.evaluate import perplexity, rank, spearman
from compressor.ir import ModelIR


def test_spearman_of_monotone_maps_and_reversal():
    x = torch.randn(50)
    assert abs(spearman(x, x.exp()) - 1) < 1e-12
    assert abs(spearman(x, -x) + 1) < 1e-12


def test_ranks_average_ties():
    assert rank(torch.tensor([10.0, 20.0, 20.0, 30.0])).tolist() == [1.0, 2.5, 2.5, 4.0]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    model = ir.set_weights({"lm_head.weight": torch.zeros_like(ir.weights["lm_head.weight"])}).materialize()
    blocks = torch.randint(0, 512, (3, 20))
    assert math.isclose(perplexity(model, blocks), 512, rel_tol=1e-4)


def test_similarity_correlation_is_one_for_a_rotated_scaled_copy_and_lower_for_noise():
    from compressor.evaluate import similarity_correlation

    torch.manual_seed(0)
    teacher = torch.randn(20, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    assert abs(similarity_correlation(2.0 * teacher @ rotation, teacher) - 1.0) < 1e-9
    assert similarity_correlation(teacher[:, :8], teacher) < 1.0  # a width cut keeps only part of the structure
    assert abs(similarity_correlation(torch.randn(20, 4), teacher)) < 0.5


def test_embedding_agreement_with_the_teachers_embeddings_given_equals_computing_them(tiny_dirs):
    from transformers import AutoModel, AutoTokenizer

    from compressor.evaluate import embedding_agreement, sentence_embeddings

    teacher = AutoModel.from_pretrained(tiny_dirs["bert"]).eval()
    torch.manual_seed(1)
    student = AutoModel.from_pretrained(tiny_dirs["bert"]).eval()
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["bert"])
    texts = ["a fine film", "dull and long", "it works"]
    computed = embedding_agreement(student, teacher, tokenizer, texts, 16)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    given = embedding_agreement(
        student, teacher, tokenizer, texts, 16, sentence_embeddings(teacher, tokenizer, texts, 16)
    )
    assert len(calls) == 1  # the given embeddings: the teacher ran only to make them
    assert given[0] == computed[0] == "embedding_cosine" and math.isclose(given[1], computed[1], rel_tol=1e-6)
    assert computed[1] < 1.0 and embedding_agreement(teacher, teacher, tokenizer, texts, 16)[1] > 0.9999
