"""Replay a flight bag and measure what the segmentation would deliver.

Two modes over a bag holding /camera/image_raw (rgb8) and /camera/gt_mask (mono8 class
indices, same stamp), as ``python -m training dataset-to-bag`` writes it:

  offline  read each frame and run the ``Segmenter`` on it here: accuracy (mean IoU, Dice)
           and the model's own latency (pre-processing + inference + post-processing).
  live     play the camera topic into a ROS 2 graph at the recorded rate (times --rate)
           against a running segmentation_node (started here, or --node-running), listen to
           /seg/mask and /seg/detections, pair each output to its frame by header stamp and
           report what a flight would see: accuracy against the ground truth, end-to-end
           latency (publish -> mask received), output rate, and the frames that never came
           back (dropped by the node for a newer one, rejected, or lost on the way).

Frames are re-stamped with the time they are played, as a camera stamps its frames, so the
node's own end-to-end figures in /diagnostics mean the same thing in a replay.

Examples:
  python -m lpcv_segmentation.bag_eval --bag flight --json offline.json --mode offline
  python -m lpcv_segmentation.bag_eval --bag flight --json live.json --mode live \\
      --model models/default.onnx --record flight_outputs --overlays out/overlays

The JSON holds at least: mode, frames, frames_out, dropped, rejected, miou, dice,
latency_ms {p50, p95, max, mean}; see docs/replay.md for every key.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from .bagio import (CAMERA_TOPIC, DETECTIONS_TOPIC, GT_TOPIC, MASK_TOPIC, BagError, BagWriter,
                    Frame, FrameReader, stamp_to_ns)
from .classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, palette
from .fileio import write_json_atomic
from .imaging import overlay
from .metrics import SegmentationMetrics

MODES = ("offline", "live")
NODE_MODULE = "lpcv_segmentation.node"
DEFAULT_NODE_NAME = "/segmentation_node"
DIAGNOSTIC_COUNTERS = ("frames_received", "frames_processed", "frames_dropped",
                       "frames_rejected")
PROFILE_NAME = "fastdds_large_frames.xml"
PARAMS_NAME = "drone.yaml"
PANEL_MIN_TILE = 192  # px: overlay tiles are enlarged (nearest) to at least this width


class EvalError(RuntimeError):
    """The replay cannot run or finish (no model, the node did not start or died, ...)."""


# --------------------------------------------------------------------------------------------
# Files the evaluation needs
# --------------------------------------------------------------------------------------------
def _config_file(name: str) -> Optional[Path]:
    """config/<name> of the installed package, else of this source tree."""
    from .node_config import package_share_dir
    share = package_share_dir()
    for base in ([share] if share is not None else []) + [Path(__file__).resolve().parent.parent]:
        candidate = base / "config" / name
        if candidate.is_file():
            return candidate
    return None


def resolve_model(model: Optional[str]) -> str:
    """``model`` or the shipped default model; EvalError naming the file when it is missing."""
    from .node_config import default_model_path
    path = Path(model) if model else default_model_path()
    if not path.is_file():
        hint = ("" if model else "; build it with `python -m training default-model` "
                "or pass --model")
        raise EvalError("no model file at %s%s" % (path, hint))
    return str(path)


# --------------------------------------------------------------------------------------------
# Scoring, shared by both modes
# --------------------------------------------------------------------------------------------
def latency_stats(values_ms: Sequence[float]) -> Optional[Dict[str, float]]:
    """{"p50", "p95", "max", "mean"} in ms, or None for no values."""
    if not len(values_ms):
        return None
    values = np.asarray(values_ms, dtype=np.float64)
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "max": round(float(values.max()), 3), "mean": round(float(values.mean()), 3)}


def spread_indices(total: int, count: int) -> List[int]:
    """``count`` frame indices spread evenly over ``total`` frames (first and last included)."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted(set(int(round(i)) for i in np.linspace(0, total - 1, count)))


