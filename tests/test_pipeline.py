"""The pass cache: a re-run skips finished passes; a corrupt entry is detected and recomputed."""

import tempfile
from pathlib import Path

import torch

from compressor.budget import Budget
from compressor.ir import ModelIR
from compressor.pipeline import PassCache, run_pipeline
from passes.distill import Distill, DistillConfig
from passes.inherit import Inherit, InheritConfig
from tests.helpers import pass_context


def context(teacher, scratch):
    ctx = pass_context(teacher, scratch)
    ctx.budget = Budget(layers=0.67)
    return ctx


def steps(distill_steps=3):
    return [
        Inherit(InheritConfig(strategy="uniform")),
        Distill(DistillConfig(train=dict(steps=distill_steps, batch_size=2, seq_len=32))),
    ]


def run(teacher, cache, tmp_path, distill_steps=3):
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        return run_pipeline(
            teacher, steps(distill_steps), context(teacher, Path(scratch)), tmp_path / "artifacts", cache
        )


def test_rerun_is_served_from_the_cache_with_identical_weights(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["llama"])
    cache = PassCache(tmp_path / "cache")
    first, records = run(teacher, cache, tmp_path)
    assert [r.cached for r in records] == [False, False]
    second, records = run(teacher, cache, tmp_path)
    assert [r.cached for r in records] == [True, True]
    for name in first.weights:
        assert torch.equal(first.weights[name], second.weights[name])
    assert second.lineage["passes"][-1]["pass"] == "distill"


def test_a_changed_config_misses_only_from_that_pass_on(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["llama"])
    cache = PassCache(tmp_path / "cache")
    run(teacher, cache, tmp_path)
    _, records = run(teacher, cache, tmp_path, distill_steps=4)
    assert [r.cached for r in records] == [True, False]


def test_changed_code_misses_the_cache(tiny_dirs, tmp_path, monkeypatch):
    import compressor.pipeline as pipeline

    teacher = ModelIR.load(tiny_dirs["llama"])
    cache = PassCache(tmp_path / "cache")
    run(teacher, cache, tmp_path)
    assert len(pipeline.code_fingerprint()) == 16
    monkeypatch.setattr(pipeline, "code_fingerprint", lambda: "another-release")  # the code that made it changed
    _, records = run(teacher, cache, tmp_path)
    assert [r.cached for r in records] == [False, False]


def test_corrupt_entry_is_recomputed(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["llama"])
    cache = PassCache(tmp_path / "cache")
    _, records = run(teacher, cache, tmp_path)
    weights = next(cache.entry(records[1].key).rglob("model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside a tensor: header still parses, content is wrong
    weights.write_bytes(bytes(data))
    _, records = run(teacher, cache, tmp_path)
    assert records[0].cached and not records[1].cached
    assert records[1].cache_note == "corrupt cache entry: recomputed"
