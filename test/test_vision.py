"""The vision_msgs conversion: the field layout of vision_msgs 4.x (written down here from its
message definitions) and the filling of real rosidl messages; then, where ``../shared`` can
build the real vision_msgs (test/shared_tools.py), the node publishing it in a real graph to a
subscriber in another process: Detection2DArray box for box as the JSON report, LabelInfo to a
late joiner, whatever detections_format says (~15 s, plus ~3 min for the first build on a
machine).
"""
import json
import sys
import time
from pathlib import Path

import pytest

from lpcv_segmentation.core.classes import DETECTION_CLASS_IDS, class_table
from lpcv_segmentation.core.detections import detection_report, find_regions
from lpcv_segmentation.node.vision import (MissingPackageError, detection2d_array_fields,
                                           fill_message, import_vision_msgs, label_info_fields)
from lpcv_segmentation.replay.node_process import NODE_MODULE, node_arguments
from ros_helpers import (HELPERS, random_domain_id, ros_env, scene_labels, start, stop,
                         write_palette_model)
from shared_tools import vision_msgs_env

# vision_msgs 4.x (ros-perception/vision_msgs, ros2 branch, msg/*.msg): field -> type, with
# nested messages spelled out. Only the fields the node sets are required; every field it
# sets must be here with this type.
STRING, FLOAT64, FLOAT32, UINT16, INT32, UINT32 = str, float, float, int, int, int
HEADER = {"stamp": {"sec": INT32, "nanosec": UINT32}, "frame_id": STRING}
POINT2D = {"x": FLOAT64, "y": FLOAT64}
POSE2D = {"position": POINT2D, "theta": FLOAT64}
BOUNDING_BOX_2D = {"center": POSE2D, "size_x": FLOAT64, "size_y": FLOAT64}
OBJECT_HYPOTHESIS = {"class_id": STRING, "score": FLOAT64}
OBJECT_HYPOTHESIS_WITH_POSE = {"hypothesis": OBJECT_HYPOTHESIS,
                               "pose": "geometry_msgs/PoseWithCovariance"}
DETECTION_2D = {"header": HEADER, "results": [OBJECT_HYPOTHESIS_WITH_POSE],
                "bbox": BOUNDING_BOX_2D, "id": STRING}
DETECTION_2D_ARRAY = {"header": HEADER, "detections": [DETECTION_2D]}
VISION_CLASS = {"class_id": UINT16, "class_name": STRING}
LABEL_INFO = {"header": HEADER, "class_map": [VISION_CLASS], "threshold": FLOAT32}


def check_layout(values, layout, where="msg"):
    """``values`` uses only fields of ``layout``, each with its type (recursively)."""
    if isinstance(layout, dict):
        assert isinstance(values, dict), where
        unknown = set(values) - set(layout)
        assert not unknown, "%s: not in vision_msgs 4.x: %s" % (where, unknown)
        for name, value in values.items():
            check_layout(value, layout[name], "%s.%s" % (where, name))
    elif isinstance(layout, list):
        assert isinstance(values, list), where
        for index, item in enumerate(values):
            check_layout(item, layout[0], "%s[%d]" % (where, index))
    elif isinstance(layout, str):
        raise AssertionError("%s: the node should leave %s at its default" % (where, layout))
    else:
        assert type(values) is layout, "%s: %r is not %s" % (where, values, layout.__name__)


@pytest.fixture(scope="module")
def report():
    labels = scene_labels(120, 160)
    confidence = (labels.astype("float32") + 1.0) / 20.0
    return detection_report(labels, 17, 250, "camera", DETECTION_CLASS_IDS, 20, confidence)


def test_detections_follow_the_vision_msgs_4_layout(report):
    fields = detection2d_array_fields(report)
    check_layout(fields, DETECTION_2D_ARRAY)
    assert fields["header"] == {"stamp": {"sec": 17, "nanosec": 250}, "frame_id": "camera"}
    assert len(fields["detections"]) == len(report["detections"]) == 5


