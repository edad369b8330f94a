"""Cold start: launch to first mask on the ONNX Runtime path, with its phases broken out.

Two measurements, each over ``--launches`` fresh processes:

1. Phases. A fresh Python process walks the node's start-up path step by step and stamps
   each step: interpreter start (spawn to the script's first line), imports (the node's
   module: rclpy, its messages, numpy, OpenCV, the runtime), model load (``Segmenter`` with
   the ONNX Runtime back end: importing onnxruntime and building the session), warm-up
   (``Segmenter.warmup()`` as the node calls it, each call timed), the first frame (every
   output built and put into messages, as ``process_frame`` and the node do), then the same
   on later frames, for what a frame costs once warm. No ROS graph: the steps' own cost.
2. End to end. The real node (``python -m lpcv_segmentation.node``, config/drone.yaml) is
   launched while a camera in this process already streams the test scene at ``--rate``
   (best effort, as a camera driver does); the figure is launch to the first /seg/mask this
   process receives. Beyond the phases it holds ROS start-up (rclpy.init, the node, its
   parameters and publishers) and discovery between the camera and the node.
   ``--compare-tree DIR`` launches the node of another checkout of the package too (an
   older commit, e.g. from ``git archive``), alternating with this one's, launch by launch.

    nice -n 5 .venv/bin/python bench/cold_start.py
    nice -n 5 .venv/bin/python bench/cold_start.py --launches 5 --size 640x480
    git archive COMMIT | tar -x -C /tmp/before
    nice -n 5 .venv/bin/python bench/cold_start.py --compare-tree /tmp/before --launches 5
"""
import time

T_START = time.time()  # first: the phases' "interpreter start" ends here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_MODEL = REPO / "models" / "default.onnx"
LOG_LINE = re.compile(r"^\[INFO\] \[([0-9.]+)\] \[[^\]]*\]: (configured|active):", re.M)
PHASES = ("interpreter", "imports", "load", "warmup", "first_frame")
PHASE_NAMES = {"interpreter": "interpreter start", "imports": "imports (node module)",
               "load": "model load (onnxruntime session)", "warmup": "warm-up",
               "first_frame": "first frame (every output)"}


# -- the phases, in a child process --------------------------------------------------------------
def child(args: argparse.Namespace) -> int:
    """Walk the node's start-up path; print one JSON line of stamps (seconds since epoch)."""
    stamps = {"start": T_START}
    import lpcv_segmentation.node.segmentation_node  # noqa: F401  (what the node imports)
    stamps["imports"] = time.time()
    from lpcv_segmentation.runtime.segmenter import Segmenter
    segmenter = Segmenter(args.model, backend="onnxruntime", threads=args.threads)
    stamps["load"] = time.time()
    warmup_ms = _timed_warmup(segmenter)
    stamps["warmup"] = time.time()
    sys.path[:0] = [str(REPO / "test")]
    from scene import scene_rgb
    width, height = (int(v) for v in args.size.split("x"))
    rgb = scene_rgb(height, width)  # the camera's frame: not part of the node's start-up
    from lpcv_segmentation.node.config import PARAMETERS, check_config
    values = {spec.name: spec.default for spec in PARAMETERS}  # config/drone.yaml's values
    config = check_config(dict(values, model_path=args.model))
    frame_ms = [_frame(segmenter, rgb, config) for _ in range(1 + args.later_frames)]
    steady_ms = _timed_warmup(segmenter)  # the same blank calls once warm: the reference
    print(json.dumps({"stamps": stamps, "warmup_ms": warmup_ms, "frame_ms": frame_ms,
                      "steady_blank_ms": steady_ms,
                      "torch_imported": "torch" in sys.modules}), flush=True)
    return 0


def _timed_warmup(segmenter) -> List[float]:
    """``segmenter.warmup()`` as the node calls it, one call at a time, each timed (ms)."""
    times = []
    for _ in range(segmenter.WARMUP_ITERATIONS):
        start = time.perf_counter()
        segmenter.warmup(1)
        times.append(1000.0 * (time.perf_counter() - start))
    return times


def _frame(segmenter, rgb, config) -> float:
    """One frame as the node handles it with every output subscribed (ms)."""
    from lpcv_segmentation.core.imaging import numpy_to_image_msg
    from lpcv_segmentation.node.pipeline import Wanted, process_frame
    start = time.perf_counter()
    outputs = process_frame(segmenter, rgb, 0, 0, "cold", config.detection_class_ids,
                            config.min_region_area_px, Wanted(), config.overlay_alpha,
                            config.visual_max_side)
    for image, encoding in ((outputs.labels, "mono8"), (outputs.color, "rgb8"),
                            (outputs.overlay, "rgb8")):
        numpy_to_image_msg(image, encoding)
    json.dumps(outputs.detections)
    return 1000.0 * (time.perf_counter() - start)


