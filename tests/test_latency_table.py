"""The measured-latency table behind `--budget latency=5ms` (issue 12 §1): reused from its cache on the same
machine and target, refused when either differs, and a least-squares fit that reproduces a linear law exactly."""

import json

import pytest

from compressor import latency_table
from compressor.budget import Budget, parse_budget
from compressor.errors import UserError
from compressor.ir import ModelIR
from compressor.latency_table import LatencyTable, TableMismatch, ensure_anchors, open_table, save_table
from passes.prune_shapes import Shape, ShapeCost, shape_of
from passes.search_latency import anchor_shapes, measure_shape
from passes.search_space import SearchSpace, shape_name
from targets import get_target


def linear_ms(shape: Shape, flops: ShapeCost) -> float:
    return 0.2 + 0.05 * shape.layers + 3.0 * flops(shape) / 1e6


def test_the_fit_reproduces_a_linear_latency_law_and_a_measured_shape_uses_its_measurement(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    flops, teacher = ShapeCost(ir, "flops"), shape_of(ir)
    table = LatencyTable({}, {}, {})
    shapes = [Shape(layers, teacher.heads, teacher.kv_heads, ffn, teacher.hidden) for layers in (1, 2, 3)
              for ffn in (8, teacher.ffn)]  # fmt: skip
    ensure_anchors(table, shapes, shape_name, flops, lambda s: (linear_ms(s, flops), 0.0))
    coef, error = table.fit()
    assert error < 1e-3 and coef[1] == pytest.approx(0.05, abs=1e-3)  # exact but for the 1e-4 ms rounding
    unseen = Shape(2, teacher.heads, teacher.kv_heads, 24, teacher.hidden)
    assert table.predict(shape_name(unseen), unseen.layers, flops(unseen)) == pytest.approx(
        linear_ms(unseen, flops), rel=1e-3
    )
    table.measured[shape_name(unseen)] = {"shape": unseen.as_dict(), "layers": 2, "flops": flops(unseen), "ms": 9.0}
    assert table.predict(shape_name(unseen), unseen.layers, flops(unseen)) == 9.0


def test_the_table_is_reused_from_its_cache_and_refused_for_another_machine_or_target(tiny_dirs, tmp_path, monkeypatch):
    ir = ModelIR.load(tiny_dirs["llama"])
    flops, cpu = ShapeCost(ir, "flops"), get_target("cpu")
    calls = []

    def measure(shape):
        calls.append(shape)
        return linear_ms(shape, flops), 0.0

    anchors = [shape_of(ir), Shape(1, *list(shape_of(ir).as_dict().values())[1:])]
    table, path, source = open_table(tmp_path, ir, cpu, shape_of(ir).as_dict())
    assert source.startswith("measured") and ensure_anchors(table, anchors, shape_name, flops, measure) == 2
    save_table(table, path)

    again, _, source = open_table(tmp_path, ir, cpu, shape_of(ir).as_dict())
    assert source.startswith("reused") and ensure_anchors(again, anchors, shape_name, flops, measure) == 0
    assert len(calls) == 2  # nothing measured twice

    moved = {**latency_table.machine_fingerprint(), "cpu": "some other processor"}
    with pytest.raises(TableMismatch, match="another machine .*cpu"):
        LatencyTable.load(path, moved, again.target, again.family)
    with pytest.raises(TableMismatch, match="another target .*threads"):
        LatencyTable.load(path, again.machine, {**again.target, "threads": 1}, again.family)
    monkeypatch.setattr(latency_table, "machine_fingerprint", lambda: moved)
    fresh, _, source = open_table(tmp_path, ir, cpu, shape_of(ir).as_dict())
    assert "refused" in source and fresh.measured == {}  # a foreign table is measured again, never used
    assert json.loads(path.read_text())["machine"] != moved  # ... and was not trusted for this run


def test_a_measurement_taken_while_the_machine_was_busy_is_used_but_never_cached(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    flops, cpu = ShapeCost(ir, "flops"), get_target("cpu")
    teacher = shape_of(ir)
    quiet, loaded = teacher, Shape(1, teacher.heads, teacher.kv_heads, teacher.ffn, teacher.hidden)
    table, path, _ = open_table(tmp_path, ir, cpu, teacher.as_dict())
    ensure_anchors(table, [quiet, loaded], shape_name, flops, lambda s: (1.0, 0.0 if s == quiet else 1.5))
    assert table.busy_rows() == [shape_name(loaded)] and len(table.measured) == 2  # this run still uses both
    save_table(table, path)
    again, _, _ = open_table(tmp_path, ir, cpu, teacher.as_dict())
    assert list(again.measured) == [shape_name(quiet)]  # the busy one will be measured again next time


def test_other_runnable_tasks_reads_the_kernel_counter():
    busy = latency_table.other_runnable_tasks(samples=3, interval=0.0)
    assert busy is None or busy >= 0.0


def test_the_table_is_measured_through_onnx_runtime(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    small = Shape(1, *list(shape_of(ir).as_dict().values())[1:])
    ms = measure_shape(ir, small, get_target("cpu"), tmp_path, runs=3)
    assert 0 < ms < 1000


def test_latency_budgets_parse_as_users_write_them_and_need_search():
    assert parse_budget("latency=5ms") == {"latency": 5.0}
    assert parse_budget("latency=800us") == {"latency": 0.8}
    assert parse_budget("latency=0.5s") == {"latency": 500.0}
    assert Budget(latency="2ms").latency == 2.0 and Budget(latency="2ms").kind == "latency"
    with pytest.raises(UserError, match="expected a time such as 5ms"):
        parse_budget("latency=fast")
    with pytest.raises(ValueError, match="not more than one"):
        Budget(latency=5, params=0.5)


def test_anchor_shapes_span_depth_and_width(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    teacher = shape_of(ir)
    anchors = anchor_shapes(SearchSpace(teacher))
    assert teacher in anchors and min(a.layers for a in anchors) == 1
    assert any(a.ffn < teacher.ffn and a.hidden < teacher.hidden for a in anchors)
