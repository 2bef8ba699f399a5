"""The package's shape, checked from the source: import layers, no import cycles, short functions.

The layer table is read from ``docs/architecture.md`` ("Import layers"), so the rule is written once.
Every import counts: module level, inside functions, ``from x import y``, relative imports, the
lazy exports of a package ``__init__`` (``sipe._lazy.lazy_exports``), and ``importlib.import_module("sipe.x")``
/ ``importlib.util.find_spec("sipe.x")`` with a literal name.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "sipe"
DOC = REPO / "docs" / "architecture.md"

MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 450

# Exceptions, each with its reason. Keep them empty: a new entry needs a reason a reviewer accepts.
# (importer module, imported module) -> reason, for an import against the layers.
ALLOWED_IMPORTS: dict[tuple[str, str], str] = {}
# "sipe.module:Qualified.name" -> reason, for a function over MAX_FUNCTION_LINES.
LONG_FUNCTIONS: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name (the longest prefix that is a module of the package)
    file: Path
    line: int

    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module under ``src/sipe``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, modules: dict) -> list[str]:
    """The package's modules ``node`` imports (``from pkg import sub`` names the submodule ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "sipe"]
    if node.level:
        package = module.split(".") if is_pkg else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "sipe":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _lazy_targets(tree: ast.Module, module: str) -> list[tuple[str, int]]:
    """Modules named by ``lazy_exports(__name__, EXPORTS)``: EXPORTS's values are submodule names or dotted paths."""
    dicts = {
        t.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports" and len(node.args) == 2
                and isinstance(node.args[1], ast.Name) and node.args[1].id in dicts):
            for value in dicts[node.args[1].id].values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    name = value.value if "." in value.value else f"{module}.{value.value}"
                    out.append((name, value.lineno))
    return out


# importlib's calls that load (or look up) a module by name: ``importlib.import_module(name)``,
# ``importlib.util.find_spec(name)``, or the same functions imported by name.
_IMPORTLIB_CALLS = {("importlib", "import_module"), ("importlib.util", "find_spec"), ("", "import_module"),
                    ("", "find_spec")}


def _dotted(node: ast.expr) -> str:
    """``importlib.util`` for that attribute chain, ``""`` for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _importlib_targets(tree: ast.Module) -> list[tuple[str, int]]:
    """Modules of the package named by a literal string in an importlib call (see ``_IMPORTLIB_CALLS``)."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = _dotted(node.func)
        owner, _, name = func.rpartition(".")
        arg = node.args[0]
        if ((owner, name) in _IMPORTLIB_CALLS and isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                and arg.value.split(".")[0] == "sipe"):
            out.append((arg.value, node.lineno))
    return out


def collect_imports() -> list[Import]:
    """Every import of one of the package's modules by another, wherever it sits in the file."""
    modules = _modules()
    out = []
    for module, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = [
            (target, node.lineno)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for target in _targets(node, module, is_pkg, modules)
        ]
        for target, line in found + _lazy_targets(tree, module) + _importlib_targets(tree):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module:
                out.append(Import(module, target, path, line))
    return out


def read_layers() -> dict[str, int]:
    """Unit (``cli``, ``data``, ``vis``, ``sipe`` for the package's own ``__init__``) -> row of the
    table in ``docs/architecture.md``'s "Import layers" section (1 = top)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Import layers", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, int] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for unit in re.findall(r"`([\w.]+)`", cells[1]):
                assert unit not in rows, f"{unit} is on two rows of the layer table"
                rows[unit] = int(cells[0])
    assert rows, f"no layer table found under '## Import layers' in {DOC}"
    return rows


def unit_of(module: str) -> str:
    """``sipe.cams.multiscale`` -> ``cams``; ``sipe.vis`` -> ``vis``; ``sipe`` -> ``sipe``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sipe"


def layer_violations(imports: list[Import], rows: dict[str, int]) -> list[str]:
    """One readable line per import that goes up or sideways in the layer table (or names an unplaced unit)."""
    problems = []
    for imp in imports:
        src, dst = unit_of(imp.importer), unit_of(imp.target)
        if src == dst or (imp.importer, imp.target) in ALLOWED_IMPORTS:
            continue
        missing = [u for u in (src, dst) if u not in rows]
        if missing:
            problems.append(f"{imp.where()}: {', '.join(missing)} is on no row of the layer table in "
                            "docs/architecture.md; add it there")
            continue
        if rows[dst] <= rows[src]:
            how = "sideways (same row)" if rows[dst] == rows[src] else "upwards"
            problems.append(f"{imp.where()}: {imp.importer} (row {rows[src]}) imports {imp.target} "
                            f"(row {rows[dst]}), {how}")
    return sorted(set(problems))


def import_cycles(imports: list[Import]) -> list[tuple[list[str], list[str]]]:
    """The strongly connected components of the module import graph with more than one module
    (sorted), each with its shortest cycle through its first module, e.g. ``([a, b, c], [a, b, a])``."""
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        graph[imp.importer].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is small (about a hundred modules)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [(comp, _cycle_through(comp, graph)) for comp in sorted(components)]