def test_one_detection_per_region_in_pixels(report):
    fields = detection2d_array_fields(report)
    for region, detection in zip(report["detections"], fields["detections"]):
        x, y, w, h = region["bbox"]
        box = detection["bbox"]
        assert box["center"]["position"] == {"x": x + w / 2.0, "y": y + h / 2.0}
        assert (box["size_x"], box["size_y"]) == (w, h)
        (result,) = detection["results"]
        assert result["hypothesis"] == {"class_id": region["class_name"],
                                        "score": region["mean_confidence"]}
        assert detection["header"] == fields["header"]


def test_detection_id_is_the_confirmed_track_id(report):
    import copy
    tracked = copy.deepcopy(report)
    tracked["detections"][0]["track_id"] = 7
    tracked["detections"][1]["track_id"] = None  # tentative
    ids = [d["id"] for d in detection2d_array_fields(tracked)["detections"]]
    assert ids[:3] == ["7", "", ""]


def test_label_info_follows_the_vision_msgs_4_layout():
    fields = label_info_fields(class_table(), {"stamp": {"sec": 1, "nanosec": 2},
                                               "frame_id": ""})
    check_layout(fields, LABEL_INFO)
    assert [c["class_name"] for c in fields["class_map"]] == [c["name"] for c in class_table()]
    assert [c["class_id"] for c in fields["class_map"]] == list(range(len(class_table())))


def test_fill_message_builds_nested_rosidl_messages():
    # Real rosidl classes with the same shapes: a header, a sequence of messages holding a
    # sequence of messages, plain fields.
    from diagnostic_msgs.msg import DiagnosticArray
    msg = fill_message(DiagnosticArray, {
        "header": {"stamp": {"sec": 5, "nanosec": 6}, "frame_id": "f"},
        "status": [{"name": "a", "message": "m", "values": [{"key": "k", "value": "v"}]},
                   {"name": "b"}]})
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (5, 6, "f")
    assert [s.name for s in msg.status] == ["a", "b"]
    assert msg.status[0].values[0].key == "k" and msg.status[1].values == []
    with pytest.raises(ValueError, match="frame"):
        fill_message(DiagnosticArray, {"header": {"frame": "x"}})


def test_missing_vision_msgs_is_named():
    try:
        import vision_msgs  # noqa: F401
        pytest.skip("vision_msgs is installed here")
    except ImportError:
        pass
    with pytest.raises(MissingPackageError, match="vision_msgs"):
        import_vision_msgs()


# -- the real vision_msgs in a real graph --------------------------------------------------------
CAMERA = "/camera/image_raw"
READY_TIMEOUT_S = 90.0  # a node start-up: ~4 s idle; two at once on 2 busy cores took ~20 s


def _events(folder: Path, topic: str):
    path = folder / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in (json.loads(line) for line in lines if line.endswith("}"))
            if e["topic"] == topic]


def _wait(what: str, found, processes, timeout: float = READY_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = found()
        if result:
            return result
        for name, (process, log) in processes.items():
            assert process.poll() is None, "%s exited:\n%s" % (name, log.read_text()[-3000:])
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s; logs:\n%s" % (what, "\n".join(
        "-- %s\n%s" % (name, log.read_text()[-2000:]) for name, (_, log) in processes.items())))


def _by_frame(events, frame_id: str):
    return [e for e in events if e.get("frame_id", e.get("data", {}).get("frame_id")) == frame_id]


