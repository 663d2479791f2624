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


ALLOWED = {  # package -> the nnexp packages it may import (besides itself); DESIGN.md section 3
    "nnexp.config": {"nnexp.data", "nnexp.engine"},
    "nnexp.data": {"nnexp.config.errors", "nnexp.config.paths"},
    "nnexp.engine": set(),
    "nnexp.train": {"nnexp.engine", "nnexp.config.names", "nnexp.config.errors"},
    "nnexp.stats": {"nnexp.config.errors"},
    "nnexp.tracking": {"nnexp.config"},
    "nnexp.runner": {"nnexp.train", "nnexp.engine", "nnexp.config", "nnexp.data", "nnexp.tracking"},
    "nnexp.search": {"nnexp.runner", "nnexp.config", "nnexp.tracking", "nnexp.stats"},
    "nnexp.report": {"nnexp.runner", "nnexp.config", "nnexp.tracking", "nnexp.data", "nnexp.engine", "nnexp.train",
                     "nnexp.stats"},
    "nnexp.bench": {"nnexp.runner", "nnexp.search", "nnexp.report", "nnexp.config", "nnexp.data", "nnexp.engine",
                    "nnexp.train", "nnexp.stats", "nnexp.tracking"},
    "nnexp.cli": {"nnexp.runner", "nnexp.search", "nnexp.report", "nnexp.config", "nnexp.tracking",
                  "hydra_plugins"},
    "hydra_plugins": {"nnexp.runner", "nnexp.cli.callbacks", "nnexp.config"},
}


def is_shim(mod: str) -> bool:
    """A ``python -m`` entry (``nnexp/run.py``, ``nnexp/report/__main__.py``): it only calls a command."""
    return mod.endswith(".__main__") or (mod.count(".") == 1 and mod.startswith("nnexp."))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    g = graph()
    for mod, deps in g.items():
        if (mod == layer or mod.startswith(layer + ".")) and not is_shim(mod):
            bad = {d for d in deps if not any(d == a or d.startswith(a + ".") for a in ALLOWED[layer] | {layer})}
            assert not bad, f"{mod} imports {sorted(bad)}"


def test_every_module_lives_in_a_package_and_the_top_level_holds_only_shims():
    top = [p for p in (SRC / "nnexp").glob("*.py") if p.name != "__init__.py"]
    assert sorted(p.stem for p in top) == ["run", "study", "sync"]
    for path in top:
        assert len(path.read_text().splitlines()) <= 40, f"{path.name} is more than a shim"
        deps = imports_of(path, set(modules()))
        assert deps and all(d.startswith("nnexp.cli.") for d in deps), f"{path.name} imports {sorted(deps)}"
    assert len((SRC / "nnexp" / "__init__.py").read_text().splitlines()) <= 10


def third_party_importers(library: str) -> set[str]:
    """The nnexp modules that import ``library`` anywhere in their code (functions included)."""
    out = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == library or n.startswith(library + ".") for n in names):
                out.add(name)
    return out


@pytest.mark.parametrize("library, home", [("matplotlib", "nnexp.report"), ("mlflow", "nnexp.tracking"),
                                           ("optuna", "nnexp.search")])
def test_each_framework_is_imported_by_its_one_package(library, home):
    importers = third_party_importers(library)
    assert importers, f"nobody imports {library}: the check would pass on anything"
    assert {m for m in importers if not m.startswith(home + ".") and m != home} == set()


def test_the_framework_check_sees_imports_inside_functions(tmp_path):
    assert "nnexp.search.trials" in third_party_importers("optuna")  # imported inside functions only


def users_of(name: str) -> set[str]:
    """The nnexp modules whose code names ``name`` (a call, an attribute or an import)."""
    out = set()
    for mod, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Name) and node.id == name) or \
                    (isinstance(node, ast.Attribute) and node.attr == name) or \
                    (isinstance(node, ast.alias) and node.name == name):
                out.add(mod)
    return out


def outside(users: set[str], *homes: str) -> set[str]:
    return {m for m in users if not any(m == h or m.startswith(h + ".") for h in homes)}


def test_the_runner_is_the_only_executor():
    """Runs are tracked only by the runner (the report and the study hand it jobs), populations are
    formed only by its grouping rule, and only the runner and the benchmark (which times the
    engine, untracked) call the training loop for populations."""
    assert users_of("RunTracker") and outside(users_of("RunTracker"), "nnexp.runner", "nnexp.tracking") == set()
    assert outside(users_of("group_key"), "nnexp.runner") == set()
    assert outside(users_of("fit_population"), "nnexp.train", "nnexp.runner", "nnexp.bench") == set()
    assert "nnexp.search.trials" in users_of("plan_groups")  # the study's trials use the one rule


def test_the_population_caps_are_written_once():
    literals = {mod for mod, path in modules().items() for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Constant) and node.value == 4096}
    assert literals == {"nnexp.runner.groups"}
