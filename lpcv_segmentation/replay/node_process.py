"""Child processes of a ROS graph: the one harness shared by bag_eval, the benches and the tests.

    with DomainLease() as domain:                       # a ROS domain no other graph holds
        env = graph_env(domain.id)                      # DDS settings, large-frame profile
        node = NodeProcess(env, log_path, model="models/default.onnx")
        ...; node.check_alive("the replay"); ...
        node.stop()                                     # SIGINT, then SIGKILL if it hangs

A domain id is unique among the graphs of every process on the machine while its lease is held:
the lease is an exclusive ``fcntl`` lock on a per-id file in the temporary folder, which the
kernel drops when the holder exits, so a crashed test run never leaks one.
"""
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ["PROFILE_NAME", "NODE_MODULE", "DOMAIN_IDS", "NodeProcessError", "config_file",
           "large_frames_profile", "DomainLease", "graph_env", "start", "stop", "ChildProcess",
           "NodeProcess", "node_arguments"]

PROFILE_NAME = "fastdds_large_frames.xml"  # config/: Fast DDS settings for camera-sized frames
NODE_MODULE = "lpcv_segmentation.node"
DOMAIN_IDS = range(20, 102)  # ids that are safe on Linux whatever else runs (0..101)
SOURCE_ROOT = Path(__file__).resolve().parents[2]


class NodeProcessError(RuntimeError):
    """A child process of the graph exited or could not start; the message ends with its log."""


def config_file(name: str) -> Optional[Path]:
    """config/<name> of the installed package, else of this source tree."""
    from lpcv_segmentation.node.config import package_share_dir
    share = package_share_dir()
    for base in ([share] if share is not None else []) + [SOURCE_ROOT]:
        candidate = base / "config" / name
        if candidate.is_file():
            return candidate
    return None


def large_frames_profile() -> Optional[Path]:
    """The Fast DDS profile that lets camera-sized frames through (None if not installed)."""
    return config_file(PROFILE_NAME)


class DomainLease:
    """A ROS domain id held exclusively by this graph until ``release()`` (or process exit).

    ``DomainLease(id)`` waits for nothing: a given id already held elsewhere raises
    NodeProcessError; without an id the first free one is taken, starting at a random one."""

    def __init__(self, domain_id: Optional[int] = None, ids: Sequence[int] = DOMAIN_IDS) -> None:
        import fcntl
        candidates = [int(domain_id)] if domain_id is not None else list(ids)
        start_at = random.SystemRandom().randrange(len(candidates))
        self._handle: Optional[IO[str]] = None
        for candidate in candidates[start_at:] + candidates[:start_at]:
            handle = open(self.lock_path(candidate), "a")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.id, self._handle = candidate, handle
            return
        raise NodeProcessError("no free ROS domain id among %s: every one is held by another "
                               "graph (lock files %s)"
                               % (_describe(candidates), self.lock_path(candidates[0])))

    @staticmethod
    def lock_path(domain_id: int) -> str:
        return os.path.join(tempfile.gettempdir(), "lpcv_ros_domain_%d.lock" % domain_id)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the lock
            self._handle = None

    def __enter__(self) -> "DomainLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(ids: Sequence[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else "%d..%d" % (min(ids), max(ids))


def graph_env(domain_id: Optional[int] = None, profile: Union[bool, str, Path] = True,
              base: Optional[Mapping[str, str]] = None,
              pythonpath: Sequence[Union[str, Path]] = (SOURCE_ROOT,)) -> Dict[str, str]:
    """Environment for every process of one graph: its domain (``None``: keep the caller's),
    Fast DDS with local discovery only, the large-frame profile (or none: ``profile=False``),
    unbuffered output, one OpenMP thread, the package importable from ``pythonpath``.
    ``profile`` may also name the profile file."""
    env = dict(os.environ if base is None else base)
    env.update(RMW_IMPLEMENTATION="rmw_fastrtps_cpp", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", RCUTILS_LOGGING_USE_STDOUT="0",
               RCUTILS_COLORIZED_OUTPUT="0")
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    found = large_frames_profile() if profile is True else (profile or None)
    if found is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(found)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in pythonpath]
                                        + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def start(args: Sequence[str], env: Mapping[str, str], log: Union[str, Path],
          cwd: Optional[Union[str, Path]] = None, stderr_to_log: bool = True
          ) -> subprocess.Popen:
    """Start a process whose stdout (and stderr, unless ``stderr_to_log`` is False) go to
    ``log``: pipes could fill and block it."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "w")
    try:
        return subprocess.Popen(list(args), env=dict(env), stdout=handle,
                                stderr=subprocess.STDOUT if stderr_to_log else None,
                                cwd=None if cwd is None else str(cwd))
    finally:
        handle.close()  # the child holds its own copy of the descriptor


def stop(process: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """SIGINT (a clean shutdown), then wait; kill only this process if it hangs. Returns its
    exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ChildProcess:
    """One process of the graph with its log file: alive checks, log tail, clean stop."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Union[str, Path],
                 name: str = "process", cwd: Optional[Union[str, Path]] = None,
                 stderr_to_log: bool = True) -> None:
        self.args: List[str] = list(args)
        self.name = name
        self.log_path = Path(log_path)
        self.process = start(self.args, env, self.log_path, cwd, stderr_to_log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self, during: str = "the run") -> None:
        """NodeProcessError with the end of the log if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise NodeProcessError("%s exited with code %d before %s ended; its log (%s) ends "
                                   "with:\n%s" % (self.name, code, during, self.log_path,
                                                  self.log_tail()))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        return stop(self.process, timeout)


def node_arguments(model: Optional[str] = None, backend: Optional[str] = None,
                   input_topic: Optional[str] = None,
                   params_file: Optional[Union[str, Path]] = None,
                   params: Union[Mapping[str, object], Sequence[str]] = ()) -> List[str]:
    """``--ros-args`` of the node: the parameter file, then the model, back end, input topic
    and ``params`` ({name: value} or "name:=value" strings), each only when given."""
    args = ["--ros-args"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    values: Dict[str, object] = {}
    for name, value in (("model_path", model), ("backend", backend),
                        ("input_topic", input_topic)):
        if value:
            values[name] = value
    if isinstance(params, Mapping):
        values.update(params)
        extra: List[str] = []
    else:
        extra = list(params)
    for name, value in values.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        args += ["-p", "%s:=%s" % (name, value)]
    for item in extra:
        args += ["-p", item]
    return args


class NodeProcess(ChildProcess):
    """``python -m lpcv_segmentation.node`` in a child process (see ``node_arguments``)."""

    def __init__(self, env: Mapping[str, str], log_path: Union[str, Path],
                 model: Optional[str] = None, backend: Optional[str] = None,
                 input_topic: Optional[str] = None,
                 params_file: Optional[Union[str, Path]] = None,
                 params: Union[Mapping[str, object], Sequence[str]] = (),
                 cwd: Optional[Union[str, Path]] = None) -> None:
        super().__init__([sys.executable, "-m", NODE_MODULE]
                         + node_arguments(model, backend, input_topic, params_file, params),
                         env, log_path, name="segmentation node", cwd=cwd)
