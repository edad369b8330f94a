"""The live replay: play a flight bag into a ROS 2 graph against the segmentation node
(started here with the package's node-process harness, or already running), pair each output
to its frame by header stamp, and report what a flight would see. Options: ``LiveOptions``."""
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lpcv_segmentation.replay.bagio import (CAMERA_TOPIC, DETECTIONS_TOPIC, GT_TOPIC, MASK_TOPIC,
                                            BagWriter, Frame, FrameReader, stamp_to_ns)
from lpcv_segmentation.replay.node_process import NodeProcess, NodeProcessError, config_file, large_frames_profile
from lpcv_segmentation.replay.scoring import EvalError, FrameScorer, latency_stats, resolve_model, spread_indices

__all__ = ["LiveOptions", "LiveListener", "evaluate_live", "DEFAULT_NODE_NAME"]

DEFAULT_NODE_NAME = "/segmentation_node"
DIAGNOSTIC_COUNTERS = ("frames_received", "frames_processed", "frames_dropped",
                       "frames_rejected")
PARAMS_NAME = "drone.yaml"


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
        from lpcv_segmentation.core.imaging import numpy_to_image_msg

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
    def taking_frames(self) -> bool:
        """The node's newest /diagnostics say it segments the frames it gets (a node without
        that key, from before it had one, is taken at its word once it publishes)."""
        with self.lock:
            return (self.diagnostics is not None
                    and self.diagnostics.get("taking_frames", "true") == "true")

    def counters(self) -> Optional[Dict[str, int]]:
        with self.lock:
            if self.diagnostics is None:
                return None
            return {key: int(self.diagnostics[key]) for key in DIAGNOSTIC_COUNTERS}

    def pending(self) -> int:
        with self.lock:
            return len(self.sent)


def _use_large_frames_profile() -> Optional[str]:
    """Point Fast DDS at the large-frame profile unless the user chose one already.

    Must run before rclpy creates its participant; the node started here inherits it.
    """
    if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
    profile = large_frames_profile()
    if profile is not None:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
        return str(profile)
    return None


def _check_alive(node: NodeProcess) -> None:
    try:
        node.check_alive("the replay")
    except NodeProcessError as error:
        raise EvalError(str(error)) from None


def _wait(condition, timeout: float, node: Optional[NodeProcess], period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if node is not None:
            _check_alive(node)
        time.sleep(period)
    return condition()


def _rate_hz(times: Sequence[float]) -> Optional[float]:
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) / (times[-1] - times[0]), 3)


@dataclass
class LiveOptions:
    """How a live replay runs (the command line's live options; defaults as there)."""
    model: Optional[str] = None  # None: the shipped default model (when the node starts here)
    rate: float = 1.0  # play at the recorded rate times this
    start_node: bool = True  # False: use the node already running in this ROS graph
    backend: Optional[str] = None  # None: the params file's
    params_file: Optional[Path] = None  # None: config/drone.yaml
    node_params: Sequence[str] = ()  # extra "name:=value" node parameters
    node_name: str = DEFAULT_NODE_NAME  # whose /diagnostics to read
    node_log: Optional[Path] = None  # None: <bag>.node.log beside the bag
    camera_topic: str = CAMERA_TOPIC
    gt_topic: str = GT_TOPIC
    mask_topic: str = MASK_TOPIC
    detections_topic: str = DETECTIONS_TOPIC
    reliable_input: bool = False  # publish the camera reliably (for input_qos:=reliable)
    record: Optional[Path] = None  # write the node's outputs to this new bag
    overlays_dir: Optional[Path] = None
    overlay_count: int = 4
    dump_dir: Optional[Path] = None
    startup_timeout: float = 60.0
    drain_timeout: float = 5.0  # seconds without output after which missing ones are given up
    large_frames_profile: bool = True
    progress: bool = True


