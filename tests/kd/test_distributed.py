"""The same training under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo) follows the one-process loss
trajectory with the same global batch: |Δloss| ≤ 1e-5 per step (float32 all-reduce order is the only
difference)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from compressor.kd.train import IndexedBatches, TrainConfig, make_accelerator, train
    run_dir, per_process = Path(sys.argv[1]), int(sys.argv[2])
    config = TrainConfig(steps=12, lr=0.05, warmup_ratio=0.0)
    accelerator = make_accelerator(torch.device("cpu"), config)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    y = (x ** 2).sum(-1, keepdim=True)
    data = IndexedBatches(64, per_process, 0, lambda i: {"input_ids": x[i], "y": y[i]},
                          rank=accelerator.process_index, world=accelerator.num_processes)
    def loss_fn(m, b, step):
        return ((m(b["input_ids"]) - b["y"]) ** 2).mean(), {}
    train(model, data, loss_fn, config, run_dir=run_dir, accelerator=accelerator, show_progress=False)
""")


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_follow_the_one_process_trajectory(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "8"], env=env, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr
    launcher = shutil.which("accelerate") or "accelerate"
    # `--multi_gpu` selects accelerate's torch.distributed launcher; with no CUDA device it runs MULTI_CPU on
    # gloo (`--cpu` would start a single process).
    double = subprocess.run(
        [
            launcher,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(script),
            str(tmp_path / "two"),
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 12
    assert one[-1] < one[0]  # it trained
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a))
