"""The module map holds: no import cycle among nnexp's modules (imports inside functions
included), and each layer imports only the layers below it (DESIGN.md section 3)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for root in ("nnexp", "hydra_plugins") for p in (SRC / root).rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every nnexp module this file imports, at any depth of its code (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle_among_the_packages_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


ALLOWED = {  # layer -> the nnexp layers it may import (besides itself)
    "nnexp.engine": {"nnexp.engine"},
    "nnexp.train": {"nnexp.engine", "nnexp.names"},
    "nnexp.runner": {"nnexp.runner", "nnexp.train", "nnexp.engine", "nnexp.config", "nnexp.data", "nnexp.errors",
                     "nnexp.names", "nnexp.tracking"},
    "nnexp.search": {"nnexp.runner", "nnexp.config", "nnexp.errors", "nnexp.names", "nnexp.tracking",
                     "nnexp.figures", "nnexp.storelock", "nnexp.stats"},
    "nnexp.report": {"nnexp.runner", "nnexp.config", "nnexp.errors", "nnexp.names", "nnexp.tracking",
                     "nnexp.figures", "nnexp.baselines", "nnexp.data", "nnexp.engine", "nnexp.train",
                     "nnexp.stats"},
    "hydra_plugins": {"nnexp.runner", "nnexp.callbacks", "nnexp.errors", "nnexp.names"},
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    g = graph()
    for mod, deps in g.items():
        if mod == layer or mod.startswith(layer + "."):
            bad = {d for d in deps if not any(d == a or d.startswith(a + ".") for a in ALLOWED[layer] | {layer})}
            assert not bad, f"{mod} imports {sorted(bad)}"
