"""Tools from ``../shared`` (beside the checkout) that the tests build once per machine.

``../shared/vision_msgs`` builds the real vision_msgs package from source against the venv's
ROS wheels; ``../shared/ros2cli`` installs the real ``ros2`` command line (launch, lifecycle,
topic). Neither is a dependency of the package: users have them from their ROS install. Each
is built into ``.cache/<name>`` (git-ignored) and reused while the sha256 of its sources (the
tarball and the script) is the one written in ``.cache/<name>.sha256``; a lock file keeps two
test runs from building at once. Where ``../shared/<name>`` does not exist the test skips and
says so (``pytest -ra`` prints the reason). ``LPCV_SHARED`` may name another folder.
"""
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Mapping, Sequence

import pytest

__all__ = ["SHARED", "CACHE", "vision_msgs_prefix", "vision_msgs_env", "ros2cli_prefix",
           "ros2cli_env"]

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LPCV_SHARED") or REPO.parent / "shared")
CACHE = REPO / ".cache"
# The vision_msgs build compiles for ~3 min on 2 busy cores; pytest stops a test at 600 s.
BUILD_TIMEOUT_S = 480


def _digest(paths: Sequence[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()


def _built(name: str, sources: Sequence[str], command: Sequence[str], check: str) -> Path:
    """``.cache/<name>``, built by ``command`` (TARGET stands for the folder) unless the
    stamp says it was built from these very sources and ``check`` (a file in it) exists."""
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip("%s not found: the real %s is not available on this machine (see "
                    "docs/testing.md)" % (folder, name))
    paths = [folder / source for source in sources]
    digest = _digest(paths)
    target, stamp = CACHE / name, CACHE / ("%s.sha256" % name)
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / ("%s.lock" % name), "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another run may be building it
        if stamp.is_file() and stamp.read_text().strip() == digest and (target / check).exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        args = [str(target) if a == "TARGET" else a for a in command]
        result = subprocess.run(args, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        assert result.returncode == 0, "building %s failed:\n%s%s" % (
            name, result.stdout[-3000:], result.stderr[-3000:])
        assert (target / check).exists(), "%s: no %s after the build" % (name, check)
        stamp.write_text(digest + "\n")
    return target


def vision_msgs_prefix() -> Path:
    """The vision_msgs install (``vision_msgs_env.sh`` in it), built if needed, else skip."""
    script = SHARED / "vision_msgs" / "build_vision_msgs.sh"
    return _built("vision_msgs", ["vision_msgs-src.tar.gz", "build_vision_msgs.sh"],
                  ["bash", str(script), sys.executable, "TARGET"], "vision_msgs_env.sh")


def vision_msgs_env(base: Mapping[str, str]) -> Dict[str, str]:
    """``base`` plus what vision_msgs_env.sh exports. LD_LIBRARY_PATH is read when a process
    starts (the type support is loaded by bare name), so this is for child processes."""
    prefix = vision_msgs_prefix()
    site = prefix / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    env = dict(base)
    for name, value in (("PYTHONPATH", site), ("LD_LIBRARY_PATH", prefix / "lib"),
                        ("AMENT_PREFIX_PATH", prefix)):
        env[name] = os.pathsep.join([str(value)] + [p for p in [env.get(name)] if p])
    return env


def ros2cli_prefix() -> Path:
    """The ros2 command line installed beside the venv (``bin/ros2`` in it), else skip."""
    script = SHARED / "ros2cli" / "install.sh"
    return _built("ros2cli", ["ros2cli-sources.tar.gz", "install.sh"],
                  ["bash", str(script), sys.executable, "TARGET"], "bin/ros2")


def ros2cli_env(base: Mapping[str, str]) -> Dict[str, str]:
    """``base`` with ``ros2`` on PATH and its packages on PYTHONPATH, and the venv's bin."""
    prefix = ros2cli_prefix()
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join([str(prefix)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PATH"] = os.pathsep.join([str(prefix / "bin"), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    return env