def _cycle_through(comp: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from ``comp[0]`` back to itself inside the component (breadth first)."""
    start, inside = comp[0], set(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & inside):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {comp}")


def _functions(node: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method under ``node``, nested ones included."""
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                out.append((name, child))
            out.extend(_functions(child, f"{name}."))
        else:
            out.extend(_functions(child, prefix))
    return out


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line module:qualname (N lines)`` for every function or method longer than ``limit`` lines."""
    out = []
    for module, (path, _) in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, node in _functions(tree):
            n = node.end_lineno - node.lineno + 1
            if n > limit and f"{module}:{name}" not in LONG_FUNCTIONS:
                out.append(f"{path.relative_to(REPO)}:{node.lineno} {module}:{name} ({n} lines)")
    return out


# ------------------------------------------------------------------------------- the checks


def test_imports_follow_the_layers() -> None:
    problems = layer_violations(collect_imports(), read_layers())
    assert not problems, (
        f"{len(problems)} imports go against the layers of docs/architecture.md (a module imports its own "
        "package or lower rows only):\n" + "\n".join(problems)
    )


def test_no_import_cycles() -> None:
    cycles = import_cycles(collect_imports())
    assert not cycles, f"{len(cycles)} groups of modules import each other round a cycle:\n" + "\n".join(
        f"{len(set(c))} of {{{', '.join(comp)}}}: {' -> '.join(c)}" for comp, c in cycles
    )


def test_no_function_over_100_lines() -> None:
    found = long_functions()
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines; split them into named pieces:\n" + "\n".join(found)


def test_no_module_over_450_lines() -> None:
    found = [f"{path.relative_to(REPO)} ({n} lines)" for path, _ in _modules().values()
             if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not found, f"modules over {MAX_MODULE_LINES} lines; split them by job:\n" + "\n".join(found)


def test_exception_lists_name_real_modules() -> None:
    modules = _modules()
    for importer, target in ALLOWED_IMPORTS:
        assert importer in modules and target in modules, (importer, target)
    for key in LONG_FUNCTIONS:
        assert key.split(":")[0] in modules, key


# ------------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the checker at a small package in ``tmp_path`` with the layer table ``a`` over ``b`` over ``c``."""
    globals_ = globals()
    monkeypatch.setitem(globals_, "REPO", tmp_path)
    monkeypatch.setitem(globals_, "SRC", tmp_path / "src")
    monkeypatch.setitem(globals_, "PACKAGE", tmp_path / "src" / "sipe")
    monkeypatch.setitem(globals_, "DOC", tmp_path / "docs" / "architecture.md")
    _write(tmp_path, {
        "docs/architecture.md": "## Import layers\n\n| row | units |\n| --- | --- |\n| 1 | `a` |\n"
                                "| 2 | `b`, `b2` |\n| 3 | `c`, `sipe` |\n\n## Next\n",
        "src/sipe/__init__.py": "",
        "src/sipe/a/__init__.py": "",
        "src/sipe/b/__init__.py": "",
        "src/sipe/b2.py": "",
        "src/sipe/c.py": "",
    })
    return tmp_path


def test_checker_finds_function_level_relative_and_sideways_imports(fake_package: Path) -> None:
    _write(fake_package, {
        "src/sipe/b/x.py": "def f():\n    from sipe.a import thing\n",  # upwards, inside a function
        "src/sipe/b/y.py": "from .. import b2\nfrom . import x\n",  # sideways (relative), same package
        "src/sipe/c.py": "import sipe.b.y as y\n",  # upwards
        "src/sipe/a/z.py": "from sipe import c\nfrom sipe.b import x\n",  # downwards: fine
    })
    problems = layer_violations(collect_imports(), read_layers())
    assert [p.split(": ", 1)[1] for p in problems] == [
        "sipe.b.x (row 2) imports sipe.a (row 1), upwards",
        "sipe.b.y (row 2) imports sipe.b2 (row 2), sideways (same row)",
        "sipe.c (row 3) imports sipe.b.y (row 2), upwards",
    ]
    assert problems[0].startswith("src/sipe/b/x.py:2")


def test_checker_counts_importlib_calls_with_a_literal_name(fake_package: Path) -> None:
    _write(fake_package, {
        "src/sipe/c.py": "import importlib\nm = importlib.import_module('sipe.a')\n",  # upwards
        "src/sipe/b2.py": ("import importlib.util\nfrom importlib import import_module\n"
                           "def f(name):\n    importlib.util.find_spec('sipe.b')\n"  # sideways
                           "    import_module(name)\n    import_module('numpy')\n"  # not literal / not sipe
                           "    return import_module('sipe.c')\n"),  # downwards: fine
    })
    problems = layer_violations(collect_imports(), read_layers())
    assert [p.split(": ", 1)[1] for p in problems] == [
        "sipe.b2 (row 2) imports sipe.b (row 2), sideways (same row)",
        "sipe.c (row 3) imports sipe.a (row 1), upwards",
    ]
    assert problems[0].startswith("src/sipe/b2.py:4") and problems[1].startswith("src/sipe/c.py:2")


def test_checker_finds_cycles_and_long_functions(fake_package: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(100))
    _write(fake_package, {
        "src/sipe/b/p.py": "from .q import g\n",
        "src/sipe/b/q.py": f"def g():\n    from sipe.b.r import h\n{body}\n",  # 102 lines
        "src/sipe/b/r.py": "from sipe.b import p\n",
        "src/sipe/b/s.py": "from sipe.b import p\n",  # into the cycle, not part of it
    })
    cycle = ["sipe.b.p", "sipe.b.q", "sipe.b.r", "sipe.b.p"]
    assert import_cycles(collect_imports()) == [(sorted(cycle[:3]), cycle)]
    assert long_functions() == ["src/sipe/b/q.py:1 sipe.b.q:g (102 lines)"]


def test_checker_reports_units_missing_from_the_table(fake_package: Path) -> None:
    _write(fake_package, {"src/sipe/newpkg/__init__.py": "from sipe import c\n"})
    assert layer_violations(collect_imports(), read_layers()) == [
        "src/sipe/newpkg/__init__.py:1: newpkg is on no row of the layer table in docs/architecture.md; add it there"
    ]
