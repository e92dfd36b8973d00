"""Family knowledge has one home: `compressor/ir/families/` (DESIGN §1.2).

Outside it no module of the package names a parameter or module attribute of a model family, or compares a
model_type or family name to a literal; a new llama-like family is one adapter class plus one registry line.
"""

import ast
import re
from pathlib import Path

import pytest
import torch

from compressor.ir import ModelIR, families
from compressor.ir.families.llama import LlamaAdapter
from tests.helpers import make_tiny, outputs, sample_inputs

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ("compressor", "passes", "targets")
FAMILY_NAMES = re.compile(
    r"\b(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|self_attn|embed_tokens|lm_head|block_sparse_moe"
    r"|shared_expert_gate|input_layernorm|post_attention_layernorm|norm_topk_prob|mlp_only_layers|decoder_sparse_step"
    r"|num_local_experts|moe_intermediate_size|intermediate_size|num_key_value_heads|hidden_act)\b"
)
# attribute reads of a family's modules (a call is an adapter accessor of the same name, which is fine)
FAMILY_ATTRIBUTES = re.compile(
    r"\.(?:model\.layers|mlp|experts|shared_expert|top_k|encoder\.layer|attention\.self|w[123])\b(?!\()|\.gate\("
)
LITERAL_TYPE_TESTS = re.compile(
    r"""model_type\s*(?:==|!=|\bin\b|\bnot in\b)|(?:==|!=)\s*\S*model_type\b|\bfamily\s*(?:==|!=)\s*["']"""
)
# Strings that look like family names but belong to another schema, with the reason.
ALLOWED = {
    ("compressor/onnx/genai.py", "num_key_value_heads"): "ONNX Runtime GenAI's genai_config.json key",
}


def code_without_docstrings(path: Path) -> str:
    """The module's code as the AST sees it: comments and docstrings gone, strings kept."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                body[0] = ast.Pass()
    return ast.unparse(tree)


def package_modules() -> list[Path]:
    files = [p for part in PACKAGE for p in sorted((ROOT / part).rglob("*.py"))]
    return [p for p in files if "ir/families" not in p.relative_to(ROOT).as_posix()]


def test_no_family_knowledge_outside_the_adapters():
    found = []
    for path in package_modules():
        where = path.relative_to(ROOT).as_posix()
        code = code_without_docstrings(path)
        for pattern in (FAMILY_NAMES, FAMILY_ATTRIBUTES, LITERAL_TYPE_TESTS):
            for match in pattern.finditer(code):
                if (where, match.group(0)) not in ALLOWED:
                    found.append(f"{where}: {match.group(0)!r}")
    assert not found, "family knowledge outside compressor/ir/families/:\n" + "\n".join(found)


def test_the_check_catches_a_leak(tmp_path):
    leaky = tmp_path / "leaky.py"
    leaky.write_text(
        '"""q_proj in a docstring is fine."""\n\n'
        'def f(layer, config):\n    return layer.mlp, config.model_type == "llama"\n'
    )
    code = code_without_docstrings(leaky)
    assert not FAMILY_NAMES.search(code)
    assert FAMILY_ATTRIBUTES.search(code) and LITERAL_TYPE_TESTS.search(code)


class Qwen2Adapter(LlamaAdapter):
    """A new family as a user would add one: a file with this class, and one registry line."""

    name = "qwen2-own"
    model_types = ("qwen2",)


@pytest.fixture
def own_family(monkeypatch):
    monkeypatch.setattr(families, "ADAPTERS", list(families.ADAPTERS))
    families.register_adapter(Qwen2Adapter())
    yield
    assert families.adapter_for("qwen2").name == "qwen2-own"


def test_a_new_llama_like_family_needs_one_class_and_one_registry_line(own_family, tmp_path):
    from passes.base import PassContext
    from passes.inherit import Inherit, InheritConfig
    from targets import get_target

    path = make_tiny("qwen2", tmp_path / "teacher")
    teacher = ModelIR.load(path)
    assert teacher.family == "qwen2-own" and teacher.task == "causal-lm"
    assert {g.kind for g in teacher.groups.values()} == {"hidden", "heads", "ffn"}
    student = (
        teacher.slice_group("heads", [2, 3])
        .slice_group("ffn", list(range(0, 64, 2)))
        .slice_group("hidden", list(range(24)))
    )
    ctx = PassContext.for_run(teacher, get_target("cpu"), tmp_path, show_progress=False)
    student = Inherit(InheritConfig(strategy="first", layers=2)).run(student, ctx)
    model = student.materialize()
    assert student.summary()["totals"]["params"] == sum(p.numel() for p in model.parameters())
    assert torch.isfinite(outputs(model, sample_inputs("qwen2"))).all()
    saved = student.save(tmp_path / "student")
    assert ModelIR.load(saved).family == "qwen2-own"
