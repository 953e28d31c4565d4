"""The package's layering, read off its source: no import cycle between modules (function-level imports
included: a lazy import hides a cycle, it does not remove it) and no import that points up a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

#: Layer -> layers it must never import (docs/ARCHITECTURE.md, "Layers").
FORBIDDEN = {
    "models": {"training", "inference", "serving", "checkpoint", "importers", "evaluation", "cli"},
    "text": {"models", "training", "inference", "serving", "checkpoint", "importers", "evaluation", "cli"},
    "data": {"models", "text", "training", "inference", "serving", "checkpoint", "importers", "evaluation", "cli"},
    "checkpoint": {"importers", "training", "inference", "serving", "evaluation", "cli"},
    "importers": {"training", "inference", "serving", "evaluation", "cli"},
    "inference": {"training", "evaluation", "serving", "cli"},
    "evaluation": {"training", "serving", "cli"},
    "serving": {"training", "cli"},
    "training": {"serving", "cli"},
    "rendering": {"models", "text", "training", "inference", "serving", "checkpoint", "importers", "evaluation"},
    **{
        leaf: {
            "models",
            "text",
            "data",
            "training",
            "inference",
            "serving",
            "checkpoint",
            "importers",
            "evaluation",
            "cli",
        }
        for leaf in ("errors", "files", "foreign", "recipes", "memory", "backend_record")
    },
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (annotations only: no import at run time)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """{module: lvseg modules it imports}, every import statement of the module counted."""
    files = {_module_name(path): path for path in (SOURCE / "lvseg").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        skipped = _type_checking_lines(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
                for alias in node.names:
                    full = f"{module}.{alias.name}"
                    targets.add(full if full in files else module)
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lvseg"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "lvseg.inference.exported" in graph["lvseg.inference.loading"]  # imported inside load_model
    assert "lvseg.models" in graph["lvseg.checkpoint"]


def test_no_import_cycles() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_points_up_a_layer() -> None:
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) in FORBIDDEN.get(_layer(module), set())
    )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("cycle", [{"a": {"b"}, "b": {"a"}}])
def test_a_cycle_would_be_found(cycle: dict[str, set[str]]) -> None:
    assert _cycles(cycle) == [["a", "b"]]
