"""Every name imported from this project's own packages exists.

Imports inside functions run only when their branch does: a bench's ``--profile`` path or an
error handler can import a name that a refactor moved, and nothing fails until a user takes
that branch. This reads every ``from lpcv_segmentation|training|bench... import name`` in the
repository (module level or not) and checks that the module has the name.
"""
import ast
import importlib
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lpcv_segmentation", "training", "bench")
FOLDERS = PACKAGES + ("launch", "test")


def project_imports(root: Path = REPO) -> List[Tuple[str, str, str]]:
    """(file, module, name) of every ``from <project module> import name`` under ``root``."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                        and node.module.split(".")[0] in PACKAGES):
                    found += [(path.relative_to(root).as_posix(), node.module, alias.name)
                              for alias in node.names]
    return found


def _has(module: str, name: str) -> bool:
    if hasattr(importlib.import_module(module), name):
        return True
    try:  # ``from package import submodule``
        importlib.import_module("%s.%s" % (module, name))
        return True
    except ModuleNotFoundError:
        return False


def test_every_project_import_names_something_that_exists():
    imports = project_imports()
    assert len(imports) > 100  # the scan sees the repository's imports
    missing = ["%s: from %s import %s" % item for item in imports if not _has(item[1], item[2])]
    assert not missing, missing


def test_the_scan_sees_imports_inside_functions_and_only_the_projects(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "tool.py").write_text(
        "import numpy\nfrom os import path\n\n\ndef main():\n"
        "    from lpcv_segmentation.model.segmodel import read_metadata\n"
        "    from training import export as export_lib\n")
    assert project_imports(tmp_path) == [
        ("bench/tool.py", "lpcv_segmentation.model.segmodel", "read_metadata"),
        ("bench/tool.py", "training", "export")]
    assert not _has("lpcv_segmentation.model.segmodel", "read_metadata")  # moved to checkpoint.py
    assert _has("training", "export")  # a submodule
