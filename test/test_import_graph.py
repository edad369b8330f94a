"""The package's modules import each other in one direction: no import circle anywhere.

Every ``import``/``from ... import`` of a project module counts, at module level or inside a
function (a lazy import still ties the two modules together). An edge goes to the module
that defines the name: ``from lpcv_segmentation.runtime import Segmenter`` in a module
outside ``runtime`` is an edge to the package ``runtime`` (its ``__init__``), and a package's
``__init__`` re-exporting its submodules is an edge from the package to them.
"""
import ast
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lpcv_segmentation", "training")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = REPO) -> Dict[str, Set[str]]:
    """module -> the project modules it imports (submodule when ``from pkg import submodule``)."""
    files = {module_name(p, root): p for package in PACKAGES for p in (root / package).rglob("*.py")}
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[:len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                targets = ["%s.%s" % (base, alias.name) if "%s.%s" % (base, alias.name) in files
                           else base for alias in node.names]
            for target in targets:
                while target and target not in files:  # ``import a.b.c`` where c is a name
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle as [a, b, ..., a], or [] when there is none (iterative DFS)."""
    state: Dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return []


def test_no_import_circle_in_the_project():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the scan sees the package
    cycle = find_cycle(graph)
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_drone_side_never_imports_training():
    graph = import_graph()
    wrong = sorted("%s -> %s" % (name, target) for name, targets in graph.items()
                   if name.startswith("lpcv_segmentation") for target in targets
                   if target.startswith("training"))
    assert not wrong, wrong


def test_the_scan_finds_a_circle_through_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "lpcv_segmentation"
    (package / "sub").mkdir(parents=True)
    (tmp_path / "training").mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .a import thing\n")
    (package / "sub" / "a.py").write_text("thing = 1\n\n\ndef f():\n    from lpcv_segmentation.b import g\n")
    (package / "b.py").write_text("from lpcv_segmentation.sub.a import thing\n\ng = thing\n")
    graph = import_graph(tmp_path)
    assert graph["lpcv_segmentation.sub"] == {"lpcv_segmentation.sub.a"}
    assert find_cycle(graph) == ["lpcv_segmentation.b", "lpcv_segmentation.sub.a", "lpcv_segmentation.b"]
    (package / "sub" / "a.py").write_text("thing = 1\n")
    assert find_cycle(import_graph(tmp_path)) == []
