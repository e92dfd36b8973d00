import itertools

import pytest
import torch

from compressor.kd.train import train, warmup_cosine


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))
    assert values[-1] == pytest.approx(0.1, abs=1e-3)


def regression_problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def data():
        while True:
            yield {"input_ids": x, "y": y}

    return model, data()


def test_training_reduces_the_loss():
    model, data = regression_problem()
    result = train(
        model,
        data,
        lambda m, b: (((m(b["input_ids"]) - b["y"]) ** 2).mean(), {}),
        steps=200,
        lr=0.05,
        show_progress=False,
    )
    assert result.last_loss < 0.05 * result.first_loss
    assert result.tokens == 200 * 64 * 4


def test_non_finite_loss_stops_with_the_step_number():
    model, data = regression_problem()
    calls = iter(range(100))

    def loss_fn(m, b):
        step = next(calls)
        loss = ((m(b["input_ids"]) - b["y"]) ** 2).mean()
        return (loss * float("nan") if step == 3 else loss), {}

    with pytest.raises(FloatingPointError, match="step 3"):
        train(model, data, loss_fn, steps=10, lr=0.01, show_progress=False)
