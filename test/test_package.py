"""The repository builds as a ROS 2 ament_python package with colcon (from PyPI), and
installs what `ros2 run` / `ros2 launch` and the node look for where they look for it."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "lpcv_segmentation"
EXECUTABLES = ("segmentation_node", "bag_eval")
VENV_BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.slow


def _source_files(source, subdir, suffixes=None):
    """Files directly in source/subdir (no dotfiles), optionally only those with given suffixes."""
    path = os.path.join(str(source), subdir)
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path)
                  if os.path.isfile(os.path.join(path, n)) and not n.startswith(".")
                  and (suffixes is None or n.endswith(suffixes)))


@pytest.fixture
def workspace(colcon_workspace):
    return colcon_workspace


def test_executables_land_where_ros2_run_finds_them(workspace):
    prefix = workspace / "install" / PACKAGE
    for name in EXECUTABLES:
        exe = prefix / "lib" / PACKAGE / name
        assert exe.is_file(), "%s not installed in lib/%s" % (name, PACKAGE)
        assert os.access(str(exe), os.X_OK)
        assert not (prefix / "bin" / name).exists()


def test_share_files_and_ament_index_marker(workspace):
    # Compare with the copy that was built: the shared working tree may change meanwhile.
    source = workspace / "src" / PACKAGE
    prefix = workspace / "install" / PACKAGE
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    share = prefix / "share" / PACKAGE
    assert (share / "package.xml").read_bytes() == (source / "package.xml").read_bytes()
    # Every launch and config file of the source tree is installed; so is every model file
    # setup.py promises to ship (the dirs may be empty while the package is young).
    expected = ([("launch", n) for n in _source_files(source, "launch")]
                + [("config", n) for n in _source_files(source, "config")]
                + [("models", n)
                   for n in _source_files(source, "models", (".onnx", ".json", ".md"))])
    missing = [os.path.join(d, n) for d, n in expected if not (share / d / n).is_file()]
    assert missing == [], "not installed into share/%s: %s" % (PACKAGE, missing)


def test_installed_package_is_importable_and_found_through_the_ament_index(workspace):
    """Source the workspace like a user does, then resolve everything from the install space."""
    probe = r"""
import importlib.metadata, json, os
import lpcv_segmentation
from ament_index_python.packages import get_package_share_directory
eps = [ep for ep in importlib.metadata.distribution("lpcv_segmentation").entry_points
       if ep.group == "console_scripts"]
loads = {}
for ep in eps:
    try:
        loads[ep.name] = "callable" if callable(ep.load()) else "not callable"
    except Exception as e:  # reported, and asserted on when the module exists
        loads[ep.name] = "%s: %s" % (type(e).__name__, e)
print(json.dumps({"module": lpcv_segmentation.__file__, "loads": loads,
                  "scripts": {ep.name: ep.value for ep in eps},
                  "share": get_package_share_directory("lpcv_segmentation")}))
"""
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "-c", 'source install/setup.bash && python -c "$0"', probe],
                            cwd=str(workspace), env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    prefix = str(workspace / "install" / PACKAGE)
    assert found["module"].startswith(prefix + os.sep)
    assert os.path.realpath(found["share"]) == os.path.realpath(os.path.join(prefix, "share",
                                                                             PACKAGE))
    assert set(found["scripts"]) == set(EXECUTABLES)
    installed = os.path.dirname(found["module"])
    source = workspace / "src" / PACKAGE
    for name, target in found["scripts"].items():
        module, _, func = target.partition(":")
        assert module.startswith(PACKAGE + ".") and func, target
        # Once the module exists in the source tree, it is installed with the package and the
        # executable's entry point resolves to a function.
        module_file = os.path.join(str(source), *module.split(".")) + ".py"
        if os.path.isfile(module_file):
            assert os.path.isfile(os.path.join(installed, *module.split(".")[1:]) + ".py"), name
            assert found["loads"][name] == "callable", (name, found["loads"][name])
    for name in os.listdir(str(source / PACKAGE)):
        if name.endswith(".py"):
            assert os.path.isfile(os.path.join(installed, name)), "%s not installed" % name
