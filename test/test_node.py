"""segmentation_node in a real ROS 2 graph: camera, node and listener are separate processes.

Two graphs, each in its own ROS domain with the shipped large-frame DDS profile:
- the tiny MobileViT ONNX model on raw images: outputs, headers, label info for a late
  subscriber, diagnostics, malformed frames, frames dropped when the camera outpaces it;
- an exact "palette" model on compressed images over reliable QoS: detections checked
  against the true regions of the frame, undecodable frames, and a clean SIGINT shutdown.
Start-up errors run the node alone. The whole module takes about a minute on 2 cores.
"""
import json
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest

from lpcv_segmentation.core.classes import DETECTION_CLASS_IDS, class_table, palette
from lpcv_segmentation.core.detections import class_coverage, detection_report, find_regions
from ros_helpers import (HELPERS, MALFORMED, REPO, random_domain_id, ros_env, scene_labels,
                         scene_rgb, start, stop, write_palette_model)

pytestmark = [pytest.mark.ros, pytest.mark.slow]

CAMERA_TOPIC = "/camera/image_raw"
# A region's own keys in pixels (the node adds its ground position and track, and the
# confidence, which these tests check apart).
PIXEL_KEYS = ("class_id", "class_name", "bbox", "centroid", "area_px", "area_fraction")
PARAMS = REPO / "config" / "drone.yaml"


