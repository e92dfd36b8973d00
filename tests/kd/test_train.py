import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from compressor.kd.step_time import measure_step_seconds
from compressor.kd.train import IndexedBatches, TrainConfig, train, warmup_cosine
from tests.helpers import FakeClock


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))
    assert values[-1] == pytest.approx(0.1, abs=1e-3)


def test_indexed_batches_shard_one_global_batch_across_processes():
    rows = torch.arange(40)
    single = IndexedBatches(40, 8, seed=3, make_batch=lambda i: {"input_ids": rows[i]})
    shards = [
        IndexedBatches(40, 4, seed=3, make_batch=lambda i: {"input_ids": rows[i]}, rank=r, world=2) for r in range(2)
    ]
    for step in range(12):  # crosses epoch boundaries
        together = torch.cat([s(step)["input_ids"] for s in shards])
        assert torch.equal(together, single(step)["input_ids"])


def regression_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    data = IndexedBatches(64, 16, 0, lambda i: {"input_ids": x[i], "y": y[i]})
    return model, data


def mse(model, batch, step):
    return ((model(batch["input_ids"]) - batch["y"]) ** 2).mean(), {}


def test_training_reduces_the_loss(tmp_path):
    model, data = regression_problem()
    result = train(model, data, mse, TrainConfig(steps=150, lr=0.02), run_dir=tmp_path, show_progress=False)
    assert result.last_loss < 0.1 * result.first_loss
    assert result.tokens == 150 * 16 * 4
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 150


