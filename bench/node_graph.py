"""The segmentation node in a ROS graph of child processes, for the node benches.

``NodeGraph`` starts ``python -m lpcv_segmentation.node`` with config/drone.yaml plus the
parameters given, and (optionally) the listener script of test/ros_helpers.py, which records
the node's outputs and /diagnostics in a JSON-lines file; the camera script there sends the
frames. The processes are the package's harness (``lpcv_segmentation.replay.node_process``): every
graph holds a ROS domain no other graph on the machine holds, and the large-frame Fast DDS
profile is applied to all its processes unless ``profile=False``. The node's memory is read from
/proc/<pid>/status, and whether it loaded torch from /proc/<pid>/maps. Every process started
here is stopped by ``close()`` (SIGINT, then SIGKILL for that process only).
"""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "test")]  # the package, and the test scene
from lpcv_segmentation.replay.node_process import (PROFILE_NAME, ChildProcess,  # noqa: E402
                                                   DomainLease, NodeProcess, graph_env, stop)
from scene import scene_rgb  # noqa: E402,F401  (node_overhead's input)

# The camera and listener: scripts the node tests run too (started as processes, not imported).
HELPERS = REPO / "test" / "ros_helpers.py"

PARAMS_FILE = REPO / "config" / "drone.yaml"
CAMERA_TOPIC = "/camera/image_raw"
TORCH_LIBRARY = "libtorch"  # libtorch_cpu.so / libtorch_python.so: mapped once torch is imported
COUNTERS = ("received", "processed", "dropped", "rejected")


class NodeGraphError(RuntimeError):
    """The node or a helper process failed; the message carries the end of its log."""


# -- the node process as the kernel sees it ----------------------------------------------------
def proc_memory_mb(pid: int) -> Dict[str, float]:
    """{"rss": VmRSS, "hwm": VmHWM (peak RSS)} of a process in MB (10^6 bytes, the unit of the
    targets); {} once it has gone."""
    fields = {"VmRSS:": "rss", "VmHWM:": "hwm"}
    out: Dict[str, float] = {}
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                parts = line.split()
                if parts and parts[0] in fields:
                    out[fields[parts[0]]] = int(parts[1]) * 1024 / 1e6  # the kernel's kB are KiB
    except OSError:
        return {}
    return out


def mapped_libraries(pid: int, needle: str) -> List[str]:
    """The files mapped into a process whose path contains ``needle`` (e.g. libtorch)."""
    try:
        with open("/proc/%d/maps" % pid) as maps:
            paths = {line.split()[-1] for line in maps if needle in line}
    except OSError:
        return []
    return sorted(paths)


class MemorySampler:
    """Samples (time.time(), VmRSS MB) of a process every ``period_s`` in a thread."""

    def __init__(self, pid: int, period_s: float = 0.25) -> None:
        self.pid, self.period_s = pid, period_s
        self.samples: List[Tuple[float, float]] = []
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            memory = proc_memory_mb(self.pid)
            if memory:
                self.samples.append((time.time(), memory["rss"]))
                self.peak_mb = max(self.peak_mb, memory.get("hwm", 0.0))
            self._stop.wait(self.period_s)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, begin: float, end: float) -> List[float]:
        """RSS samples (MB) taken between two time.time() values."""
        return [rss for t, rss in self.samples if begin <= t <= end]


