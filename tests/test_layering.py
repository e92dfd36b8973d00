"""The house's floors (DESIGN §2): imports only point down, no module imports itself back through others, and
no module outgrows one job (~400 lines)."""

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
TOP = {"compressor.pipeline", "compressor.recipe", "compressor.report", "compressor.api", "compressor.cli"}
TOP |= {"compressor.benchmark", "compressor.outputs", "compressor.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    if module.split(".")[0] in ("passes", "targets"):
        return 2
    return 3 if module in TOP else 1


def imports() -> nx.DiGraph:
    """Every import (top-level or inside a function) between the package's modules."""
    modules = {module_name(p): p for part in ("compressor", "passes", "targets") for p in (ROOT / part).rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]:
            block.body = []  # imports for type hints only never run
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph.add_edge(name, target)
    return graph


def test_imports_only_point_down():
    upward = [(a, b) for a, b in imports().edges if floor(b) > floor(a)]
    assert not upward, f"imports that point up a floor: {upward}"


def test_no_import_circles():
    graph = imports()
    packages = {n for n in graph if (ROOT / n.replace(".", "/") / "__init__.py").exists()}
    modules_only = graph.subgraph(n for n in graph if n not in packages)  # a package's __init__ re-exports
    cycles = list(nx.simple_cycles(modules_only))
    assert not cycles, f"import circles: {cycles[:5]}"


def test_no_module_over_about_400_lines():
    long = {
        module_name(p): n
        for part in ("compressor", "passes", "targets")
        for p in (ROOT / part).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 420
    }
    assert not long, f"modules over ~400 lines: {long}"


def test_the_face_and_the_report_name_no_pass():
    from passes import REGISTRY

    for face in ("compressor/api.py", "compressor/report.py"):
        code = ast.unparse(ast.parse((ROOT / face).read_text()))
        named = [name for name in REGISTRY if f"'{name}'" in code or f'"{name}"' in code]
        assert not named, f"{face} names passes {named}"
