"""package.xml declares exactly what the on-board package and its launch file import.

Every import in lpcv_segmentation/ and launch/ (module level or inside a function, and the
modules named to importlib) is mapped to the rosdep key that installs it; the test fails on
an import without its exec_depend and on an exec_depend nothing imports. Imports rosdep
cannot or must not install are listed below with the reason, and must stay undeclared.
"""
import ast
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, Set

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "lpcv_segmentation"

# import name -> rosdep key (ROS packages are their own keys).
ROSDEP_KEYS: Dict[str, str] = {
    "rclpy": "rclpy", "rcl_interfaces": "rcl_interfaces",
    "ament_index_python": "ament_index_python", "sensor_msgs": "sensor_msgs",
    "std_msgs": "std_msgs", "diagnostic_msgs": "diagnostic_msgs", "vision_msgs": "vision_msgs",
    "launch": "launch", "launch_ros": "launch_ros",
    "numpy": "python3-numpy", "cv2": "python3-opencv",
    "onnxruntime": "python3-onnxruntime-pip", "tqdm": "python3-tqdm", "yaml": "python3-yaml",
}
# import name -> why it has no exec_depend (package.xml says the same in a comment).
UNDECLARED: Dict[str, str] = {
    "rosbags": "bag_eval on the ground station; no rosdep key: setup.py extra bag_eval",
    "backports": "rosbags' zstd, installed with it",
    "torch": "PyTorch back end; JetPack's wheel on a Jetson",
    "timm": "PyTorch back end, beside torch",
    "safetensors": "PyTorch back end checkpoints, beside torch",
    "tensorrt": "TensorRT back end; part of JetPack",
    "cuda": "TensorRT back end (cuda-python); part of JetPack",
    "pymap3d": "ground positions only (fix_topic set); no rosdep key: setup.py extra geo",
    "onnx": "model zoo fetch/install (the wrap of a published file); setup.py extra zoo",
}


def _imports(path: Path) -> Set[str]:
    """Top-level names of every module a file imports, lazily or not."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value.split(".")[0])
    return names


def on_board_imports() -> Dict[str, Set[str]]:
    """Third-party import name -> the files importing it."""
    files = sorted((REPO / PACKAGE).rglob("*.py")) + sorted((REPO / "launch").glob("*.py"))
    found: Dict[str, Set[str]] = {}
    for path in files:
        for name in _imports(path) - set(sys.stdlib_module_names) - {PACKAGE}:
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def exec_depends() -> Set[str]:
    root = ElementTree.parse(REPO / "package.xml").getroot()
    return {e.text.strip() for e in root.iter("exec_depend")}


def test_every_import_is_declared_and_nothing_else():
    imports = on_board_imports()
    unmapped = {name: sorted(files) for name, files in imports.items()
                if name not in ROSDEP_KEYS and name not in UNDECLARED}
    assert not unmapped, ("imports with no rosdep key in this test (add one to ROSDEP_KEYS and "
                          "an exec_depend to package.xml): %s" % unmapped)
    needed = {ROSDEP_KEYS[name] for name in imports if name in ROSDEP_KEYS}
    declared = exec_depends()
    assert needed - declared == set(), "missing exec_depend: %s" % sorted(needed - declared)
    assert declared - needed == set(), "declared but not imported: %s" % sorted(declared - needed)
    for name in UNDECLARED:
        assert name not in declared


def test_the_scan_sees_lazy_and_importlib_imports():
    imports = on_board_imports()
    assert "lpcv_segmentation/node/vision.py" in imports["vision_msgs"]  # importlib.import_module
    assert "lpcv_segmentation/runtime/segmenter.py" in imports["onnxruntime"]  # inside a function
    assert "launch/drone.launch.py" in imports["launch_ros"]


def test_pip_metadata_follows_ament_python():
    setup = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(setup) if isinstance(n, ast.Call)
                and getattr(n.func, "id", None) == "setup")
    keywords = {k.arg: k.value for k in call.keywords}
    assert ast.literal_eval(keywords["install_requires"]) == ["setuptools"]
    extras = ast.literal_eval(keywords["extras_require"])
    assert any(re.match(r"rosbags\b", r) for r in extras["bag_eval"])
    assert ast.literal_eval(keywords["python_requires"]) == ">=3.8"