def test_gradient_accumulation_matches_one_big_batch():
    results = []
    for batch, accumulation in ((16, 1), (8, 2)):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        x, y = torch.randn(64, 4), torch.randn(64, 1)
        data = IndexedBatches(64, batch, 0, lambda i, x=x, y=y: {"input_ids": x[i], "y": y[i]})
        train(model, data, mse, TrainConfig(steps=5, lr=0.01, grad_accumulation=accumulation), show_progress=False)
        results.append(model.weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_non_finite_loss_stops_with_the_step_number():
    model, data = regression_problem()

    def loss_fn(m, b, step):
        loss, parts = mse(m, b, step)
        return (loss * float("nan") if step == 3 else loss), parts

    with pytest.raises(FloatingPointError, match="at step 3"):
        train(model, data, loss_fn, TrainConfig(steps=10, lr=0.01), show_progress=False)


RESUMABLE = textwrap.dedent("""
    import os, signal, sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from compressor.kd.schedules import TAIDState
    from compressor.kd.train import IndexedBatches, TrainConfig, train
    run_dir, out, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Dropout(0.2), torch.nn.Linear(32, 1))
    x = torch.randn(96, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(-1, keepdim=True)
    data = IndexedBatches(96, 16, 0, lambda i: {"input_ids": x[i], "y": y[i]})
    taid = TAIDState(alpha=0.05)
    def loss_fn(m, b, step):
        loss = ((m(b["input_ids"]) - b["y"]) ** 2).mean() * (1 + taid.t)
        taid.update(float(loss), step, 20)
        return loss, {"t": taid.t}
    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    train(model, data, loss_fn, TrainConfig(steps=20, lr=0.01, checkpoint_every=4), run_dir=run_dir,
          extra_state=taid, show_progress=False, on_step=on_step)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
""")


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "resumable.py"
    script.write_text(RESUMABLE)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def launch(run_dir, out, kill_at):
        return subprocess.run(
            [sys.executable, str(script), str(run_dir), str(out), str(kill_at)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    whole = launch(tmp_path / "whole", tmp_path / "whole.safetensors", -1)
    assert whole.returncode == 0, whole.stderr
    killed = launch(tmp_path / "killed", tmp_path / "killed.safetensors", 11)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.safetensors").exists()
    resumed = launch(tmp_path / "killed", tmp_path / "killed.safetensors", -1)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = load_file(tmp_path / "whole.safetensors"), load_file(tmp_path / "killed.safetensors")
    for name in expected:
        assert (expected[name] - got[name]).abs().max() <= 1e-6, name


def test_a_damaged_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
    from compressor.kd.checkpoints import latest_checkpoint

    model, data = regression_problem()
    train(model, data, mse, TrainConfig(steps=9, lr=0.01, checkpoint_every=2), run_dir=tmp_path, show_progress=False)
    folders = sorted((tmp_path / "checkpoints").iterdir())
    assert [f.name for f in folders] == ["step-00000006", "step-00000008"]
    weights = folders[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    said = []
    assert latest_checkpoint(tmp_path, say=said.append) == folders[0]
    assert not folders[-1].exists() and "does not match its checksum" in said[0]
    (folders[0] / "manifest.json").unlink()
    assert latest_checkpoint(tmp_path, say=said.append) is None and "no readable manifest" in said[1]


def test_metrics_after_the_resumed_step_are_dropped(tmp_path):
    from compressor.kd.checkpoints import truncate_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(f'{{"step": {i}, "loss": 1.0}}\n' for i in range(1, 8)) + '{"step": 8, "lo')
    truncate_metrics(metrics, 4)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def test_the_step_time_is_the_probes_time_per_token_times_the_mean_batch_length(monkeypatch):
    """Batches padded to different lengths: the probes are short (10 tokens), most of the run's batches long (20 or
    30); a step costs 1 ms a token, so a step is 1 ms × the mean length (whole-batch timings said 10 ms)."""
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    model = torch.nn.Linear(4, 4)

    def batches(index):
        length = 2 if index < 6 else (4 if index % 2 else 6)  # 6 probes of 10 tokens, then 20 or 30
        return {"input_ids": torch.zeros(5, length, dtype=torch.long)}

    def loss_fn(m, batch, step):
        clock.now += 0.001 * batch["input_ids"].numel()
        return m(torch.ones(1, 4)).sum(), {}

    accelerator = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext)
    seconds, tokens = measure_step_seconds(model, batches, loss_fn, accelerator, length_sample=66)
    assert tokens == round((6 * 10 + 30 * 20 + 30 * 30) / 66) == 24  # the sampled batches' mean, padding included
    assert seconds == pytest.approx(0.001 * tokens)  # the update is free on this clock
    assert model.weight.grad is None  # gradients cleared


def test_the_step_time_is_the_median_probe_not_a_lucky_or_unlucky_one(monkeypatch):
    """Probe timings on a busy 2-core machine: a slow first call, then mostly 1 ms a token with a few calls 30 %
    fast and a few 1.8× slow. Neither tail moves the estimate."""
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    model = torch.nn.Linear(4, 4)
    per_token = iter([0.005] + [0.001, 0.0007, 0.001, 0.0018, 0.001, 0.0007] * 4)

    def loss_fn(m, batch, step):
        clock.now += next(per_token) * batch["input_ids"].numel()
        return m(torch.ones(1, 4)).sum(), {}

    batches = lambda index: {"input_ids": torch.zeros(2, 5, dtype=torch.long)}  # noqa: E731
    accelerator = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext)
    seconds, tokens = measure_step_seconds(model, batches, loss_fn, accelerator, probes=19)
    assert tokens == 10 and seconds == pytest.approx(0.001 * 10)  # the lower quartile would have said 0.007


def test_a_replan_at_the_end_of_warmup_trains_as_that_length_planned_from_the_start(monkeypatch, tmp_path):
    """Steps take 1 s on this clock; the hook, asked once when warmup ends, shortens 100 steps to 50. The LR
    curve has no jump (the decay starts there) and the weights equal those of a 50-step run with the same warmup."""
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)

    def timed_mse(model, batch, step):
        clock.now += 1.0
        return mse(model, batch, step)

    asked = []

    def replan(done, seconds):
        asked.append((done, seconds))
        return 50

    model, data = regression_problem()
    config = TrainConfig(steps=100, lr=0.02)
    result = train(model, data, timed_mse, config, run_dir=tmp_path, show_progress=False, replan=replan)
    assert asked == [(10, 10.0)] and result.steps_done == result.steps == 50 and config.steps == 100
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.02 * warmup_cosine(step, 50, 10) for step in range(1, 51)])
    planned, data = regression_problem()
    train(planned, data, timed_mse, TrainConfig(steps=50, lr=0.02, warmup_steps=10), show_progress=False)
    pairs = zip(model.state_dict().values(), planned.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