class Graph:
    """A running node and listener, and what the listener has recorded so far."""

    def __init__(self, work: Path, env: Dict[str, str], node_args: List[str],
                 namespace: str = "/", listener_args: Sequence[str] = ()) -> None:
        self.work, self.env = work, env
        self.events_path = work / "listener" / "events.jsonl"
        self.node = start([sys.executable, "-m", "lpcv_segmentation.node.segmentation_node", "--ros-args",
                           "--params-file", str(PARAMS)] + node_args, env, work / "node.log")
        self.listener = start([sys.executable, str(HELPERS), "listen", "--out",
                               str(work / "listener"), "--namespace", namespace]
                              + list(listener_args),
                              env, work / "listener.log")

    def log(self) -> str:
        return (self.work / "node.log").read_text()

    def events(self, topic: Optional[str] = None) -> List[dict]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        events = [json.loads(line) for line in lines if line.endswith("}")]
        return [e for e in events if topic is None or e["topic"] == topic]

    def wait_for(self, what: str, found: Callable[[], object], timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = found()
            if result:
                return result
            assert self.node.poll() is None, "node exited (%s):\n%s" % (self.node.returncode,
                                                                        self.log())
            time.sleep(0.1)
        raise AssertionError("timed out waiting for %s; node log:\n%s" % (what, self.log()))

    def camera(self, *args: str) -> dict:
        """Run the camera process to completion; what it sent."""
        process = start([sys.executable, str(HELPERS), "camera", "--topic", CAMERA_TOPIC]
                        + list(args), self.env, self.work / "camera.log")
        assert process.wait(timeout=60) == 0, (self.work / "camera.log").read_text()
        return json.loads((self.work / "camera.log").read_text().strip().splitlines()[-1])

    def image(self, topic: str, frame_id: str) -> np.ndarray:
        return np.load(self.work / "listener" / ("%s__%s.npy" % (topic, frame_id)))

    def diagnostics(self, after: float = 0.0) -> Optional[Dict[str, str]]:
        """Values of the newest /diagnostics status received after ``after`` (time.time())."""
        for event in reversed(self.events("diagnostics")):
            if event["received"] > after:
                return dict(event["status"][0]["values"], _level=event["status"][0]["level"],
                            _message=event["status"][0]["message"],
                            _name=event["status"][0]["name"])
        return None

    def settled_counts(self, timeout: float = 30.0) -> Dict[str, int]:
        """Frame counters once every received frame has ended processed, dropped or rejected,
        from a /diagnostics message published after this call (not a stale one)."""
        called = time.time()

        def settled():
            values = self.diagnostics(after=called)
            if values is None:
                return None
            counts = {k: int(values["frames_" + k])
                      for k in ("received", "processed", "dropped", "rejected")}
            balanced = counts["received"] == (counts["processed"] + counts["dropped"]
                                              + counts["rejected"])
            return counts if balanced else None
        return self.wait_for("balanced frame counters", settled, timeout)

    def close(self) -> int:
        stop(self.listener)
        return stop(self.node)


def _wait_ready(graph: Graph) -> None:
    graph.wait_for("the node's label info", lambda: graph.events("label_info"), timeout=60)


@pytest.fixture(scope="module")
def graph(tmp_path_factory, tiny_onnx):
    work = tmp_path_factory.mktemp("node_graph")
    env = ros_env(random_domain_id())
    graph = Graph(work, env, ["-p", "model_path:=%s" % tiny_onnx, "-p", "backend:=onnxruntime",
                              "-p", "input_topic:=%s" % CAMERA_TOPIC, "-p", "log_period_s:=1.0"])
    _wait_ready(graph)
    yield graph
    graph.close()


def _by_frame(events: List[dict], frame_id: str) -> List[dict]:
    return [e for e in events if e.get("frame_id") == frame_id
            or e.get("data", {}).get("frame_id") == frame_id]


def test_outputs_carry_the_input_header_size_and_pixels(graph):
    # bgr8 with padded rows: the node must undo both to get the scene right.
    sent = graph.camera("--count", "3", "--rate", "5", "--qos", "reliable", "--width", "160",
                        "--height", "120", "--encoding", "bgr8", "--padding", "8",
                        "--frame-id", "keep_basic")
    outputs = {}
    for topic in ("mask", "color", "overlay", "detections"):
        outputs[topic] = graph.wait_for(
            topic, lambda: len(_by_frame(graph.events(topic), "keep_basic")) == 3
            and _by_frame(graph.events(topic), "keep_basic"))
    for topic, encoding, channels in (("mask", "mono8", 1), ("color", "rgb8", 3),
                                      ("overlay", "rgb8", 3)):
        for event in outputs[topic]:
            assert (event["width"], event["height"]) == (160, 120)
            assert event["encoding"] == encoding and event["step"] == 160 * channels
        assert sorted(e["stamp"] for e in outputs[topic]) == sorted(sent["stamps"])
    for event in outputs["detections"]:
        assert [event["data"]["stamp"]["sec"], event["data"]["stamp"]["nanosec"]] \
            in sent["stamps"]

    mask = graph.image("mask", "keep_basic")
    color = graph.image("color", "keep_basic")
    blend = graph.image("overlay", "keep_basic")
    assert mask.shape == (120, 160) and mask.max() < len(palette())
    np.testing.assert_array_equal(color, palette()[mask])
    camera = scene_rgb(120, 160)
    background = mask == 0
    np.testing.assert_array_equal(blend[background], camera[background])  # untouched pixels
    expected = 0.5 * camera.astype(float) + 0.5 * palette()[mask]
    assert np.abs(blend[~background] - expected[~background]).max() <= 1.0


def test_detections_agree_with_the_published_mask(graph):
    # Its own frame, so the test does not depend on another test having run first.
    graph.camera("--qos", "reliable", "--width", "160", "--height", "120",
                 "--frame-id", "keep_detections")
    report = graph.wait_for("detections", lambda: _by_frame(graph.events("detections"),
                                                            "keep_detections"))[-1]["data"]
    graph.wait_for("the mask", lambda: _by_frame(graph.events("mask"), "keep_detections"))
    mask = graph.image("mask", "keep_detections")
    # The node finds regions on the label map at the model's resolution (128 px here).
    expected = detection_report(mask, 0, 0, "keep_detections", DETECTION_CLASS_IDS, 64,
                                max_side=128)
    strip = lambda regions: [{k: v for k, v in r.items() if k in PIXEL_KEYS}  # noqa: E731
                             for r in regions]
    assert strip(report["detections"]) == strip(expected["detections"])
    assert report["coverage"] == expected["coverage"]
    assert (report["width"], report["height"], report["frame_id"]) == \
        (160, 120, "keep_detections")
    for region in report["detections"]:
        assert 0.0 < region["mean_confidence"] <= 1.0


def test_label_info_reaches_a_late_subscriber(graph, tmp_path):
    # The node publishes its label info once, at start-up; the late subscriber joins a second
    # after that, so it can only get it from the latched (transient local) sample.
    published = graph.events("label_info")
    assert len(published) == 1, published
    time.sleep(max(0.0, published[0]["received"] + 1.0 - time.time()))
    late = start([sys.executable, str(HELPERS), "listen", "--out", str(tmp_path)], graph.env,
                 tmp_path / "late.log")
    try:
        events = tmp_path / "events.jsonl"
        deadline = time.monotonic() + 30
        received = []
        while time.monotonic() < deadline and not received:
            if events.exists():
                received = [e for e in (json.loads(line) for line in
                                        events.read_text().splitlines() if line.endswith("}"))
                            if e["topic"] == "label_info"]
            time.sleep(0.1)
    finally:
        stop(late)
    assert received, (tmp_path / "late.log").read_text()
    assert received[0]["data"] == {"classes": class_table()}
    assert len(graph.events("label_info")) == 1  # not a fresh publication the late one caught


def test_diagnostics_report_plausible_figures(graph):
    begin = time.time()
    graph.camera("--count", "15", "--rate", "10", "--frame-id", "diag")
    values = graph.wait_for("diagnostics after the frames",
                            lambda: graph.diagnostics(after=begin + 1.0))
    assert values["_name"].startswith("/segmentation_node")
    assert values["_level"] in (0, 1, 2)
    assert values["backend"] == "onnxruntime" and values["input_topic"] == CAMERA_TOPIC
    assert float(values["input_rate_hz"]) > 0 and float(values["output_rate_hz"]) > 0
    for stage in ("conversion", "preprocess", "inference", "postprocess", "outputs",
                  "publish", "end_to_end"):
        p50, p95, peak = (float(values["latency_%s_%s_ms" % (stage, k)])
                          for k in ("p50", "p95", "max"))
        assert 0.0 <= p50 <= p95 <= peak < 60000.0, stage
    assert float(values["latency_inference_p50_ms"]) > 0.0
    assert 20.0 < float(values["resident_memory_mb"]) < 8000.0
    # The same summary reaches the node's log every log period (1 s here).
    graph.wait_for("a summary line in the log", lambda: "frames received" in graph.log())


def _published_summary(values: Dict[str, str]) -> dict:
    """The parts of a node summary that ``assess`` reads, rebuilt from published values."""
    number = lambda key: None if values[key] == "n/a" else float(values[key])  # noqa: E731
    end_to_end = {k: number("latency_end_to_end_%s_ms" % k) for k in ("p50", "p95", "max")}
    return {"seconds_since_input": number("seconds_since_input"),
            "window_received": int(values["window_received"]),
            "window_rejected": int(values["window_rejected"]),
            "output_rate_hz": float(values["output_rate_hz"]),
            "latency_ms": {"end_to_end": None if end_to_end["p95"] is None else end_to_end},
            "resident_memory_mb": number("resident_memory_mb")}


def _at_a_threshold(summary: dict, thresholds) -> bool:
    """A published figure (rounded to 0.01, memory to 0.1) within rounding of its threshold."""
    end_to_end = summary["latency_ms"]["end_to_end"]
    pairs = [(summary["output_rate_hz"], thresholds.min_output_rate_hz, 0.005),
             (summary["seconds_since_input"], thresholds.input_timeout_s, 0.005),
             (summary["resident_memory_mb"], thresholds.memory_warn_mb, 0.05)]
    if end_to_end is not None:
        pairs += [(end_to_end["p95"], thresholds.latency_warn_ms, 0.005),
                  (end_to_end["p95"], thresholds.latency_error_ms, 0.005)]
    return any(value is not None and abs(value - limit) <= margin
               for value, limit, margin in pairs)


def test_the_published_level_is_the_assessment_of_the_published_values(graph, tiny_onnx):
    from lpcv_segmentation.node.config import PARAMETERS, check_config
    from lpcv_segmentation.node.segmentation_node import Phase
    from lpcv_segmentation.node.stats import assess
    import yaml
    (section,) = yaml.safe_load(PARAMS.read_text()).values()
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    values = dict(defaults, **section["ros__parameters"])
    values["model_path"] = str(tiny_onnx)
    thresholds = check_config(values).thresholds
    begin = time.time()
    graph.camera("--count", "3", "--rate", "10", "--frame-id", "assessed")
    graph.wait_for("diagnostics after the frames", lambda: graph.diagnostics(after=begin + 0.5))
    phases = {Phase.LOADING_MODEL, Phase.BUILDING_ENGINE, Phase.WARMING_UP}
    checked = 0
    words = lambda text: re.sub(r"[0-9.]+", "#", text)  # noqa: E731  figures are rounded
    for event in graph.events("diagnostics"):
        (status,) = event["status"]
        if status["message"] in phases:
            continue
        summary = _published_summary(status["values"])
        if _at_a_threshold(summary, thresholds):
            continue  # the rounded figure cannot tell which side the node saw
        level, message = assess(summary, thresholds)
        assert (status["level"], words(status["message"])) == (level, words(message)), status
        checked += 1
    assert checked >= 2


def test_malformed_frames_are_counted_and_the_node_carries_on(graph):
    before = graph.settled_counts()
    kinds = [kind for kind in MALFORMED if kind != "undecodable"]  # raw input here
    graph.camera("--count", str(2 * len(kinds)), "--rate", "20", "--qos", "reliable",
                 "--malformed", ",".join(kinds), "--frame-id", "bad")
    graph.camera("--count", "1", "--qos", "reliable", "--frame-id", "keep_after")
    graph.wait_for("a mask after the bad frames",
                   lambda: _by_frame(graph.events("mask"), "keep_after"))
    after = graph.settled_counts()
    rejected = after["rejected"] - before["rejected"]
    assert rejected == after["received"] - before["received"] - 1 >= len(kinds)
    values = graph.diagnostics()
    for reason in ("unsupported_encoding", "data_length", "empty_image", "bad_step"):
        assert int(values["rejected: " + reason]) >= 1, reason
    assert graph.node.poll() is None
    log = graph.log()
    assert "%s: frame rejected: unsupported encoding '32FC1'" % CAMERA_TOPIC in log


def test_frames_are_dropped_not_queued_when_the_camera_is_faster(graph):
    before = graph.settled_counts()
    count = 120
    sent = graph.camera("--count", str(count), "--rate", "0", "--width", "512", "--height",
                        "512", "--pattern", "noise", "--number", "--frame-id", "burst")
    after = graph.settled_counts()
    received = after["received"] - before["received"]
    processed = after["processed"] - before["processed"]
    dropped = after["dropped"] - before["dropped"]
    # An unpaced burst also overflows the subscription's keep-last history (sensor-data QoS)
    # while the executor is busy, more so on a loaded machine: those frames never reach the
    # node and are not its drops. Enough must arrive for the node's own dropping to show.
    assert received >= 10, "too few frames of the burst reached the node (%d)" % received
    assert dropped > 0 and processed < received
    assert processed + dropped == received  # nothing rejected, nothing left in a queue
    masks = [e for e in graph.events("mask") if e["frame_id"].startswith("burst")]
    assert len(masks) == processed
    # The worker always takes the newest frame: the masks skip ahead through the burst and
    # the last one is for a frame from the end of it, not from a backlog.
    indices = [int(e["frame_id"][len("burst"):]) for e in masks]
    assert indices == sorted(indices)
    assert indices[-1] >= 0.9 * count, indices
    assert sent["frame_ids"][-1] == "burst%d" % (count - 1)


# -- exact regions, compressed input, shutdown ---------------------------------------------------
def _start_palette_graph(work: Path) -> Graph:
    model = write_palette_model(work / "palette.onnx", input_size=128)
    env = ros_env(random_domain_id())
    graph = Graph(work, env, ["-p", "model_path:=%s" % model, "-p", "backend:=onnxruntime",
                              "-p", "input_topic:=%s" % CAMERA_TOPIC, "-p",
                              "input_type:=sensor_msgs/msg/CompressedImage", "-p",
                              "min_region_area_px:=20", "-p", "publish_overlay:=false",
                              "-p", "input_qos:=reliable"])  # every camera here is reliable
    _wait_ready(graph)
    return graph


@pytest.fixture(scope="module")
def palette_graph(tmp_path_factory):
    graph = _start_palette_graph(tmp_path_factory.mktemp("palette_graph"))
    yield graph
    graph.close()


def test_detections_find_the_true_regions(palette_graph):
    graph = palette_graph
    graph.camera("--type", "compressed", "--format", "png", "--width", "128", "--height", "128",
                 "--qos", "reliable", "--frame-id", "keep_png")
    report = graph.wait_for("detections", lambda: _by_frame(graph.events("detections"),
                                                            "keep_png"))[-1]["data"]
    truth = scene_labels(128, 128)
    np.testing.assert_array_equal(graph.image("mask", "keep_png"), truth)
    expected = find_regions(truth, DETECTION_CLASS_IDS, 20)
    assert len(expected) == 5  # water, vehicle, two people, fire; the road is no detection
    strip = lambda regions: [{k: v for k, v in r.items() if k in PIXEL_KEYS}  # noqa: E731
                             for r in regions]
    assert strip(report["detections"]) == strip(expected)
    assert all(r["mean_confidence"] > 0.9 for r in report["detections"])
    assert report["coverage"] == class_coverage(truth)
    assert not graph.events("overlay")  # publish_overlay:=false


def test_jpeg_input_and_undecodable_frames(palette_graph):
    graph = palette_graph
    before = graph.settled_counts()
    graph.camera("--type", "compressed", "--format", "jpeg", "--width", "200", "--height",
                 "150", "--qos", "reliable", "--frame-id", "keep_jpeg")
    graph.wait_for("a mask of the JPEG frame",
                   lambda: _by_frame(graph.events("mask"), "keep_jpeg"))
    mask = graph.image("mask", "keep_jpeg")
    assert mask.shape == (150, 200)
    assert (mask == scene_labels(150, 200)).mean() > 0.9  # JPEG blurs edges, keeps regions
    graph.camera("--type", "compressed", "--count", "3", "--rate", "10", "--qos", "reliable",
                 "--malformed", "undecodable", "--frame-id", "bad")
    after = graph.settled_counts()
    # Decoding happens in the worker, so a bad frame can also be replaced before it is tried.
    delta = {k: after[k] - before[k] for k in after}
    assert delta["received"] == 4 and delta["processed"] == 1
    assert delta["rejected"] >= 1 and delta["rejected"] + delta["dropped"] == 3
    assert int(graph.diagnostics()["rejected: undecodable"]) == delta["rejected"]
    assert "%s: frame rejected: cannot decode" % CAMERA_TOPIC in graph.log()
    assert graph.node.poll() is None


def test_sigint_shuts_the_node_down_cleanly(tmp_path):
    # Its own graph: closing the shared one would break the tests that run after this one.
    graph = _start_palette_graph(tmp_path)
    try:
        graph.camera("--type", "compressed", "--format", "png", "--width", "128", "--height",
                     "128", "--qos", "reliable", "--frame-id", "keep_last")
        graph.wait_for("a mask", lambda: _by_frame(graph.events("mask"), "keep_last"))
    finally:
        code = graph.close()
    assert code == 0, graph.log()
    assert "Traceback" not in graph.log()


# -- start-up errors -------------------------------------------------------------------------------
def test_startup_errors_name_the_culprit_and_exit_non_zero(tmp_path, tiny_onnx):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 definitely not protobuf" * 10)
    cases = {
        "missing model": (["-p", "model_path:=/no/such/model.onnx"], "/no/such/model.onnx"),
        "corrupt model": (["-p", "model_path:=%s" % corrupt], str(corrupt)),
        "unknown back end": (["-p", "model_path:=%s" % tiny_onnx, "-p", "backend:=nosuch"],
                             "nosuch"),
        "bad value": (["-p", "model_path:=%s" % tiny_onnx, "-p", "input_qos:=sometimes"],
                      "input_qos"),
        "bad type": (["-p", "model_path:=%s" % tiny_onnx, "-p", "threads:=many"], "threads"),
    }
    env = ros_env(random_domain_id())
    processes = {name: start([sys.executable, "-m", "lpcv_segmentation.node.segmentation_node", "--ros-args",
                              "--params-file", str(PARAMS)] + args, env,
                             tmp_path / ("%s.log" % name.replace(" ", "_")))
                 for name, (args, _) in cases.items()}
    for name, (_, culprit) in cases.items():
        code = processes[name].wait(timeout=60)
        output = (tmp_path / ("%s.log" % name.replace(" ", "_"))).read_text()
        assert code != 0, "%s: exit code 0\n%s" % (name, output)
        assert culprit in output, "%s: %r not in\n%s" % (name, culprit, output)
        assert "Traceback" not in output, "%s:\n%s" % (name, output)
