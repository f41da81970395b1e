"""The saving modules sit in a one-way import graph (issue 10: cycles broken, not hidden).

``archive`` (the file format) imports nothing from ``nn``; ``nn.model`` and
``callbacks`` import ``archive``; ``io`` (``load_model``) imports ``nn.model``. No
function reaches back with a late import.
"""
import ast
from pathlib import Path

import nanodl

PACKAGE = Path(nanodl.__file__).resolve().parent
SAVING = ("nanodl.io", "nanodl.archive", "nanodl.callbacks", "nanodl.nn.model")


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module, node):
    """The nanodl modules an import statement in ``module`` names (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("nanodl")]
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".")
        is_package = (PACKAGE.parent / Path(*package) / "__init__.py").exists()
        package = package if is_package else package[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    if not base.startswith("nanodl"):
        return []
    names = [f"{base}.{alias.name}" for alias in node.names]
    known = {module_name(path) for path in PACKAGE.rglob("*.py")}
    return [name for name in names if name in known] or [base]


def import_graph():
    """``{module: (top-level imports, imports inside functions)}`` over nanodl's sources."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top, late = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                (top if node in tree.body else late).update(resolve(module, node))
        graph[module] = (top, late)
    return graph


def reaches(graph, start, goal):
    seen, stack = set(), [start]
    while stack:
        module = stack.pop()
        for target in graph.get(module, (set(), set()))[0]:
            steps = {target}
            parent = target.rsplit(".", 1)[0]
            if start != parent and not start.startswith(parent + "."):  # importing nanodl.a.b
                steps.add(parent)  # runs nanodl.a first, unless it is already running (our own)
            for step in steps:
                if step == goal:
                    return True
                if step not in seen:
                    seen.add(step)
                    stack.append(step)
    return False


def test_saving_modules_are_not_in_an_import_cycle():
    graph = import_graph()
    assert "nanodl.archive" in graph["nanodl.nn.model"][0]
    for module in SAVING:
        assert not reaches(graph, module, module), f"{module} imports itself through a cycle"
    assert not reaches(graph, "nanodl.archive", "nanodl.nn")


def test_no_late_imports_between_the_saving_modules():
    graph = import_graph()
    late = {module: sorted(set(graph[module][1]) & set(SAVING)) for module in SAVING}
    assert not {module: names for module, names in late.items() if names}