def _title(image: np.ndarray, text: str) -> np.ndarray:
    strip = np.full((22, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def _legend(width: int, class_ids: Sequence[int]) -> np.ndarray:
    colors = palette()
    per_row = max(1, width // 210)
    rows = max(1, -(-len(class_ids) // per_row))
    legend = np.full((20 * rows + 6, width, 3), 255, np.uint8)
    for k, cid in enumerate(class_ids):
        x, y = 6 + (k % per_row) * 210, 5 + (k // per_row) * 20
        cv2.rectangle(legend, (x, y), (x + 14, y + 14), tuple(int(v) for v in colors[cid]), -1)
        cv2.rectangle(legend, (x, y), (x + 14, y + 14), (0, 0, 0), 1)
        cv2.putText(legend, CLASS_NAMES[cid], (x + 20, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return legend


def overlay_panel(rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                  caption: str = "") -> np.ndarray:
    """camera | ground truth | prediction (class colours over the image), with a legend of
    the classes present. RGB uint8."""
    gt_shown = np.where(gt == IGNORE_INDEX, 0, gt).astype(np.uint8)
    images = [rgb, overlay(rgb, gt_shown, 0.6), overlay(rgb, pred, 0.6)]
    scale = -(-PANEL_MIN_TILE // rgb.shape[1])  # small frames: enlarge so the titles fit
    if scale > 1:
        images = [cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
                  for image in images]
    tiles = [_title(image, title) for image, title in zip(
        images, ["camera" + (" " + caption if caption else ""), "ground truth", "prediction"])]
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)
    present = sorted(set(np.unique(gt_shown).tolist()) | set(np.unique(pred).tolist()))
    return np.concatenate([row, _legend(row.shape[1], [c for c in present if c])], axis=0)


class FrameScorer:
    """Accumulates accuracy over paired (prediction, ground truth) frames and writes the
    optional per-frame outputs: overlay panels, and prediction/label PNGs for the scorer."""

    def __init__(self, overlays_dir: Optional[Path] = None, overlay_indices: Sequence[int] = (),
                 dump_dir: Optional[Path] = None) -> None:
        self.metrics = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
        self.scored = 0
        self.without_gt = 0
        self.size_mismatch = 0
        self.overlays_dir = overlays_dir
        self.overlay_indices = set(overlay_indices)
        self.overlays: List[str] = []
        self.dump_dir = dump_dir
        if dump_dir is not None:
            (dump_dir / "pred").mkdir(parents=True, exist_ok=True)
            (dump_dir / "gt").mkdir(parents=True, exist_ok=True)
        if overlays_dir is not None:
            overlays_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def frame_name(index: int) -> str:
        return "frame_%06d.png" % index

    def add(self, index: int, pred: np.ndarray, gt: Optional[np.ndarray],
            rgb: Optional[np.ndarray] = None) -> bool:
        """Score one frame; False (counted, not scored) when it has no usable ground truth."""
        if gt is None:
            self.without_gt += 1
            return False
        if pred.shape != gt.shape:
            self.size_mismatch += 1
            return False
        self.metrics.update(pred, gt)
        self.scored += 1
        name = self.frame_name(index)
        if self.dump_dir is not None:
            cv2.imwrite(str(self.dump_dir / "pred" / name), pred)
            cv2.imwrite(str(self.dump_dir / "gt" / name), gt)
        if self.overlays_dir is not None and index in self.overlay_indices and rgb is not None:
            path = self.overlays_dir / name
            panel = overlay_panel(rgb, gt, pred, "#%d" % index)
            cv2.imwrite(str(path), np.ascontiguousarray(panel[..., ::-1]))
            self.overlays.append(str(path))
        return True

    def summary(self) -> Dict[str, object]:
        result = self.metrics.summary()
        return {"miou": result["miou"], "dice": result["dice"], "pixel_acc": result["pixel_acc"],
                "per_class_iou": result["per_class_iou"], "scored_frames": self.scored,
                "frames_without_gt": self.without_gt,
                "frames_size_mismatch": self.size_mismatch,
                "overlays": sorted(self.overlays)}


# --------------------------------------------------------------------------------------------
# Offline: the Segmenter on each frame, here
# --------------------------------------------------------------------------------------------
def evaluate_offline(bag: Path, model: Optional[str] = None, backend: str = "auto",
                     device: str = "cpu", precision: str = "fp32",
                     threads: Optional[int] = None, camera_topic: str = CAMERA_TOPIC,
                     gt_topic: str = GT_TOPIC, overlays_dir: Optional[Path] = None,
                     overlay_count: int = 4, dump_dir: Optional[Path] = None,
                     progress: bool = True) -> Dict[str, object]:
    """Accuracy and model latency of ``model`` on every frame of ``bag``."""
    from tqdm import tqdm

    from .runtime import RuntimeConfigError, Segmenter

    reader = FrameReader(bag, camera_topic, gt_topic)
    model_path = resolve_model(model)
    try:
        segmenter = Segmenter(model_path, backend=backend, device=device, precision=precision,
                              threads=threads)
    except RuntimeConfigError as error:
        raise EvalError("cannot load model %s: %s" % (model_path, error)) from None
    segmenter.warmup()
    scorer = FrameScorer(overlays_dir, spread_indices(len(reader), overlay_count), dump_dir)
    total_ms: List[float] = []
    inference_ms: List[float] = []
    frames = 0
    for frame in tqdm(reader, total=len(reader), desc="bag_eval offline", unit="frame",
                      disable=not progress):
        result = segmenter.segment(frame.rgb)
        frames += 1
        total_ms.append(sum(result.timings_ms.values()))
        inference_ms.append(result.timings_ms["inference"])
        scorer.add(frame.index, result.labels, frame.gt, frame.rgb)
    report: Dict[str, object] = {
        "mode": "offline", "bag": str(bag), "model": model_path,
        "backend": segmenter.backend_name, "device": segmenter.device,
        "precision": segmenter.precision, "input_size": segmenter.input_size,
        "frames": frames, "frames_out": frames, "dropped": 0, "rejected": 0, "lost": 0,
        "unpaired_gt": reader.unpaired_gt,
        "latency_ms": latency_stats(total_ms), "inference_ms": latency_stats(inference_ms),
        "latency_note": "model only: pre-processing + inference + post-processing per frame",
    }
    report.update(scorer.summary())
    return report


# --------------------------------------------------------------------------------------------
# Live: play the bag into a ROS 2 graph against the node
# --------------------------------------------------------------------------------------------
class _Sent:
    __slots__ = ("index", "gt", "rgb", "published")

    def __init__(self, index: int, gt: Optional[np.ndarray], rgb: Optional[np.ndarray],
                 published: float) -> None:
        self.index, self.gt, self.rgb, self.published = index, gt, rgb, published


class LiveListener:
    """The evaluator's side of the graph: publishes frames, pairs the node's outputs.

    Callbacks run on the executor's thread; ``lock`` guards everything they touch.
    """

    def __init__(self, node, camera_topic: str, mask_topic: str, detections_topic: str,
                 reliable_input: bool, node_name: str, scorer: FrameScorer,
                 recorder: Optional[BagWriter]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.node = node
        self.lock = threading.Lock()
        self.scorer = scorer
        self.recorder = recorder
        self.node_name = node_name
        camera_qos = (QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
                      if reliable_input else qos_profile_sensor_data)
        output_qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = node.create_publisher(Image, camera_topic, camera_qos)
        self.mask_sub = node.create_subscription(Image, mask_topic, self._on_mask, output_qos)
        self.detections_sub = node.create_subscription(String, detections_topic,
                                                       self._on_detections, output_qos)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.mask_topic = self.mask_sub.topic_name
        self.detections_topic = self.detections_sub.topic_name
        self.sent: Dict[int, _Sent] = {}  # stamp (ns) -> frame, until its mask arrives
        self.latencies_ms: List[float] = []
        self.output_times: List[float] = []
        self.publish_times: List[float] = []
        self.unpaired_outputs = 0
        self.bad_outputs = 0
        self.detection_messages = 0
        self.unpaired_detections = 0
        self.detections_per_class: Counter = Counter()
        self.frames_with_class: Counter = Counter()
        self.diagnostics: Optional[Dict[str, str]] = None
        self.diagnostics_time: Optional[float] = None
        self.last_event = time.monotonic()
        self._detection_stamps: set = set()

    # -- publishing ------------------------------------------------------------------------
    def publish(self, frame: Frame, keep_rgb: bool) -> None:
        from .imaging import numpy_to_image_msg

        msg = numpy_to_image_msg(frame.rgb, "rgb8")
        msg.header.frame_id = frame.frame_id
        with self.lock:
            stamp = self.node.get_clock().now().to_msg()
            while stamp_to_ns(stamp) in self.sent:  # stamps pair outputs: keep them unique
                stamp.nanosec += 1
            msg.header.stamp = stamp
            now = time.monotonic()
            self.sent[stamp_to_ns(stamp)] = _Sent(frame.index, frame.gt,
                                                  frame.rgb if keep_rgb else None, now)
            self.publish_times.append(now)
            self.last_event = now
        self.publisher.publish(msg)

    # -- callbacks -------------------------------------------------------------------------
    def _on_mask(self, msg) -> None:
        received = time.monotonic()
        stamp = stamp_to_ns(msg.header.stamp)
        with self.lock:
            if self.recorder is not None:
                self.recorder.write_image_msg(self.mask_topic, msg, time.time_ns())
            sent = self.sent.pop(stamp, None)
            if sent is None:  # not ours (another camera on the node?): counted, not waited for
                self.unpaired_outputs += 1
                return
            self.last_event = received
            if msg.encoding != "mono8" or len(msg.data) != msg.height * msg.step:
                self.bad_outputs += 1
                return
            pred = np.frombuffer(bytes(msg.data), np.uint8).reshape(
                msg.height, msg.step)[:, :msg.width]
            self.latencies_ms.append((received - sent.published) * 1000.0)
            self.output_times.append(received)
            self.scorer.add(sent.index, np.ascontiguousarray(pred), sent.gt, sent.rgb)

    def _on_detections(self, msg) -> None:
        with self.lock:
            if self.recorder is not None:
                self.recorder.write_string(self.detections_topic, msg.data, time.time_ns())
            self.detection_messages += 1
            try:
                payload = json.loads(msg.data)
                stamp = int(payload["stamp"]["sec"]) * 1000000000 + int(
                    payload["stamp"]["nanosec"])
                regions = payload["detections"]
            except (ValueError, KeyError, TypeError):
                self.unpaired_detections += 1
                return
            if stamp in self._detection_stamps:
                self.unpaired_detections += 1
                return
            self._detection_stamps.add(stamp)
            seen = set()
            for region in regions:
                name = str(region.get("class_name"))
                self.detections_per_class[name] += 1
                seen.add(name)
            for name in seen:
                self.frames_with_class[name] += 1

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if not all(key in values for key in DIAGNOSTIC_COUNTERS):
                continue
            if self.node_name and not status.name.startswith(self.node_name + ":"):
                continue
            with self.lock:
                self.diagnostics = values
                self.diagnostics_time = time.monotonic()

    # -- queries ---------------------------------------------------------------------------
    def counters(self) -> Optional[Dict[str, int]]:
        with self.lock:
            if self.diagnostics is None:
                return None
            return {key: int(self.diagnostics[key]) for key in DIAGNOSTIC_COUNTERS}

    def pending(self) -> int:
        with self.lock:
            return len(self.sent)


class NodeProcess:
    """A segmentation_node started for the replay: its command, log, start and stop."""

    def __init__(self, model: Optional[str], params_file: Optional[Path], camera_topic: str,
                 backend: Optional[str], log_path: Path, extra_params: Sequence[str] = ()) -> None:
        args = [sys.executable, "-m", NODE_MODULE, "--ros-args"]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        if model:
            args += ["-p", "model_path:=%s" % model]
        if backend:
            args += ["-p", "backend:=%s" % backend]
        args += ["-p", "input_topic:=%s" % camera_topic]
        for param in extra_params:
            args += ["-p", param]
        self.args = args
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=os.environ.copy())

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise EvalError("segmentation node exited with code %d before the replay ended; "
                            "its log (%s) ends with:\n%s" % (code, self.log_path, self.log_tail()))

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGINT (a clean shutdown), then SIGKILL if it hangs; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def _use_large_frames_profile() -> Optional[str]:
    """Point Fast DDS at the large-frame profile unless the user chose one already.

    Must run before rclpy creates its participant; the node started here inherits it.
    """
    if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
    profile = _config_file(PROFILE_NAME)
    if profile is not None:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
        return str(profile)
    return None


def _wait(condition, timeout: float, node: Optional[NodeProcess], period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if node is not None:
            node.check_alive()
        time.sleep(period)
    return condition()


def _rate_hz(times: Sequence[float]) -> Optional[float]:
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) / (times[-1] - times[0]), 3)


def evaluate_live(bag: Path, model: Optional[str] = None, rate: float = 1.0,
                  start_node: bool = True, backend: Optional[str] = None,
                  params_file: Optional[Path] = None, node_params: Sequence[str] = (),
                  node_name: str = DEFAULT_NODE_NAME, node_log: Optional[Path] = None,
                  camera_topic: str = CAMERA_TOPIC, gt_topic: str = GT_TOPIC,
                  mask_topic: str = MASK_TOPIC, detections_topic: str = DETECTIONS_TOPIC,
                  reliable_input: bool = False, record: Optional[Path] = None,
                  overlays_dir: Optional[Path] = None, overlay_count: int = 4,
                  dump_dir: Optional[Path] = None, startup_timeout: float = 60.0,
                  drain_timeout: float = 5.0, large_frames_profile: bool = True,
                  progress: bool = True) -> Dict[str, object]:
    """Play ``bag`` against the node and report accuracy, latency, rate and frame losses."""
    if not rate > 0:
        raise EvalError("--rate must be > 0, got %r" % (rate,))
    reader = FrameReader(bag, camera_topic, gt_topic)
    model_path = resolve_model(model) if (start_node or model) else None
    if record is not None and record.exists():
        raise EvalError("%s already exists; --record never overwrites a bag" % record)
    if params_file is None and start_node:
        params_file = _config_file(PARAMS_NAME)
    profile = _use_large_frames_profile() if large_frames_profile else None

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    overlay_indices = spread_indices(len(reader), overlay_count)
    scorer = FrameScorer(overlays_dir, overlay_indices, dump_dir)
    recorder = BagWriter(record) if record is not None else None
    node_process: Optional[NodeProcess] = None
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    ros_node = rclpy.create_node("bag_eval_player", context=context)
    spin_thread = threading.Thread(target=executor.spin, name="bag_eval_spin", daemon=True)
    node_exit: Optional[int] = None
    try:
        listener = LiveListener(ros_node, camera_topic, mask_topic, detections_topic,
                                reliable_input, node_name, scorer, recorder)
        executor.add_node(ros_node)
        spin_thread.start()
        if start_node:
            log = node_log or Path(bag).with_name(Path(bag).name + ".node.log")
            node_process = NodeProcess(model_path, params_file, listener.publisher.topic_name,
                                       backend, log, node_params)

        # Ready when the node's subscription has matched our publisher and our mask
        # subscription has matched its publisher (the node opens topics after loading the model).
        def ready() -> bool:
            return (listener.publisher.get_subscription_count() > 0
                    and listener.mask_sub.get_publisher_count() > 0)
        if not _wait(ready, startup_timeout, node_process):
            raise EvalError("no segmentation node subscribed to %s and published %s within %.0f s"
                            "%s" % (listener.publisher.topic_name, listener.mask_topic,
                                    startup_timeout,
                                    "" if node_process is None else
                                    "; node log %s:\n%s" % (node_process.log_path,
                                                            node_process.log_tail())))
        # Counters before the replay (non-zero when the node was already running).
        _wait(lambda: listener.counters() is not None, 3.0, node_process)
        baseline = listener.counters() or {key: 0 for key in DIAGNOSTIC_COUNTERS}
        time.sleep(0.2)  # let the matched endpoints settle on both sides

        frames = _play(reader, listener, rate, set(overlay_indices), node_process, progress)
        play_end = time.monotonic()

        # Drain: until every frame is paired or the node's counters account for it (dropped,
        # rejected), or nothing arrived for drain_timeout seconds (frames lost on the way).
        def drained() -> bool:
            if listener.pending() == 0:
                return True
            with listener.lock:
                if time.monotonic() - listener.last_event > drain_timeout:
                    return True
                fresh = (listener.diagnostics_time or 0.0) > play_end
            counters = listener.counters()
            if not fresh or counters is None:
                return False
            d = {key: counters[key] - baseline[key] for key in DIAGNOSTIC_COUNTERS}
            settled = d["frames_processed"] + d["frames_dropped"] + d["frames_rejected"]
            with listener.lock:
                answered = len(listener.latencies_ms) + listener.bad_outputs
            return (d["frames_received"] >= frames and settled >= d["frames_received"]
                    and answered >= d["frames_processed"])
        _wait(drained, 3600.0, node_process)
        drain_end = time.monotonic()
        # Final counters: a diagnostics message sent after the last output.
        _wait(lambda: (listener.diagnostics_time or 0.0) > drain_end, 3.0, node_process)
        final = listener.counters()
    finally:
        if node_process is not None:
            node_exit = node_process.stop()
        executor.shutdown(timeout_sec=2.0)
        ros_node.destroy_node()
        rclpy.try_shutdown(context=context)
        if spin_thread.ident is not None:
            spin_thread.join(timeout=2.0)
        if recorder is not None:
            recorder.close()

    def delta(key: str) -> Optional[int]:
        return None if final is None else final[key] - baseline[key]

    frames_out = len(listener.latencies_ms)
    dropped, rejected, received = (delta("frames_dropped"), delta("frames_rejected"),
                                   delta("frames_received"))
    report: Dict[str, object] = {
        "mode": "live", "bag": str(bag), "model": model_path,
        "frames": frames, "frames_out": frames_out,
        "dropped": dropped, "rejected": rejected,
        "frames_received_by_node": received,
        "lost": None if received is None else max(0, frames - received),
        "frames_unanswered": frames - frames_out,
        "unpaired_outputs": listener.unpaired_outputs,
        "bad_outputs": listener.bad_outputs,
        "unpaired_gt": reader.unpaired_gt,
        "latency_ms": latency_stats(listener.latencies_ms),
        "latency_note": "end to end: frame published -> its /seg/mask received, same machine",
        "recorded_rate_hz": (round((len(reader) - 1) / (reader.duration_ns / 1e9), 3)
                             if reader.duration_ns > 0 and len(reader) > 1 else None),
        "rate_factor": rate,
        "input_rate_hz": _rate_hz(listener.publish_times),
        "output_rate_hz": _rate_hz(listener.output_times),
        "play_s": round(play_end - listener.publish_times[0], 3) if listener.publish_times
        else 0.0,
        "detections": {"messages": listener.detection_messages,
                       "unpaired": listener.unpaired_detections,
                       "per_class": dict(sorted(listener.detections_per_class.items())),
                       "frames_with_class": dict(sorted(listener.frames_with_class.items()))},
        "node": {"started_here": start_node, "name": node_name,
                 "exit_code": node_exit,
                 "log": None if node_process is None else str(node_process.log_path),
                 "command": None if node_process is None else node_process.args,
                 "diagnostics": listener.diagnostics,
                 "fastdds_profile": profile},
        "record": None if record is None else str(record),
    }
    report.update(scorer.summary())
    return report


def _play(reader: FrameReader, listener: LiveListener, rate: float, keep_rgb: set,
          node_process: Optional[NodeProcess], progress: bool) -> int:
    """Publish every frame at its recorded time / rate; returns how many were sent."""
    from tqdm import tqdm

    first_stamp: Optional[int] = None
    start = 0.0
    frames = 0
    for frame in tqdm(reader, total=len(reader), desc="bag_eval live", unit="frame",
                      disable=not progress):
        if first_stamp is None:
            first_stamp, start = frame.stamp_ns, time.monotonic()
        due = start + (frame.stamp_ns - first_stamp) / 1e9 / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if node_process is not None:
            node_process.check_alive()
        listener.publish(frame, frame.index in keep_rgb)
        frames += 1
    return frames


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "%.*f" % (digits, value)
    return str(value)


def summary_lines(report: Dict[str, object]) -> List[str]:
    """A short human-readable summary of a report."""
    latency = report.get("latency_ms") or {}
    lines = ["%s replay of %s" % (report["mode"], report["bag"]),
             "  frames %s  outputs %s  dropped %s  rejected %s  lost %s"
             % (report["frames"], report["frames_out"], _fmt(report.get("dropped")),
                _fmt(report.get("rejected")), _fmt(report.get("lost"))),
             "  mIoU %s  Dice %s  pixel acc %s  (%s frames scored)"
             % (_fmt(report.get("miou")), _fmt(report.get("dice")),
                _fmt(report.get("pixel_acc")), report.get("scored_frames")),
             "  latency ms p50 %s  p95 %s  max %s  (%s)"
             % (_fmt(latency.get("p50"), 1), _fmt(latency.get("p95"), 1),
                _fmt(latency.get("max"), 1), report.get("latency_note"))]
    if report["mode"] == "live":
        lines.append("  rate Hz: recorded %s x %s, played %s, output %s"
                     % (_fmt(report.get("recorded_rate_hz"), 2), _fmt(report.get("rate_factor")),
                        _fmt(report.get("input_rate_hz"), 2),
                        _fmt(report.get("output_rate_hz"), 2)))
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lpcv_segmentation.bag_eval",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bag", type=Path, required=True, help="rosbag2 directory to replay")
    parser.add_argument("--json", type=Path, required=True, metavar="OUT.json",
                        help="write the report here")
    parser.add_argument("--mode", choices=MODES, default="offline",
                        help="offline: Segmenter here; live: against the node (default: "
                             "%(default)s)")
    parser.add_argument("--model", default=None,
                        help="model file (default: the shipped models/default.onnx)")
    parser.add_argument("--backend", default=None,
                        help="back end: auto, onnxruntime, pytorch, tensorrt (default: auto; "
                             "live: the params file's)")
    parser.add_argument("--device", default="cpu", help="offline: cpu or cuda (default: cpu)")
    parser.add_argument("--precision", default="fp32", help="offline: fp32, fp16 or int8")
    parser.add_argument("--threads", type=int, default=None, help="offline: inference threads")
    parser.add_argument("--rate", type=float, default=1.0, metavar="X",
                        help="live: play at the recorded rate times X (default: %(default)s)")
    parser.add_argument("--record", type=Path, default=None, metavar="OUT_BAG",
                        help="live: write the node's /seg/mask and /seg/detections to this bag")
    parser.add_argument("--node-running", action="store_true",
                        help="live: use the segmentation_node already running in this ROS graph "
                             "instead of starting one")
    parser.add_argument("--params-file", type=Path, default=None,
                        help="live: node parameters (default: config/drone.yaml)")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="live: extra node parameter (repeatable)")
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME,
                        help="live: fully qualified node name whose /diagnostics to read "
                             "(default: %(default)s)")
    parser.add_argument("--node-log", type=Path, default=None,
                        help="live: node log file (default: OUT.node.log beside --json)")
    parser.add_argument("--reliable", action="store_true",
                        help="live: publish the camera reliably (for input_qos:=reliable)")
    parser.add_argument("--camera-topic", default=CAMERA_TOPIC)
    parser.add_argument("--gt-topic", default=GT_TOPIC)
    parser.add_argument("--mask-topic", default=MASK_TOPIC)
    parser.add_argument("--detections-topic", default=DETECTIONS_TOPIC)
    parser.add_argument("--overlays", type=Path, default=None, metavar="DIR",
                        help="write camera | ground truth | prediction PNGs of a few frames")
    parser.add_argument("--overlay-count", type=int, default=4,
                        help="how many overlay PNGs, spread over the flight (default: 4)")
    parser.add_argument("--dump", type=Path, default=None, metavar="DIR",
                        help="write DIR/pred/frame_N.png and DIR/gt/frame_N.png of every "
                             "scored frame (for `python -m training score`)")
    parser.add_argument("--startup-timeout", type=float, default=60.0,
                        help="live: seconds to wait for the node (default: %(default)s)")
    parser.add_argument("--drain-timeout", type=float, default=5.0,
                        help="live: seconds without output after which the missing outputs "
                             "are given up (default: %(default)s)")
    parser.add_argument("--no-large-frames-profile", action="store_true",
                        help="live: do not set FASTDDS_DEFAULT_PROFILES_FILE to "
                             "config/fastdds_large_frames.xml")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Run the evaluation the arguments ask for; raises BagError or EvalError."""
    if args.mode == "offline":
        return evaluate_offline(args.bag, args.model, backend=args.backend or "auto",
                                device=args.device, precision=args.precision,
                                threads=args.threads, camera_topic=args.camera_topic,
                                gt_topic=args.gt_topic, overlays_dir=args.overlays,
                                overlay_count=args.overlay_count, dump_dir=args.dump,
                                progress=not args.quiet)
    return evaluate_live(args.bag, args.model, rate=args.rate,
                         start_node=not args.node_running, backend=args.backend,
                         params_file=args.params_file, node_params=args.node_param,
                         node_name=args.node_name,
                         node_log=args.node_log or args.json.with_suffix(".node.log"),
                         camera_topic=args.camera_topic, gt_topic=args.gt_topic,
                         mask_topic=args.mask_topic, detections_topic=args.detections_topic,
                         reliable_input=args.reliable, record=args.record,
                         overlays_dir=args.overlays, overlay_count=args.overlay_count,
                         dump_dir=args.dump, startup_timeout=args.startup_timeout,
                         drain_timeout=args.drain_timeout,
                         large_frames_profile=not args.no_large_frames_profile,
                         progress=not args.quiet)


def write_report(path: Path, report: Dict[str, object]) -> None:
    """Write atomically, so a reader never sees half a file."""
    write_json_atomic(path, report)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (BagError, EvalError) as error:
        print("bag_eval: error: %s" % error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bag_eval: interrupted; no report written", file=sys.stderr)
        return 130
    write_report(args.json, report)
    for line in summary_lines(report):
        print(line)
    print("wrote %s" % args.json)
    if report["frames"] and not report["frames_out"]:
        print("bag_eval: error: %d frames played, no output paired to any of them"
              % report["frames"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