@pytest.mark.ros
@pytest.mark.slow
def test_real_vision_msgs_match_the_json_report_and_label_info_reaches_a_late_joiner(tmp_path):
    env = vision_msgs_env(ros_env(random_domain_id()))  # skips without ../shared/vision_msgs
    model = write_palette_model(tmp_path / "palette.onnx", input_size=128)
    common = {"min_region_area_px": 20, "input_qos": "reliable", "publish_overlay": False}
    processes = {}
    # Two nodes on one camera: /both publishes both formats, /json only JSON detections.
    for namespace, fmt in (("/both", "both"), ("/json", "json")):
        log = tmp_path / ("node%s.log" % namespace.replace("/", "_"))
        args = ([sys.executable, "-m", NODE_MODULE]
                + node_arguments(str(model), "onnxruntime", CAMERA,
                                 params=dict(common, detections_format=fmt))
                + ["-r", "__ns:=%s" % namespace])
        processes["node " + namespace] = (start(args, env, log), log)
    listeners = {}
    try:
        for namespace in ("/both", "/json"):
            log = tmp_path / ("node%s.log" % namespace.replace("/", "_"))
            _wait("%s active" % namespace, lambda: "active: segmenting" in log.read_text(),
                  processes)
        # Late joiners: the class tables went out at configure, before these subscribed.
        for namespace in ("/both", "/json"):
            folder = tmp_path / ("listener%s" % namespace.replace("/", "_"))
            log = tmp_path / ("listener%s.log" % namespace.replace("/", "_"))
            processes["listener " + namespace] = (start(
                [sys.executable, str(HELPERS), "listen", "--out", str(folder), "--namespace",
                 namespace, "--vision-msgs"], env, log), log)
            listeners[namespace] = folder
        for namespace, folder in listeners.items():
            label_info = _wait("LabelInfo on %s" % namespace,
                               lambda: _events(folder, "vision_label_info"), processes)
            assert label_info[0]["class_map"] == [[c["id"], c["name"]] for c in class_table()]
            assert label_info[0]["threshold"] == 0.0
        both = listeners["/both"]
        _wait("the listener matched to the node's outputs", lambda: any(
            all(e["publishers"].get(t, 0) >= 1 for t in ("mask", "detections", "detection_array"))
            for e in _events(both, "matched")), processes)
        assert not any(e["publishers"].get("detection_array") for e in
                       _events(listeners["/json"], "matched"))  # json: no Detection2DArray

        # The listener sees the node's publishers; the node may not see the listener yet, and
        # builds detections only for a subscriber: one frame at a time until one comes back.
        camera = [sys.executable, str(HELPERS), "camera", "--topic", CAMERA, "--qos",
                  "reliable", "--width", "128", "--height", "128", "--subscribers", "2"]
        for attempt in range(10):
            frame = "keep_first%d" % attempt
            assert start(camera + ["--frame-id", frame], env,
                         tmp_path / "camera.log").wait(timeout=60) == 0
            _wait("the mask of %s" % frame, lambda: _by_frame(_events(both, "mask"), frame),
                  processes)
            if _by_frame(_events(both, "detection_array"), frame):
                break
        # From then on, every frame: a mask, a JSON report and a Detection2DArray each.
        sent = start(camera + ["--count", "3", "--rate", "5", "--number", "--frame-id", "keep"],
                     env, tmp_path / "camera.log")
        assert sent.wait(timeout=60) == 0, (tmp_path / "camera.log").read_text()
        frames = [frame, "keep0", "keep1", "keep2"]
        for topic in ("mask", "detections", "detection_array"):
            _wait("%s of every frame" % topic, lambda: all(
                len(_by_frame(_events(both, topic), f)) == 1 for f in frames), processes)
    finally:
        for process, _ in processes.values():
            stop(process)

    truth = find_regions(scene_labels(128, 128), DETECTION_CLASS_IDS, 20)
    assert len(truth) == 5
    for frame in frames:
        (report,) = [e["data"] for e in _by_frame(_events(both, "detections"), frame)]
        (array,) = _by_frame(_events(both, "detection_array"), frame)
        (mask,) = _by_frame(_events(both, "mask"), frame)
        stamp = [report["stamp"]["sec"], report["stamp"]["nanosec"]]
        assert array["stamp"] == mask["stamp"] == stamp
        assert len(array["detections"]) == len(report["detections"]) == len(truth)
        for region, detection, true in zip(report["detections"], array["detections"], truth):
            x, y, w, h = region["bbox"]
            assert region["bbox"] == true["bbox"] and region["class_name"] == true["class_name"]
            assert detection["center"] == [x + w / 2.0, y + h / 2.0]
            assert detection["size"] == [w, h]
            assert detection["results"] == [[region["class_name"], region["mean_confidence"]]]
            assert (detection["stamp"], detection["frame_id"]) == (stamp, frame)
    assert not _events(listeners["/json"], "detection_array")
    for name, (_, log) in processes.items():
        if name.startswith("node"):
            assert "Traceback" not in log.read_text(), log.read_text()