def evaluate_live(bag: Path, options: Optional[LiveOptions] = None,
                  **overrides: Any) -> Dict[str, object]:
    """Play ``bag`` against the node and report accuracy, latency, rate and frame losses.
    ``overrides`` replace fields of ``options`` (e.g. ``rate=2.0``)."""
    o = replace(options or LiveOptions(), **overrides)
    if not o.rate > 0:
        raise EvalError("--rate must be > 0, got %r" % (o.rate,))
    reader = FrameReader(bag, o.camera_topic, o.gt_topic)
    model_path = resolve_model(o.model) if (o.start_node or o.model) else None
    if o.record is not None and o.record.exists():
        raise EvalError("%s already exists; --record never overwrites a bag" % o.record)
    params_file = o.params_file
    if params_file is None and o.start_node:
        params_file = config_file(PARAMS_NAME)
    profile = _use_large_frames_profile() if o.large_frames_profile else None

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    overlay_indices = spread_indices(len(reader), o.overlay_count)
    scorer = FrameScorer(o.overlays_dir, overlay_indices, o.dump_dir)
    recorder = BagWriter(o.record) if o.record is not None else None
    node_process: Optional[NodeProcess] = None
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    ros_node = rclpy.create_node("bag_eval_player", context=context)
    spin_thread = threading.Thread(target=executor.spin, name="bag_eval_spin", daemon=True)
    node_exit: Optional[int] = None
    try:
        listener = LiveListener(ros_node, o.camera_topic, o.mask_topic, o.detections_topic,
                                o.reliable_input, o.node_name, scorer, recorder)
        executor.add_node(ros_node)
        spin_thread.start()
        if o.start_node:
            log = o.node_log or Path(bag).with_name(Path(bag).name + ".node.log")
            node_process = NodeProcess(dict(os.environ), log, model=model_path,
                                       backend=o.backend,
                                       input_topic=listener.publisher.topic_name,
                                       params_file=params_file, params=list(o.node_params))

        # Ready when the node's subscription has matched our publisher, our mask subscription
        # has matched its publisher, and its /diagnostics say it takes frames (it opens its
        # topics before loading the model, and ignores frames until it is active).
        def ready() -> bool:
            return (listener.publisher.get_subscription_count() > 0
                    and listener.mask_sub.get_publisher_count() > 0
                    and listener.taking_frames())
        if not _wait(ready, o.startup_timeout, node_process):
            raise EvalError("no segmentation node subscribed to %s and published %s within %.0f s"
                            "%s" % (listener.publisher.topic_name, listener.mask_topic,
                                    o.startup_timeout,
                                    "" if node_process is None else
                                    "; node log %s:\n%s" % (node_process.log_path,
                                                            node_process.log_tail())))
        # Counters before the replay (non-zero when the node was already running).
        _wait(lambda: listener.counters() is not None, 3.0, node_process)
        baseline = listener.counters() or {key: 0 for key in DIAGNOSTIC_COUNTERS}
        time.sleep(0.2)  # let the matched endpoints settle on both sides

        frames = _play(reader, listener, o.rate, set(overlay_indices), node_process, o.progress)
        play_end = time.monotonic()

        # Drain: until every frame is paired or the node's counters account for it (dropped,
        # rejected), or nothing arrived for drain_timeout seconds (frames lost on the way).
        def drained() -> bool:
            if listener.pending() == 0:
                return True
            with listener.lock:
                if time.monotonic() - listener.last_event > o.drain_timeout:
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
        "rate_factor": o.rate,
        "input_rate_hz": _rate_hz(listener.publish_times),
        "output_rate_hz": _rate_hz(listener.output_times),
        "play_s": round(play_end - listener.publish_times[0], 3) if listener.publish_times
        else 0.0,
        "detections": {"messages": listener.detection_messages,
                       "unpaired": listener.unpaired_detections,
                       "per_class": dict(sorted(listener.detections_per_class.items())),
                       "frames_with_class": dict(sorted(listener.frames_with_class.items()))},
        "node": {"started_here": o.start_node, "name": o.node_name,
                 "exit_code": node_exit,
                 "log": None if node_process is None else str(node_process.log_path),
                 "command": None if node_process is None else node_process.args,
                 "diagnostics": listener.diagnostics,
                 "fastdds_profile": profile},
        "record": None if o.record is None else str(o.record),
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
            _check_alive(node_process)
        listener.publish(frame, frame.index in keep_rgb)
        frames += 1
    return frames
