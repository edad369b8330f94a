"""segmentation_node as a drone's bring-up runs it, in real ROS 2 graphs of separate processes:
a shared parameters file with other nodes' keys and qos_overrides, in a namespace.

Each test starts its own node (the exact palette model, so it starts in a second or two) and
asks the graph about it with test/node_probe.py, as `ros2 topic info -v` would.
"""
import json
import sys
from pathlib import Path
from typing import List

import pytest

from ros_helpers import REPO, random_domain_id, ros_env, start, write_palette_model
from test_node import Graph, _by_frame, _wait_ready

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PROBE = Path(__file__).resolve().parent / "node_probe.py"


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
    process = start([sys.executable, "-m", "lpcv_segmentation.node", "--ros-args",
                     "--params-file", str(REPO / "config" / "drone.yaml"), "-p",
                     "model_path:=%s" % palette_model, "-p", "frame_prefix:=x"] + args, env, log)
    assert process.wait(timeout=60) != 0
    output = log.read_text()
    assert culprit in output and "Traceback" not in output, output
