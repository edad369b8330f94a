"""segmentation_node as a drone's bring-up runs it, in real ROS 2 graphs of separate processes:
a shared parameters file with other nodes' keys and qos_overrides, in a namespace.

Each test starts its own node (the exact palette model, so it starts in a second or two) and
asks the graph about it with test/node_probe.py, as `ros2 topic info -v` would.
"""
import json
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest

from ros_helpers import (HELPERS, REPO, random_domain_id, ros_env, start, stop,
                         write_palette_model)
from test_node import Graph, _by_frame, _wait_ready

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PROBE = Path(__file__).resolve().parent / "node_probe.py"


def start_node(env, log: Path, args: List[str]):
    """segmentation_node with config/drone.yaml and ``args`` (ROS arguments), its output in
    ``log``."""
    return start([sys.executable, "-m", "lpcv_segmentation.node.segmentation_node", "--ros-args",
                  "--params-file", str(REPO / "config" / "drone.yaml")] + args, env, log)


def probe(env, work: Path, *args: str) -> dict:
    """Run test/node_probe.py to completion; its JSON answer."""
    log = work / "probe.log"
    process = start([sys.executable, str(PROBE)] + list(args), env, log)
    assert process.wait(timeout=120) == 0, log.read_text()
    return json.loads(log.read_text().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def palette_model(tmp_path_factory) -> Path:
    return write_palette_model(tmp_path_factory.mktemp("palette") / "palette.onnx", 128)


def test_shared_parameters_file_and_qos_overrides(tmp_path, palette_model):
    shared = tmp_path / "bringup.yaml"
    shared.write_text(
        "/**:\n"
        "  ros__parameters:\n"
        "    frame_prefix: uav1/\n"
        "    battery_warn_v: 14.2\n"
        "    qos_overrides:\n"
        "      /uav1/camera/image_raw:\n"
        "        subscription:\n"
        "          reliability: reliable\n"
        "          depth: 3\n"
        "      /uav1/seg/mask:\n"
        "        publisher:\n"
        "          depth: 2\n")
    env = ros_env(random_domain_id())
    graph = Graph(tmp_path, env, ["--params-file", str(shared), "-r", "__ns:=/uav1",
                                  "-p", "model_path:=%s" % palette_model],
                  namespace="/uav1")
    try:
        _wait_ready(graph)
        info = probe(env, tmp_path, "endpoints", "--topic", "/uav1/camera/image_raw")
        assert info["subscriptions"] == [{"node": "/uav1/segmentation_node",
                                          "reliability": "RELIABLE", "durability": "VOLATILE",
                                          "topic_type": "sensor_msgs/msg/Image"}]
        # A reliable camera can only reach a reliable subscription: the override took effect.
        graph.camera("--topic", "/uav1/camera/image_raw", "--qos", "reliable",
                     "--frame-id", "keep_ns")
        mask = graph.wait_for("/uav1/seg/mask", lambda: _by_frame(graph.events("mask"),
                                                                  "keep_ns"))
        assert (mask[0]["width"], mask[0]["height"]) == (160, 120)
        log = graph.log()
        warnings = [line for line in log.splitlines() if "ignoring parameters" in line]
        assert len(warnings) == 1, log
        assert "battery_warn_v, frame_prefix" in warnings[0]
        assert "qos_overrides" not in warnings[0]
        assert graph.node.poll() is None
    finally:
        assert graph.close() == 0
    assert "Traceback" not in graph.log()


@pytest.mark.parametrize("args, culprit", [
    (["-p", "input_qos:=sometimes"], "input_qos"),
    (["-p", "qos_overrides./camera/image_raw.subscription.reliability:=sometimes"],
     "reliability"),
])
def test_known_keys_are_still_checked(tmp_path, palette_model, args: List[str], culprit: str):
    env = ros_env(random_domain_id())
    log = tmp_path / "node.log"
    process = start_node(env, log, ["-p", "model_path:=%s" % palette_model,
                                    "-p", "frame_prefix:=x"] + args)
    assert process.wait(timeout=60) != 0
    output = log.read_text()
    assert culprit in output and "Traceback" not in output, output


# -- managed mode (lifecycle) -----------------------------------------------------------------
def _masks(graph: Graph, prefix: str) -> List[dict]:
    return [e for e in graph.events("mask") if e["frame_id"].startswith(prefix)]


def test_managed_node_follows_the_lifecycle(tmp_path, palette_model):
    env = ros_env(random_domain_id())
    graph = Graph(tmp_path, env, ["-p", "model_path:=%s" % palette_model, "-p", "managed:=true",
                                  "-p", "input_topic:=/camera/image_raw", "-p",
                                  "input_qos:=reliable"])
    node = "/segmentation_node"
    camera = ["--qos", "reliable", "--count", "3", "--rate", "10", "--number"]
    try:
        answer = probe(env, tmp_path, "lifecycle", "--node", node, "get")
        assert answer["steps"] == [{"step": "get", "state": "unconfigured"}]
        # Nothing subscribes to the camera before activate.
        assert probe(env, tmp_path, "endpoints", "--topic", "/camera/image_raw",
                     "--wait", "1")["subscriptions"] == []
        answer = probe(env, tmp_path, "lifecycle", "--node", node, "configure")
        assert answer["steps"] == [{"step": "configure", "success": True, "state": "inactive"}]
        _wait_ready(graph)  # configure opened the publishers: the class table is out
        # Subscribed from configure on (matched while the model loads), but an inactive node
        # segments nothing: the frames are only counted.
        assert len(probe(env, tmp_path, "endpoints", "--topic", "/camera/image_raw",
                         "--wait", "20")["subscriptions"]) == 1
        graph.camera(*camera, "--frame-id", "inactive")
        graph.wait_for("frames counted while inactive", lambda: (
            graph.diagnostics() or {}).get("frames_while_inactive") == "3")
        assert not graph.events("mask") and graph.diagnostics()["frames_received"] == "0"

        answer = probe(env, tmp_path, "lifecycle", "--node", node, "activate")
        assert answer["steps"][0]["state"] == "active"
        graph.camera(*camera, "--frame-id", "active")
        graph.wait_for("masks while active", lambda: len(_masks(graph, "active")) == 3)

        answer = probe(env, tmp_path, "lifecycle", "--node", node, "deactivate")
        assert answer["steps"][0]["state"] == "inactive"
        graph.camera(*camera, "--frame-id", "deactivated")
        graph.wait_for("frames counted while deactivated", lambda: (
            graph.diagnostics() or {}).get("frames_while_inactive") == "6")
        assert not _masks(graph, "deactivated")
        # Active again without reloading: the model stayed loaded.
        answer = probe(env, tmp_path, "lifecycle", "--node", node, "activate", "deactivate",
                       "cleanup", "configure", "activate")
        assert [s["state"] for s in answer["steps"]] == ["active", "inactive", "unconfigured",
                                                         "inactive", "active"]
        assert all(s["success"] for s in answer["steps"])
        graph.camera(*camera, "--frame-id", "again")
        graph.wait_for("masks after a reconfigure", lambda: len(_masks(graph, "again")) == 3)
        assert graph.log().count("cannot load") == 0

        answer = probe(env, tmp_path, "lifecycle", "--node", node, "shutdown")
        assert answer["steps"] == [{"step": "shutdown", "success": True}]
        assert graph.node.wait(timeout=30) == 0  # finalized: the process ends cleanly
    finally:
        graph.close()
    assert len(_masks(graph, "active")) == 3 and "Traceback" not in graph.log()
    assert not _masks(graph, "inactive") and not _masks(graph, "deactivated")


@pytest.mark.parametrize("steps", [[], ["configure"], ["configure", "activate"]])
def test_managed_shutdown_from_every_state(tmp_path, palette_model, steps):
    env = ros_env(random_domain_id())
    log = tmp_path / "node.log"
    process = start_node(env, log, ["-p", "model_path:=%s" % palette_model, "-p", "managed:=true"])
    try:
        answer = probe(env, tmp_path, "lifecycle", "--node", "/segmentation_node",
                       *steps, "shutdown")
        assert answer["steps"][-1] == {"step": "shutdown", "success": True}
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in log.read_text()


def test_managed_configure_fails_on_a_bad_model(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 definitely not protobuf" * 10)
    env = ros_env(random_domain_id())
    log = tmp_path / "node.log"
    process = start_node(env, log, ["-p", "model_path:=%s" % corrupt, "-p", "managed:=true"])
    try:
        answer = probe(env, tmp_path, "lifecycle", "--node", "/segmentation_node",
                       "configure", "shutdown")
        assert answer["steps"] == [
            {"step": "configure", "success": False, "state": "unconfigured"},
            {"step": "shutdown", "success": True}]
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert "configure failed: cannot load the model" in output and str(corrupt) in output
    assert "Traceback" not in output


# -- camera_info -------------------------------------------------------------------------------
def test_camera_info_follows_each_mask_scaled_to_it(tmp_path, palette_model):
    from node_probe import CALIBRATION_K
    env = ros_env(random_domain_id())
    graph = Graph(tmp_path, env, ["-r", "__ns:=/uav1", "-p", "model_path:=%s" % palette_model,
                                  "-p", "input_qos:=reliable"], namespace="/uav1")
    try:
        _wait_ready(graph)
        # Frames before any camera_info: masks as before, no camera_info.
        graph.camera("--topic", "/uav1/camera/image_raw", "--qos", "reliable",
                     "--frame-id", "keep_noinfo")
        graph.wait_for("a mask", lambda: _by_frame(graph.events("mask"), "keep_noinfo"))
        driver = start([sys.executable, str(PROBE), "camera-info", "--topic",
                        "/uav1/camera/camera_info", "--width", "640", "--height", "480",
                        "--listen", "/uav1/seg/camera_info", "--count", "2"], env,
                       tmp_path / "driver.log")
        graph.wait_for("the calibration at the node", lambda: "calibration delivered" in
                       (tmp_path / "driver.log").read_text(), timeout=60)
        # The camera sends 160x120 frames: a quarter of the calibrated 640x480 in each axis.
        sent = graph.camera("--topic", "/uav1/camera/image_raw", "--qos", "reliable",
                            "--count", "2", "--rate", "5", "--number", "--frame-id", "keep_info")
        assert driver.wait(timeout=90) == 0, (tmp_path / "driver.log").read_text()
    finally:
        assert graph.close() == 0
    infos = json.loads((tmp_path / "driver.log").read_text().strip().splitlines()[-1])["received"]
    assert [info["stamp"] for info in infos] == sent["stamps"]  # one per mask, same header
    assert [info["frame_id"] for info in infos] == sent["frame_ids"]
    masks = {e["frame_id"]: e for e in graph.events("mask")}
    for info in infos:
        assert masks[info["frame_id"]]["stamp"] == info["stamp"]
        assert (info["width"], info["height"]) == (160, 120)
        fx, _, cx, _, fy, cy = CALIBRATION_K[:6]
        assert info["k"] == [fx / 4, 0.0, cx / 4, 0.0, fy / 4, cy / 4, 0.0, 0.0, 1.0]
        assert info["p"][:3] == [fx / 4, 0.0, cx / 4] and info["p"][4:7] == [0.0, fy / 4, cy / 4]
        assert info["d"] == [0.1, -0.2, 0.0, 0.0, 0.0]
        assert info["roi"] == [16, 12, 80, 60]


def test_vision_msgs_asked_for_but_missing_stops_with_one_line(tmp_path, palette_model):
    try:
        import vision_msgs  # noqa: F401
        pytest.skip("vision_msgs is installed: the node would publish it")
    except ImportError:
        pass
    env = ros_env(random_domain_id())
    log = tmp_path / "node.log"
    process = start_node(env, log, ["-p", "model_path:=%s" % palette_model,
                                    "-p", "detections_format:=both"])
    assert process.wait(timeout=60) == 1
    output = log.read_text()
    lines = [line for line in output.splitlines() if "vision_msgs" in line]
    assert len(lines) == 1 and "ERROR" in lines[0], output
    assert "Traceback" not in output


# -- outputs only for subscribers: what nobody reads is not built ----------------------------
def _last_json(log: Path) -> dict:
    return json.loads(log.read_text().strip().splitlines()[-1])


def test_optional_outputs_are_built_only_while_subscribed(tmp_path, palette_model):
    """Counted by the node itself (frames_with_<output> in /diagnostics), not timed."""
    env = ros_env(random_domain_id())
    node_log = tmp_path / "node.log"
    node = start_node(env, node_log, ["-p", "model_path:=%s" % palette_model,
                                      "-p", "input_topic:=/camera/image_raw",
                                      "-p", "input_qos:=reliable",
                                      "-p", "diagnostics_period_s:=0.2"])
    listener = None

    def send(count: int, frame_id: str) -> None:
        log = tmp_path / ("camera_%s.log" % frame_id)
        camera = start([sys.executable, str(HELPERS), "camera", "--topic", "/camera/image_raw",
                        "--qos", "reliable", "--count", str(count), "--rate", "5",
                        "--frame-id", frame_id], env, log)
        assert camera.wait(timeout=90) == 0, log.read_text()

    def watch(masks: int):
        log = tmp_path / ("watch_%d.log" % masks)
        watcher = start([sys.executable, str(PROBE), "watch", "--masks", str(masks)], env, log)
        return watcher, log
    try:
        # Only the mask is listened to: no colour, overlay or detections are built.
        watcher, log = watch(4)
        send(4, "alone")
        assert watcher.wait(timeout=90) == 0, log.read_text()
        values = _last_json(log)["diagnostics"]
        assert int(values["frames_processed"]) == 4, (values, node_log.read_text())
        for name in ("color", "overlay", "detections"):
            assert values["frames_with_%s" % name] == "0", values

        # Everything is listened to (test/ros_helpers.py's listener): all built, every frame.
        listener = start([sys.executable, str(HELPERS), "listen", "--out",
                          str(tmp_path / "listener")], env, tmp_path / "listener.log")
        events = tmp_path / "listener" / "events.jsonl"

        def matched_all() -> bool:
            """The listener reports the node's colour, overlay and detections publishers
            matched: discovery has met both sides (the node builds an output only for a
            matched subscriber)."""
            lines = events.read_text().splitlines() if events.exists() else []
            return any(all(event.get("publishers", {}).get(name, 0) >= 1
                           for name in ("color", "overlay", "detections"))
                       for event in map(json.loads, lines) if event["topic"] == "matched")
        deadline = time.monotonic() + 60
        while not matched_all():
            assert time.monotonic() < deadline, "the listener never matched the node's outputs"
            time.sleep(0.1)
        watcher, log = watch(7)
        send(3, "all")
        assert watcher.wait(timeout=90) == 0, log.read_text()
        values = _last_json(log)["diagnostics"]
        assert int(values["frames_processed"]) == 7, values
        for name in ("color", "overlay", "detections"):
            assert values["frames_with_%s" % name] == "3", values
        received = [json.loads(line)["topic"] for line in events.read_text().splitlines()]
        for topic in ("color", "overlay", "detections"):
            assert received.count(topic) == 3, topic
    finally:
        if listener is not None:
            stop(listener)
        assert stop(node) == 0


# -- loading and warm-up in /diagnostics: a slow start says why -------------------------------
def write_slow_model(path: Path, seconds_per_pass: float = 3.0, side: int = 1024) -> Path:
    """The palette model plus a branch that costs real time: chained ``side`` x ``side``
    matrix products that depend on the input (so ONNX Runtime cannot fold them away) and add
    zero to the logits. Their count is calibrated on this machine (one thread) so that a
    forward pass takes about ``seconds_per_pass``: the warm-up (two passes) then outlasts DDS
    discovery of the new node on a quiet machine as on a loaded one."""
    import onnxruntime

    probe = _write_slow_model(path, 4, side)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
    x = np.zeros([d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape],
                 np.float32)
    session.run(None, {session.get_inputs()[0].name: x})
    started = time.monotonic()
    session.run(None, {session.get_inputs()[0].name: x})
    per_matmul = max(1e-3, (time.monotonic() - started) / 4)
    return _write_slow_model(path, max(4, int(round(seconds_per_pass / per_matmul))), side)


def _write_slow_model(path: Path, matmuls: int, side: int) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    write_palette_model(path, 64)
    model = onnx.load(str(path))
    graph = model.graph
    weight = (np.random.default_rng(0).standard_normal((side, side)).astype(np.float32)
              / np.float32(np.sqrt(side)))  # keeps the products' scale
    graph.initializer.extend([numpy_helper.from_array(weight, "slow_w"),
                              numpy_helper.from_array(np.zeros((), np.float32), "slow_zero"),
                              numpy_helper.from_array(np.ones((side, side), np.float32),
                                                      "slow_ones")])
    nodes = [helper.make_node("ReduceMean", ["input"], ["slow_mean"], keepdims=0),
             helper.make_node("Mul", ["slow_ones", "slow_mean"], ["slow_0"])]
    nodes += [helper.make_node("MatMul", ["slow_%d" % i, "slow_w"], ["slow_%d" % (i + 1)])
              for i in range(matmuls)]
    nodes += [helper.make_node("ReduceMean", ["slow_%d" % matmuls], ["slow_sum"], keepdims=0),
              helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"])]
    graph.node[0].output[0] = "palette_logits"  # the palette Conv
    nodes.append(helper.make_node("Add", ["palette_logits", "slow_nothing"], ["logits"]))
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_diagnostics_say_the_model_is_warming_up_before_the_first_mask(tmp_path):
    model = write_slow_model(tmp_path / "slow.onnx")
    env = ros_env(random_domain_id())
    listener = start([sys.executable, str(HELPERS), "listen", "--out", str(tmp_path / "out")],
                     env, tmp_path / "listener.log")
    events_path = tmp_path / "out" / "events.jsonl"

    def events() -> List[dict]:
        if not events_path.exists():
            return []
        return [json.loads(line) for line in events_path.read_text().splitlines()
                if line.endswith("}")]
    node = None
    try:
        deadline = time.monotonic() + 30
        while not events() and time.monotonic() < deadline:
            time.sleep(0.1)
        node = start_node(env, tmp_path / "node.log", [
            "-p", "model_path:=%s" % model, "-p", "input_topic:=/camera/image_raw",
            "-p", "input_qos:=reliable", "-p", "threads:=1", "-p", "diagnostics_period_s:=0.2"])
        deadline = time.monotonic() + 120
        while not any(e["topic"] == "label_info" for e in events()):
            assert time.monotonic() < deadline and node.poll() is None, \
                (tmp_path / "node.log").read_text()
            time.sleep(0.1)
        camera = start([sys.executable, str(HELPERS), "camera", "--topic", "/camera/image_raw",
                        "--qos", "reliable", "--width", "64", "--height", "64",
                        "--frame-id", "keep_first"], env, tmp_path / "camera.log")
        assert camera.wait(timeout=90) == 0, (tmp_path / "camera.log").read_text()
        while not any(e["topic"] == "mask" for e in events()):
            assert time.monotonic() < deadline, (tmp_path / "node.log").read_text()
            time.sleep(0.1)
    finally:
        if node is not None:
            assert stop(node) == 0
        stop(listener)
    ordered = events()
    first_mask = next(i for i, e in enumerate(ordered) if e["topic"] == "mask")
    before = [e["status"][0] for e in ordered[:first_mask] if e["topic"] == "diagnostics"]
    messages = [s["message"] for s in before]
    assert "warming up" in messages, messages
    loading = [s for s in before if s["message"] in ("loading model", "warming up")]
    assert all(s["level"] == 1 for s in loading)  # WARN
    # The loading phase comes first and ends before the node is ready for frames.
    phases = [m for m in messages if m in ("loading model", "warming up")]
    assert messages[:len(phases)] == phases and phases == sorted(phases)  # loading < warming
    assert messages[len(phases):], "no status after warming up"
    assert "Traceback" not in (tmp_path / "node.log").read_text()
