"""Outputs a radio link can carry: the confidence as mono8 and the mask as a lossless PNG.

The mask travels as ``sensor_msgs/CompressedImage`` on ``<mask topic>/compressed`` with the
format string of image_transport's compressed plugin (``mono8; png compressed``), so
``image_transport republish`` and rqt decode it; PNG keeps every class index (JPEG would
blur them into other classes). The confidence map (the softmax probability of the predicted
class) becomes mono8 with 255 = certain, at the mask's size.
"""
import array
from typing import Tuple

import cv2
import numpy as np

from lpcv_segmentation.core.imaging import message_keeping_arrays

__all__ = ["PNG_FORMAT", "confidence_mono8", "encode_mask_png", "decode_mask_png",
           "png_mask_msg"]

PNG_FORMAT = "mono8; png compressed"


def confidence_mono8(confidence: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(h, w) float confidence in [0, 1] -> (H, W) uint8, 255 = certain, at ``size`` =
    (width, height) (bilinear when the sizes differ)."""
    scaled = np.clip(confidence * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    if (scaled.shape[1], scaled.shape[0]) != tuple(size):
        scaled = cv2.resize(scaled, tuple(size), interpolation=cv2.INTER_LINEAR)
    return scaled


def encode_mask_png(labels: np.ndarray, level: int = 1) -> bytes:
    """(H, W) uint8 class indices -> PNG bytes (zlib ``level`` 0-9: 1 is fast, 9 small)."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(labels),
                               [cv2.IMWRITE_PNG_COMPRESSION, int(level)])
    if not ok:
        raise ValueError("OpenCV could not encode a %s mask as PNG" % (labels.shape,))
    return encoded.tobytes()


def decode_mask_png(data: bytes) -> np.ndarray:
    """PNG bytes of a mono8 mask -> (H, W) uint8 (what a ground station does)."""
    labels = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise ValueError("not a single-channel PNG")
    return labels


def png_mask_msg(labels: np.ndarray, header=None, level: int = 1):
    """The mask as sensor_msgs/CompressedImage (``mono8; png compressed``)."""
    from sensor_msgs.msg import CompressedImage

    msg = message_keeping_arrays(CompressedImage)
    if header is not None:
        msg.header = header
    msg.format = PNG_FORMAT
    data = array.array("B")
    data.frombytes(encode_mask_png(labels, level))
    msg.data = data
    return msg
