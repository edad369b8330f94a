"""The vision_msgs conversion: the field layout of vision_msgs 4.x (written down here from its
message definitions, since vision_msgs cannot be installed here) and the filling of real
rosidl messages."""
import pytest

from lpcv_segmentation.core.classes import DETECTION_CLASS_IDS, class_table
from lpcv_segmentation.core.detections import detection_report
from lpcv_segmentation.node.vision import (MissingPackageError, detection2d_array_fields,
                                           fill_message, import_vision_msgs, label_info_fields)
from ros_helpers import scene_labels

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
