"""flake8 over the package, the training pipeline, the benches, the tests, the launch files and tools/,
as ament_flake8 does for ROS 2 packages: the configuration is setup.cfg's [flake8] section."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKED = ["lpcv_segmentation", "training", "bench", "test", "launch", "tools", "setup.py"]


def test_flake8_docstring_plugin_is_installed():
    """Without flake8-docstrings the docstring rules in setup.cfg would silently not run."""
    version = subprocess.run([sys.executable, "-m", "flake8", "--version"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr
    assert "flake8-docstrings" in version.stdout, version.stdout


def test_flake8_finds_no_violations():
    result = subprocess.run([sys.executable, "-m", "flake8"] + CHECKED, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    violations = result.stdout.strip().splitlines()
    assert result.returncode == 0 and not violations, \
        "%d flake8 violation(s):\n%s\n%s" % (len(violations), "\n".join(violations), result.stderr)
