"""Every ```python block in docs/*.md (and README.md, if present) runs.

The blocks of one file run in order in one namespace, as a reader pasting them
into a REPL would; ``docs/internals.md``'s DOT listing must match what
``nd.viz.to_dot`` prints for the graph built there. A page that needs optional
packages names them in a ``<!-- requires: onnx onnxruntime -->`` comment and is
skipped where one is missing.
"""
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + ([ROOT / "README.md"] if (ROOT / "README.md").exists() else [])
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(path, language):
    return [body for lang, body in FENCE.findall(path.read_text(encoding="utf-8")) if lang == language]


def run_python_blocks(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a snippet that writes a file writes it here
    namespace = {"__name__": f"docs_{path.stem}"}
    with warnings.catch_warnings():  # one page, one session: a filter a page sets holds for it all
        warnings.simplefilter("ignore", RuntimeWarning)  # snippets may make NaNs on purpose
        for number, source in enumerate(blocks(path, "python"), 1):
            code = compile(source, f"{path.name} (python block {number})", "exec")
            exec(code, namespace)
    return namespace


REQUIRES = re.compile(r"<!--\s*requires:([^>]*)-->")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path, monkeypatch, tmp_path, capsys):
    if not blocks(path, "python"):
        pytest.skip(f"{path.name} has no python blocks")
    for match in REQUIRES.finditer(path.read_text(encoding="utf-8")):  # optional packages a page needs
        for package in match.group(1).split():
            pytest.importorskip(package)
    run_python_blocks(path, monkeypatch, tmp_path)


def test_internals_graph_listings_match_the_code(monkeypatch, tmp_path, capsys):
    path = ROOT / "docs" / "internals.md"
    namespace = run_python_blocks(path, monkeypatch, tmp_path)
    capsys.readouterr()
    nd = namespace["nd"]
    (dot,) = blocks(path, "dot")
    assert dot.strip() == nd.viz.to_dot(namespace["loss"]).strip(), \
        "docs/internals.md: the DOT listing is stale; paste the output of nd.viz.to_dot(loss)"
    tree = blocks(path, "text")[0]
    assert tree.strip() == nd.viz.graph_text(namespace["loss"]).strip()


def test_internals_links_point_at_real_files():
    path = ROOT / "docs" / "internals.md"
    targets = re.findall(r"\]\((\.\./[^)#]+)\)", path.read_text(encoding="utf-8"))
    assert targets
    missing = [t for t in targets if not (path.parent / t).exists()]
    assert not missing, f"broken links in {path.name}: {missing}"


def test_readme_points_only_at_files_in_the_repository():
    """The README names no file the repository lacks (it once pointed at a SPEC.md
    that only the team had)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\(([\w./-]+\.(?:md|py))\)", text)) | \
        set(re.findall(r"`([\w./-]+\.md)`", text))
    assert named, "the README links to its docs"
    missing = sorted(name for name in named if not (ROOT / name).exists())
    assert not missing, f"README.md names files that do not exist: {missing}"


def _source_lines():
    return {path: [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()]
            for path in (ROOT / "nanodl").rglob("*.py")}


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p, "py")], ids=lambda p: p.name)
def test_quoted_source_is_the_source(path):
    """A ```py block quotes nanodl's code: its lines stand, in order and together, in one
    module, so a page that walks through the code cannot drift from it."""
    sources = _source_lines()
    for number, quote in enumerate(blocks(path, "py"), 1):
        wanted = [line.rstrip() for line in quote.strip("\n").splitlines()]
        found = any(lines[i:i + len(wanted)] == wanted
                    for lines in sources.values() for i in range(len(lines) - len(wanted) + 1))
        assert found, f"{path.name}: quoted block {number} is not in nanodl/ any more:\n{quote}"


def test_every_page_a_docstring_points_to_exists():
    """Docstrings say what and why and point to the page that teaches the rest."""
    pointed = {name for lines in _source_lines().values() for line in lines
               for name in re.findall(r"docs/(\w+\.md)", line)}
    assert pointed and {name for name in pointed if not (ROOT / "docs" / name).exists()} == set()
