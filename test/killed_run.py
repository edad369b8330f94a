"""A training command killed with SIGKILL mid-run, as a crash or an out-of-memory kill would:
the one helper of the resume tests (train's and distill's)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Sequence

REPO = Path(__file__).resolve().parent.parent


def kill_training_when(args: Sequence[object], env: Dict[str, str], stderr_path: Path,
                       ready: Callable[[], bool], timeout_s: float, settle_s: float = 0.0) -> None:
    """Run ``python -m training ARGS``, SIGKILL it once ``ready()`` holds (then ``settle_s``
    later), and wait for it; fails if it ended on its own first (its stderr is the message)."""
    with open(stderr_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "training"] + [str(a) for a in args],
                                cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.time() + timeout_s
            while time.time() < deadline and proc.poll() is None and not ready():
                time.sleep(0.05)
            assert proc.poll() is None, stderr_path.read_text()
            time.sleep(settle_s)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
