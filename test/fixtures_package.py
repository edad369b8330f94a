"""Fixture: the repository built as a ROS 2 package in a colcon workspace (session-scoped).

``colcon_workspace``: a temporary workspace whose ``src/lpcv_segmentation`` is a copy of this
checkout (without the venv, build outputs and caches), built with the venv's colcon; the
packaging tests inspect it and the launch test sources it and runs ``ros2 launch``.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["colcon_workspace", "PACKAGE_NAME", "VENV_BIN"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "lpcv_segmentation"
VENV_BIN = os.path.dirname(sys.executable)
# Not part of a source checkout (or too big to copy and irrelevant to the build).
_SKIP_TOP = {".venv", ".git", "build", "install", "log", "runs", "out", ".pytest_cache", ".gl",
             ".cache"}
COLCON_TIMEOUT_S = 300  # ~15 s idle; a loaded 2-core machine has taken up to ~60 s


def _ignore(directory, names):
    skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(directory).resolve() == ROOT:
        skipped |= _SKIP_TOP & set(names)
    return skipped


@pytest.fixture(scope="session")
def colcon_workspace(tmp_path_factory) -> Path:
    """A colcon workspace holding a copy of this repository as src/lpcv_segmentation, built."""
    ws = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(str(ROOT), str(ws / "src" / PACKAGE_NAME), ignore=_ignore, symlinks=True)
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
               COLCON_HOME=str(ws / ".colcon_home"))  # no user-level colcon defaults
    result = subprocess.run([os.path.join(VENV_BIN, "colcon"), "build", "--base-paths", "src"],
                            cwd=str(ws), env=env, capture_output=True, text=True,
                            timeout=COLCON_TIMEOUT_S)
    assert result.returncode == 0, "colcon build failed:\n%s\n%s" % (result.stdout, result.stderr)
    return ws
