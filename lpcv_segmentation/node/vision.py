"""Detections and the class table as vision_msgs (4.x) messages, where vision_msgs is installed.

The conversion is split in two pure steps so it can be checked without vision_msgs: the
``*_fields`` functions give the message as nested dicts and lists in vision_msgs 4.x's field
layout (Humble and newer), and ``fill_message`` turns such a dict into any rosidl message
class, following the class's own field types. ``import_vision_msgs`` imports the package or
raises MissingPackageError with one line naming it.

    Detection2DArray: header, detections[]
      Detection2D: header, results[], bbox, id
        ObjectHypothesisWithPose: hypothesis {class_id, score}, pose (PoseWithCovariance)
        BoundingBox2D: center {position {x, y}, theta}, size_x, size_y
    LabelInfo: header, class_map[] {class_id, class_name}, threshold
"""
import importlib
import re
from typing import Dict, List, Mapping, Sequence

__all__ = ["MissingPackageError", "import_vision_msgs", "detection2d_array_fields",
           "label_info_fields", "fill_message"]

_SEQUENCE = re.compile(r"^sequence<([\w/]+)(?:,\s*\d+)?>$")  # sequence<pkg/Type[, bound]>
_ARRAY = re.compile(r"^([\w/]+)\[\d+\]$")  # fixed-size array: pkg/Type[N] or double[36]


class MissingPackageError(ImportError):
    """A ROS package a parameter asks for is not installed; the text names it."""


def import_vision_msgs():
    """The ``vision_msgs.msg`` module, or MissingPackageError naming the package."""
    try:
        return importlib.import_module("vision_msgs.msg")
    except ImportError:
        raise MissingPackageError(
            "detections_format needs the ROS package vision_msgs, which is not installed "
            "(apt install ros-$ROS_DISTRO-vision-msgs, or detections_format:=json)") from None


def _stamp_header(header: Mapping[str, object]) -> Dict[str, object]:
    return {"stamp": dict(header["stamp"]), "frame_id": header["frame_id"]}


def detection2d_array_fields(report: Mapping[str, object]) -> Dict[str, object]:
    """A /seg/detections report (``detections.detection_report``) as a Detection2DArray.

    One Detection2D per region: the box's centre and size in pixels, one hypothesis whose
    ``class_id`` is the class name and whose score is the region's mean confidence (0.0 when
    the back end gave none), and ``id`` the region's confirmed track id ("" untracked or
    tentative). Every detection carries the frame's header.
    """
    header = {"stamp": {"sec": int(report["stamp"]["sec"]),
                        "nanosec": int(report["stamp"]["nanosec"])},
              "frame_id": str(report["frame_id"])}
    detections: List[Dict[str, object]] = []
    for region in report["detections"]:
        x, y, w, h = (float(v) for v in region["bbox"])
        score = region.get("mean_confidence")
        detections.append({
            "header": _stamp_header(header),
            "results": [{"hypothesis": {"class_id": str(region["class_name"]),
                                        "score": 0.0 if score is None else float(score)}}],
            "bbox": {"center": {"position": {"x": x + w / 2.0, "y": y + h / 2.0},
                                "theta": 0.0},
                     "size_x": w, "size_y": h},
            "id": "" if region.get("track_id") is None else str(region["track_id"]),
        })
    return {"header": header, "detections": detections}


def label_info_fields(classes: Sequence[Mapping[str, object]],
                      header: Mapping[str, object]) -> Dict[str, object]:
    """The class table (``classes.class_table()``) as a LabelInfo; no score threshold."""
    return {"header": _stamp_header(header),
            "class_map": [{"class_id": int(c["id"]), "class_name": str(c["name"])}
                          for c in classes],
            "threshold": 0.0}


def _message_class(type_name: str):
    package, _, name = type_name.partition("/")
    return getattr(importlib.import_module(package + ".msg"), name)


def fill_message(msg_class, values: Mapping[str, object]):
    """An instance of the rosidl message class ``msg_class`` with ``values`` set, recursively.

    Fields absent from ``values`` keep their defaults; a key the message does not have is a
    ValueError naming it (so a layout mismatch cannot pass silently).
    """
    msg = msg_class()
    types = msg_class.get_fields_and_field_types()
    for name, value in values.items():
        if name not in types:
            raise ValueError("%s has no field %r (fields: %s)"
                             % (msg_class.__name__, name, ", ".join(types)))
        type_name = types[name]
        element = _SEQUENCE.match(type_name) or _ARRAY.match(type_name)
        if element and "/" in element.group(1):
            item_class = _message_class(element.group(1))
            setattr(msg, name, [fill_message(item_class, item) for item in value])
        elif "/" in type_name:
            setattr(msg, name, fill_message(type(getattr(msg, name)), value))
        else:
            setattr(msg, name, value)
    return msg
