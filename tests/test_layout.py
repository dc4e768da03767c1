"""The package's layers: no import cycle, and a core that knows no architecture.

The imports are read from the source (``ast``), module by module, including imports inside
functions: a cycle hidden in a function body is still a cycle of the design. Imports under
``if TYPE_CHECKING:`` never run and only name types for annotations; they are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "icl_lib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module of icl_lib and the icl_lib modules it imports (subpackage imports resolved to
    the modules they name, ``from . import x`` to ``package.x``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
            block.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in modules else target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _external(name: str) -> set[str]:
    path = PACKAGE.parent / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            tops.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
    return tops


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or ``None``."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done:
                found = visit(target, path + [target])
                if found:
                    return found
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = _find_cycle(_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_core_imports_no_architecture_and_no_transformers():
    graph = _imports()
    for module, targets in graph.items():
        if module.startswith("icl_lib.core"):
            outside = sorted(t for t in targets if not t.startswith("icl_lib.core"))
            assert not outside, f"{module} imports {outside}: the core must see models through core.architecture"
            assert "transformers" not in _external(module), f"{module} imports transformers"


def test_layers_depend_downwards_only():
    """core <- architectures <- experiments <- benchmarks (an arrow: may be imported by)."""
    rank = {"core": 0, "architectures": 1, "experiments": 2, "benchmarks": 3}
    for module, targets in _imports().items():
        parts = module.split(".")
        if len(parts) < 3:
            continue
        for target in targets:
            target_parts = target.split(".")
            if len(target_parts) >= 3 and target_parts[1] in rank:
                assert rank[target_parts[1]] <= rank[parts[1]], f"{module} imports {target}, a layer above it"
