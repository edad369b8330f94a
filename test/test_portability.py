"""The on-board package runs on the Pythons Jetson images ship and stays apart from training."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lpcv_segmentation"


def test_on_board_package_needs_at_most_python_38():
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    out = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations", str(PACKAGE)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_on_board_package_never_imports_training():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += ["%s:%d %s" % (path.name, node.lineno, n) for n in names
                          if n == "training" or n.startswith("training.")]
    assert offenders == []