# -- the graph -----------------------------------------------------------------------------------
class NodeGraph:
    """A running node (and listener) in a ROS domain of its own; a context manager.

    ``work`` receives the processes' logs and the listener's events.jsonl.
    """

    def __init__(self, work: Path, model: str, backend: str = "onnxruntime",
                 params: Optional[Dict[str, object]] = None, profile: bool = True,
                 listener: bool = True, domain: Optional[int] = None,
                 listener_args: Sequence[str] = (), repo: Path = REPO) -> None:
        self.work = Path(work)
        self.repo = Path(repo)  # whose node runs: this checkout, or another for a comparison
        self.work.mkdir(parents=True, exist_ok=True)
        self._lease: Optional[DomainLease] = DomainLease(domain)
        self.domain = self._lease.id
        own = self.repo / "config" / PROFILE_NAME  # that checkout's own DDS profile
        self.env = graph_env(self.domain, profile=(own if profile is True and own.is_file()
                                                   else profile), pythonpath=[self.repo])
        self.events_path = self.work / "listener" / "events.jsonl"
        self._node_options = dict(model=model, backend=backend, input_topic=CAMERA_TOPIC,
                                  params_file=self.repo / PARAMS_FILE.relative_to(REPO),
                                  params=dict(params or {}))
        self._with_listener = listener
        self._listener_args = list(listener_args)  # e.g. --ground: the ground-side outputs too
        self.node: Optional[subprocess.Popen] = None
        self.listener: Optional[subprocess.Popen] = None
        self._children: List[subprocess.Popen] = []  # stopped in reverse order by close()
        self.node_exit_code: Optional[int] = None
        self.exit_log_tail = ""

    # -- start and stop ---------------------------------------------------------------------
    def __enter__(self) -> "NodeGraph":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, timeout: float = 120.0) -> None:
        """Start the listener and the node; return once the node publishes."""
        if self._with_listener:
            self.listener = self._start([sys.executable, str(HELPERS), "listen", "--out",
                                         str(self.work / "listener")] + self._listener_args,
                                        "listener.log")
        node = NodeProcess(self.env, self.work / "node.log", cwd=self.repo,
                           **self._node_options)
        self._children.append(node.process)
        self.node = node.process
        if self._with_listener:
            # label_info is latched: once the listener has it, the node is up and publishing.
            self.wait_for("the node's label info", lambda: self.events("label_info"), timeout)
        else:
            self.wait_for("the node to start", lambda: "segmenting " in self.node_log(), timeout)

    def _start(self, args: List[str], log_name: str, stderr_to_log: bool = True
               ) -> subprocess.Popen:
        child = ChildProcess(args, self.env, self.work / log_name, name=log_name, cwd=REPO,
                             stderr_to_log=stderr_to_log)
        self._children.append(child.process)
        return child.process

    def spawn(self, args: List[str], log_name: str, stderr_to_terminal: bool = False):
        """Start another process in this graph's domain (stopped by ``close()``); its stdout
        goes to ``work/log_name``, its stderr there too unless ``stderr_to_terminal``."""
        return self._start(args, log_name, stderr_to_log=not stderr_to_terminal)

    def close(self) -> Optional[int]:
        """Stop every process (the node last but one: the listener hears its last words).
        A node that does not exit with 0 leaves the end of its log in ``exit_log_tail``."""
        for process in reversed(self._children):
            code = stop(process)
            if process is self.node:
                self.node_exit_code = code
        self._children = []
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self.node_exit_code not in (None, 0):
            self.exit_log_tail = self.log_tail(15)
        return self.node_exit_code

    # -- what the processes said ------------------------------------------------------------
    def node_log(self) -> str:
        path = self.work / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.node_log().splitlines()[-lines:])

    def node_alive(self) -> bool:
        return self.node is not None and self.node.poll() is None

    def wait_for(self, what: str, found: Callable[[], object], timeout: float = 30.0):
        """Poll ``found`` until it returns something true; NodeGraphError if the node exits
        or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = found()
            if result:
                return result
            if not self.node_alive():
                raise NodeGraphError("the node exited (code %s) while waiting for %s; its log "
                                     "ends:\n%s" % (self.node.returncode, what, self.log_tail()))
            time.sleep(0.1)
        raise NodeGraphError("timed out after %.0f s waiting for %s; the node's log ends:\n%s"
                             % (timeout, what, self.log_tail()))

    def events(self, topic: Optional[str] = None) -> List[dict]:
        """The listener's records so far (optionally of one topic)."""
        if not self.events_path.exists():
            return []
        events = [json.loads(line) for line in self.events_path.read_text().splitlines()
                  if line.endswith("}")]
        return [e for e in events if topic is None or e["topic"] == topic]

    def diagnostics(self, after: float = 0.0) -> Optional[Dict[str, str]]:
        """The values of the newest /diagnostics status received after ``after`` (time.time())."""
        for event in reversed(self.events("diagnostics")):
            if event["received"] > after and event["status"]:
                status = event["status"][0]
                return dict(status["values"], _level=str(status["level"]),
                            _message=status["message"], _received=str(event["received"]))
        return None

    def settled_counts(self, timeout: float = 30.0) -> Dict[str, int]:
        """The node's frame counters once every received frame has ended processed, dropped or
        rejected (from a /diagnostics message sent after this call)."""
        begin = time.time()

        def settled():
            values = self.diagnostics(after=begin)
            if values is None:
                return None
            counts = counters(values)
            return counts if is_balanced(counts) else None
        return self.wait_for("balanced frame counters", settled, timeout)

    # -- the camera ---------------------------------------------------------------------------
    def camera(self, count: int, rate: float, width: int = 512, height: int = 512,
               qos: str = "best_effort", frame_id: str = "bench", extra: Sequence[str] = (),
               timeout: Optional[float] = None) -> Dict[str, object]:
        """Run the test camera to completion: ``count`` frames of the test scene at ``rate`` Hz.
        Returns its report {"sent", "stamps", "frame_ids"}."""
        args = [sys.executable, str(HELPERS), "camera", "--topic", CAMERA_TOPIC,
                "--count", str(count), "--rate", str(rate), "--width", str(width),
                "--height", str(height), "--qos", qos, "--frame-id", frame_id] + list(extra)
        log = self.work / ("camera_%s.log" % frame_id)
        process = self._start(args, log.name)
        limit = timeout if timeout is not None else 60.0 + (count / rate if rate > 0 else count)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stop(process)
            raise NodeGraphError("the camera did not finish in %.0f s:\n%s"
                                 % (limit, log.read_text(errors="replace")[-2000:]))
        lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
        if code != 0 or not lines:
            raise NodeGraphError("the camera failed (code %s):\n%s"
                                 % (code, log.read_text(errors="replace")[-2000:]))
        return json.loads(lines[-1])


def counters(values: Dict[str, str]) -> Dict[str, int]:
    """frames_received/processed/dropped/rejected of a diagnostics status, as ints."""
    return {name: int(values["frames_" + name]) for name in COUNTERS}


def is_balanced(counts: Dict[str, int]) -> bool:
    """Every frame that reached the node ended processed, dropped or rejected."""
    return counts["received"] == counts["processed"] + counts["dropped"] + counts["rejected"]


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (linear interpolation), or None for no values."""
    if not values:
        return None
    import numpy as np
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
