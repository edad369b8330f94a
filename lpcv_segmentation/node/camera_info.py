"""The camera_info that goes with the mask: where the camera's is, and scaled to the mask.

Downstream tools pair an image with the ``camera_info`` in the same namespace and with the
same stamp (image_transport's convention), so the node republishes the camera's calibration
beside ``seg/mask`` with each mask's header. Messages are duck-typed (``width``, ``height``,
``k``, ``p``, ``roi``...), so rclpy and ``rosbags`` messages both work.
"""
import copy
from typing import List

__all__ = ["camera_info_topic", "scale_camera_info"]

# image_transport's transport suffixes: <base>/compressed is still the image <base>.
TRANSPORT_SUFFIXES = ("/compressed", "/theora", "/compressedDepth", "/zstd")


def camera_info_topic(image_topic: str) -> str:
    """``/uav1/camera/image_raw`` (or ``.../image_raw/compressed``) -> ``/uav1/camera/camera_info``.

    A topic without a namespace (``image_raw``) gives ``camera_info``.
    """
    base = image_topic
    for suffix in TRANSPORT_SUFFIXES:
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    namespace, _, _ = base.rpartition("/")
    if not namespace and base.startswith("/"):
        return "/camera_info"
    return namespace + "/camera_info" if namespace else "camera_info"


def _scaled(values, factors: List[float]) -> List[float]:
    return [float(v) * f for v, f in zip(values, factors)]


def scale_camera_info(info, width: int, height: int, header=None):
    """A copy of ``info`` for an image of ``width`` x ``height`` pixels, with ``header``.

    When the sizes differ, the intrinsics (K), the projection (P, including its Tx, Ty terms)
    and the region of interest scale with the image; distortion (D) and rectification (R)
    are unitless and stay. A camera that sent no size (uncalibrated, width 0) keeps its
    zeros but gets the image's size.
    """
    out = copy.deepcopy(info)
    if header is not None:
        out.header = header
    if info.width and info.height and (info.width, info.height) != (width, height):
        sx, sy = width / float(info.width), height / float(info.height)
        out.k = _scaled(info.k, [sx, sx, sx, sy, sy, sy, 1.0, 1.0, 1.0])
        out.p = _scaled(info.p, [sx, sx, sx, sx, sy, sy, sy, sy, 1.0, 1.0, 1.0, 1.0])
        roi = out.roi
        roi.x_offset, roi.width = int(round(roi.x_offset * sx)), int(round(roi.width * sx))
        roi.y_offset, roi.height = int(round(roi.y_offset * sy)), int(round(roi.height * sy))
    out.width, out.height = int(width), int(height)
    return out