def phases(args: argparse.Namespace) -> Dict[str, object]:
    """One fresh child process: its phases in ms."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", args.model,
               "--threads", str(args.threads), "--size", args.size]
    spawned = time.time()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=str(REPO))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError("the phase child failed (code %s):\n%s"
                           % (done.returncode, done.stderr[-2000:]))
    record = json.loads(lines[-1])
    stamps = record["stamps"]
    ms = {"interpreter": 1000.0 * (stamps["start"] - spawned),
          "imports": 1000.0 * (stamps["imports"] - stamps["start"]),
          "load": 1000.0 * (stamps["load"] - stamps["imports"]),
          "warmup": 1000.0 * (stamps["warmup"] - stamps["load"]),
          "first_frame": record["frame_ms"][0]}
    return {"ms": ms, "total_ms": sum(ms.values()), "warmup_calls_ms": record["warmup_ms"],
            "steady_blank_ms": min(record["steady_blank_ms"]),
            "later_frame_ms": statistics.median(record["frame_ms"][1:] or [float("nan")]),
            "torch_imported": record["torch_imported"]}


# -- end to end: the real node, a camera streaming before it starts -----------------------------
class Camera:
    """Streams the test scene on CAMERA_TOPIC and timestamps the first /seg/mask (this process,
    in the graph's domain)."""

    def __init__(self, env: Dict[str, str], width: int, height: int, rate: float) -> None:
        os.environ.update(env)  # the graph's domain and DDS profile, before rclpy starts
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from lpcv_segmentation.core.imaging import numpy_to_image_msg
        from node_graph import CAMERA_TOPIC, scene_rgb
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("cold_start_camera", context=self.context)
        self.frame = numpy_to_image_msg(scene_rgb(height, width), "rgb8")
        self.frame.header.frame_id = "cold_start"
        self.publisher = self.node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
        self.first_mask: Optional[float] = None
        self.node.create_subscription(Image, "/seg/mask", self._on_mask,
                                      QoSProfile(depth=5,
                                                 reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_timer(1.0 / rate, self._send)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        self.frame.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(self.frame)

    def _on_mask(self, _msg) -> None:
        if self.first_mask is None:
            self.first_mask = time.time()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shut down under the spin
                return

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)


def end_to_end(args: argparse.Namespace, work: Path, index: int, repo: Path = REPO
               ) -> Dict[str, object]:
    """Launch the node of ``repo`` with the camera streaming; seconds to the first mask."""
    sys.path[:0] = [str(BENCH)]
    from node_graph import NodeGraph
    width, height = (int(v) for v in args.size.split("x"))
    graph = NodeGraph(work / ("launch%d_%s" % (index, repo.name)), args.model, "onnxruntime",
                      params={"threads": args.threads}, listener=False, repo=repo)
    camera = Camera(graph.env, width, height, args.rate)
    try:
        time.sleep(1.0)  # the camera is up and streaming before the launch
        launched = time.time()
        graph.start(timeout=120)  # returns once the node logs that it is segmenting
        active = time.time()
        deadline = time.time() + 60
        while camera.first_mask is None and time.time() < deadline:
            time.sleep(0.005)
        if camera.first_mask is None:
            raise RuntimeError("no mask within 60 s of the node's start:\n%s" % graph.log_tail())
        logged = _log_stamps(graph.node_log())
        return {"launch_to_mask_ms": 1000.0 * (camera.first_mask - launched),
                "launch_to_configured_ms": _ms_between(launched, logged.get("configured")),
                "launch_to_active_ms": _ms_between(launched, logged.get("active")),
                "active_to_mask_ms": _ms_between(logged.get("active"), camera.first_mask),
                "start_returned_ms": 1000.0 * (active - launched)}
    finally:
        graph.close()
        camera.close()


def _log_stamps(log: str) -> Dict[str, float]:
    """Seconds since epoch of the node's "configured:" (model loaded and warm) and "active:"
    (subscribed to the camera) log lines, from the ROS log format ``[INFO] [<stamp>] [...]``."""
    stamps: Dict[str, float] = {}
    for match in LOG_LINE.finditer(log):
        stamps.setdefault(match.group(2), float(match.group(1)))
    return stamps


def _ms_between(begin: Optional[float], end: Optional[float]) -> Optional[float]:
    return None if begin is None or end is None else 1000.0 * (end - begin)


# -- report -----------------------------------------------------------------------------------
def run(args: argparse.Namespace, work: Path) -> Dict[str, object]:
    runs = []
    for index in range(args.launches):
        runs.append(phases(args))
        print("phases %d: %s" % (index + 1, {k: round(v) for k, v in runs[-1]["ms"].items()}),
              file=sys.stderr, flush=True)
    ends: List[Dict[str, object]] = []
    compared: List[Dict[str, object]] = []
    other = Path(args.compare_tree).resolve() if args.compare_tree else None
    for index in range(args.launches if args.end_to_end else 0):
        kinds = [(REPO, ends)] + ([(other, compared)] if other else [])
        for repo, into in kinds[::1 if index % 2 == 0 else -1]:  # each goes first in turn
            into.append(end_to_end(args, work, index, repo))
            print("end to end %d (%s): %.0f ms" % (index + 1, repo,
                                                   into[-1]["launch_to_mask_ms"]),
                  file=sys.stderr, flush=True)
    from common import load_average
    return {"model": args.model, "threads": args.threads, "size": args.size,
            "launches": args.launches, "rate": args.rate, "phases": runs, "end_to_end": ends,
            "compare_tree": None if other is None else str(other),
            "end_to_end_compared": compared, "load_average": load_average()}


def section(result: Dict[str, object]) -> str:
    from report import fmt, markdown_table
    runs = result["phases"]

    def median(values: List[float]) -> float:
        return statistics.median(values)

    rows = []
    for phase in PHASES:
        values = [r["ms"][phase] for r in runs]
        rows.append([PHASE_NAMES[phase], fmt(median(values), "%.0f"),
                     fmt(min(values), "%.0f"), fmt(max(values), "%.0f")])
    totals = [r["total_ms"] for r in runs]
    rows.append(["**launch to first mask, no ROS graph**", "**%s**" % fmt(median(totals), "%.0f"),
                 fmt(min(totals), "%.0f"), fmt(max(totals), "%.0f")])
    steps = (("launch_to_configured_ms", "real node: launch to configured (model loaded, warm)"),
             ("launch_to_active_ms", "real node: launch to active (taking frames)"),
             ("active_to_mask_ms", "real node: active to first mask"),
             ("launch_to_mask_ms", "**launch to first mask, the real node, camera streaming**"))
    for ends, tree in ((result["end_to_end"], None),
                       (result.get("end_to_end_compared") or [], result.get("compare_tree"))):
        for key, name in steps if ends else ():
            values = [e[key] for e in ends if e[key] is not None]
            if values:
                bold = "**%s**" if name.startswith("**") else "%s"
                label = name if tree is None else bold % ("%s, the node of %s"
                                                          % (name.strip("*"), tree))
                rows.append([label, bold % fmt(median(values), "%.0f"), fmt(min(values), "%.0f"),
                             fmt(max(values), "%.0f")])
    warm_calls = [r["warmup_calls_ms"] for r in runs]
    calls = ["%s" % " / ".join(fmt(c, "%.1f") for c in call) for call in warm_calls]
    text = [
        "Model %s, ONNX Runtime, %d thread(s), %s frames, %d fresh launches of each kind "
        "(medians, min, max in ms); 1-minute load average at the end %s. Phases: one fresh "
        "process walking the node's start-up path (module docstring of bench/cold_start.py); "
        "end to end: `python -m lpcv_segmentation.node` with config/drone.yaml launched while "
        "a camera streams the test scene at %.0f Hz, to the first /seg/mask received." % (
            result["model"], result["threads"], result["size"], result["launches"],
            fmt(result["load_average"], "%.1f"), result["rate"]),
        markdown_table(["phase", "median ms", "min", "max"], rows),
        "Warm-up calls (ms, each launch): %s; the same blank call once warm: %s ms; a frame "
        "once warm (every output): %s ms; torch imported on this path: %s." % (
            "; ".join(calls), fmt(median([r["steady_blank_ms"] for r in runs]), "%.1f"),
            fmt(median([r["later_frame_ms"] for r in runs]), "%.1f"),
            "yes" if any(r["torch_imported"] for r in runs) else "no"),
    ]
    return "\n\n".join(text)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="ONNX model file")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--size", default="512x512", metavar="WxH", help="camera frame size")
    parser.add_argument("--launches", type=int, default=3, help="fresh launches of each kind")
    parser.add_argument("--later-frames", type=int, default=5,
                        help="frames timed after the first (what a warm frame costs)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz), end to end")
    parser.add_argument("--compare-tree", default=None, metavar="DIR",
                        help="also launch the node of this checkout, alternating (end to end)")
    parser.add_argument("--no-end-to-end", dest="end_to_end", action="store_false",
                        help="phases only (no ROS graph)")
    parser.add_argument("--work", default=None, help="folder for logs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO), str(BENCH)]
    if args.child:
        return child(args)
    if not Path(args.model).is_file():
        print("not available: %s missing" % args.model)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_cold_start_") as tmp:
        result = run(args, Path(args.work or tmp))
    from report import finish
    return finish("Cold start", section(result), [], args.json, {"result": result})


if __name__ == "__main__":
    sys.exit(main())
