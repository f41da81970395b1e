"""The house's walls, as tests (issue 18): the core never imports its wings, no module
imports itself through a cycle (imports inside functions count), and every folder keeps
within the line budget stated here.

The wall is checked by import-linter (its contract is in ``pyproject.toml``); the cycles
by this file's own walk over the sources, so a compiled module (``backend/_linear``)
counts as the module it is, not as its package.
"""
import importlib.machinery

import pytest

import nanodl
from test_imports import PACKAGE, module_name, resolve

ROOT = PACKAGE.parent

# Line budgets (lines of Python, docstrings and comments included), per folder of nanodl/;
# 'nanodl' is the top-level modules alone. Set a little above what each folder holds (in
# parentheses) after the trim that ended issue 18's round (2026-12-07): two passes that folded
# repeated code and cut docstrings to what and why, 18,870 -> 16,310 lines, with every
# feature, check and message kept. Raising one is a decision to write down in its commit.
# Before the round the package was 14,082 lines; the same files' successors (the package less
# the round's new feature modules: per-sample gradients, curvature, the new ops, L-BFGS, the
# LR finder, nested state, the profiler and diagnosis) hold about 13,600.
BUDGETS = {
    "nanodl": 3050,                 # (2,992) tensor, functional, losses, data, files, wings
    "nanodl/autograd": 1520,        # (1,491) the walk, nd.grad, functional, curvature, per-sample
    "nanodl/backend": 1850,         # (1,815) the kernel contract, its three tables, threads
    "nanodl/callbacks": 700,        # (680)
    "nanodl/capture": 730,          # (708)
    "nanodl/datasets": 220,         # (210)
    "nanodl/diagnostics": 990,      # (968) profiler, costs, summary, diagnose, curves
    "nanodl/distributed": 700,      # (676)
    "nanodl/gradcheck": 950,        # (924)
    "nanodl/nn": 2400,              # (2,363)
    "nanodl/ops": 1860,             # (1,832)
    "nanodl/optim": 1090,           # (1,062)
    "nanodl/sklearn": 610,          # (589)
}
TOTAL_BUDGET = 16500
MODULE_LIMIT = 500
LINE_LIMIT = 110  # characters: a budget is met by saying less, never by longer lines


def python_files():
    return sorted(PACKAGE.rglob("*.py"))


def lines(path):
    return len(path.read_text(encoding="utf-8").splitlines())


def test_the_core_never_imports_the_wings(monkeypatch):
    lint = pytest.importorskip("importlinter.cli")
    monkeypatch.chdir(ROOT)  # the contract lives in pyproject.toml
    assert lint.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_the_wall_contract_names_every_core_module():
    # a new top-level module or package must be placed on one side of the wall
    import tomllib
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    placed = set(contract["source_modules"]) | set(contract["forbidden_modules"])
    top = {f"nanodl.{path.stem}" for path in PACKAGE.glob("*.py") if not path.stem.startswith("__")} | \
          {f"nanodl.{path.parent.name}" for path in PACKAGE.glob("*/__init__.py")}
    assert top - placed == set()


def _import_graph():
    """``{module: modules it imports}``, top-level and function-level imports alike."""
    import ast
    compiled = {f"{module_name(path.parent / '__init__.py')}.{path.name.split('.')[0]}"
                for suffix in importlib.machinery.EXTENSION_SUFFIXES for path in PACKAGE.rglob("*" + suffix)}
    graph = {}
    for path in python_files():
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in resolve(module, node):
                    if not any(name == c or name.startswith(c + ".") for c in compiled):
                        imported.add(name)
                if isinstance(node, ast.ImportFrom):  # `from . import _linear`: the compiled module
                    base = resolve(module, node)
                    imported -= {b for b in base
                                 if any(f"{b}.{alias.name}" in compiled for alias in node.names)}
        graph[module] = imported - {module}
    return graph


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_module_imports_itself_through_a_cycle():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_folder_keeps_its_line_budget():
    totals = {}
    for path in python_files():
        folder = path.parent.relative_to(ROOT).as_posix()
        top = "/".join(folder.split("/")[:2])
        totals[top] = totals.get(top, 0) + lines(path)
    over = {folder: (total, BUDGETS.get(folder)) for folder, total in totals.items()
            if total > BUDGETS.get(folder, 0)}
    assert not over, f"over budget (lines, budget): {over}"
    assert sum(totals.values()) <= TOTAL_BUDGET, f"nanodl/ holds {sum(totals.values())} lines"


def test_no_module_is_over_the_module_limit():
    big = {str(path.relative_to(ROOT)): lines(path) for path in python_files() if lines(path) > MODULE_LIMIT}
    assert not big, f"modules over {MODULE_LIMIT} lines: {big}"


def test_no_line_is_over_the_line_limit():
    long = [f"{path.relative_to(ROOT)}:{number}" for path in python_files()
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > LINE_LIMIT]
    assert not long, f"lines over {LINE_LIMIT} characters: {long}"


def test_the_package_map_names_every_room():
    """nanodl/README.md, the page a learner opening ``nanodl/`` sees, places every module
    and package, so the map cannot fall behind the house."""
    text = (PACKAGE / "README.md").read_text(encoding="utf-8")
    entries = {path.name + ("/" if path.is_dir() else "") for path in PACKAGE.iterdir()
               if (path.suffix == ".py" or (path / "__init__.py").exists()) and path.name != "__init__.py"}
    assert {entry for entry in entries if f"`{entry}`" not in text} == set()
