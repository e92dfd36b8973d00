import numpy as np

from compressor.onnx.lm_gate import lm_gate_figures, lm_gate_verdict, mean_kl, next_token_nll


def random_logits(seed: int, shape=(2, 9, 50)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3


def test_kl_is_zero_at_equality_and_positive_otherwise():
    a, b = random_logits(0), random_logits(1)
    assert abs(mean_kl(a, a)) < 1e-12
    assert mean_kl(a, b) > 0.1
    assert abs(mean_kl(a, a + 7.0)) < 1e-9  # logits shifted by a constant are the same distribution


def test_uniform_logits_have_perplexity_equal_to_the_vocabulary():
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 9))
    assert np.isclose(np.exp(next_token_nll(np.zeros((2, 9, 50)), ids)), 50.0)


def test_nll_is_the_closed_form_for_a_two_token_vocabulary():
    logits = np.zeros((1, 2, 2))
    logits[0, 0] = [np.log(3.0), 0.0]  # p(token 0) = 3/4
    assert np.isclose(next_token_nll(logits, np.array([[1, 0]])), -np.log(0.75))


def test_verdict_passes_within_the_bound_and_fails_beyond_it():
    reference = random_logits(0)
    ids = np.concatenate([np.zeros((2, 1), dtype=np.int64), reference[:, :-1].argmax(-1)], axis=1)  # text it predicts
    same = lm_gate_figures(reference, reference, ids)
    assert same["perplexity_increase"] == 0 and same["top1_agreement"] == 1.0 and same["mean_kl"] == 0
    assert lm_gate_verdict(same, 0.03)[0]
    worse = lm_gate_figures(reference, reference * 0.2 + random_logits(5), ids)
    ok, sentence = lm_gate_verdict(worse, 0.03)
    assert worse["perplexity_increase"] > 0.03 and not ok and "> 3%" in sentence
