"""Faults through the real command (issue 9 §5–7): SIGKILLs at random steps, a truncated checkpoint and two
identical runs sharing one cache; the final weights equal an uninterrupted run's and nothing is left behind."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from safetensors.torch import load_file

from tests.helpers import DATA

# Runs `compress ARGS...` in a fresh process that SIGKILLs itself inside optimizer step KILL_AT (+1) of this
# process (-1: never), mid-run and not only at checkpoint boundaries.
KILLABLE = textwrap.dedent("""
    import os, signal, sys
    import torch
    kill_at = int(sys.argv[1])
    original = torch.optim.AdamW.step
    calls = {"n": 0}
    def step(self, *args, **kwargs):
        calls["n"] += 1
        if 0 <= kill_at < calls["n"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    torch.optim.AdamW.step = step
    from compressor.cli import main
    sys.exit(main(sys.argv[2:]))
""")

STEPS = 16
DISTILL = [
    "--set", f"train.steps={STEPS}", "--set", "train.checkpoint_every=2", "--set", "train.batch_size=4",
    "--set", "train.seq_len=32",
    "--data", str(DATA / "tinystories_dev.txt"), "--quiet",
]  # fmt: skip


def launch(script: Path, cache: Path, kill_at: int, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMPRESSOR_CACHE": str(cache), "PYTHONPATH": os.getcwd()}
    return subprocess.run(
        [sys.executable, str(script), str(kill_at), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def checkpoints(cache: Path) -> list[Path]:
    return sorted(cache.glob("runs/*/checkpoints/step-*"))


def test_three_kills_and_a_truncated_checkpoint_end_with_the_uninterrupted_weights(tmp_path, tiny_dirs):
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    teacher = tiny_dirs["llama"]
    whole = launch(
        script, tmp_path / "cache-whole", -1, "pass", "distill", "--in", teacher, "--out", tmp_path / "whole", *DISTILL
    )
    assert whole.returncode == 0, whole.stderr

    cache, out = tmp_path / "cache", tmp_path / "killed"
    rng = random.Random(9)
    killed_pids = []
    for kill in range(3):
        kill_at = rng.randint(3, 5)
        run = launch(script, cache, kill_at, "pass", "distill", "--in", teacher, "--out", out, *DISTILL)
        assert run.returncode == -signal.SIGKILL, (kill, kill_at, run.stderr)
        assert not out.exists()
        killed_pids += [int(p.name.split("-")[1]) for p in tmp_path.glob(f".{out.name}.partial-*")]
        if kill == 1:  # damage the newest checkpoint: the next run must fall back to the one before it
            newest = checkpoints(cache)[-1] / "model.safetensors"
            newest.write_bytes(newest.read_bytes()[:-64])
    assert len(checkpoints(cache)) >= 1

    final = launch(script, cache, -1, "pass", "distill", "--in", teacher, "--out", out, *DISTILL)
    assert final.returncode == 0, final.stderr
    assert "resumed from" in final.stderr
    expected, got = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] - got[name]).abs().max() <= 1e-6, name

    # nothing left behind: no partial output of a killed run, no scratch folder of a dead process, no run folder
    assert not list(tmp_path.glob(f".{out.name}.*"))
    assert killed_pids and not [
        p for pid in killed_pids for p in Path(tempfile.gettempdir()).glob(f"compressor-{pid}-*")
    ]
    assert not list(cache.glob("runs/*"))
    # every step is in the metrics once, though steps after a checkpoint were run twice
    (metrics,) = cache.rglob("metrics.jsonl")
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))


def test_a_truncated_checkpoint_is_reported_when_the_run_resumes(tmp_path, tiny_dirs):
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    cache, out = tmp_path / "cache", tmp_path / "out"
    run = launch(script, cache, 7, "pass", "distill", "--in", tiny_dirs["llama"], "--out", out, *DISTILL)
    assert run.returncode == -signal.SIGKILL
    newest = checkpoints(cache)[-1]
    (newest / "optimizer.pt").write_bytes(b"")
    final = launch(script, cache, -1, "pass", "distill", "--in", tiny_dirs["llama"], "--out", out, *DISTILL)
    assert final.returncode == 0, final.stderr
    assert f"checkpoint {newest} is unusable" in " ".join(final.stderr.split())


def test_two_identical_runs_sharing_a_cache_both_succeed_and_compute_once(tmp_path, tiny_dirs):
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    cache = tmp_path / "cache"
    env = {**os.environ, "COMPRESSOR_CACHE": str(cache), "PYTHONPATH": os.getcwd()}
    args = ["pass", "distill", "--in", str(tiny_dirs["llama"]), *DISTILL[:-1]]
    args[args.index(f"train.steps={STEPS}")] = "train.steps=60"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "-1", *args, "--out", str(tmp_path / f"out{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for code, _, err in results:
        assert code == 0, err
    cached = [json.loads((tmp_path / f"out{i}" / "pass.json").read_text())["cached"] for i in range(2)]
    assert sorted(cached) == [False, True]
    first, second = (load_file(tmp_path / f"out{i}" / "model.safetensors") for i in range(2))
    assert all((first[n] - second[n]).abs().max() == 0 for n in first)
    shutil.rmtree(cache, ignore_errors=True)
