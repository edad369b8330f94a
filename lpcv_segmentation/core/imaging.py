"""ROS image messages <-> numpy, and the pictures the node publishes (colour mask, overlay).

Why not cv_bridge: the ``cv-bridge`` wheel on PyPI is a pure-Python port whose
``cv2_to_imgmsg`` calls ``ndarray.tostring``, which NumPy 2 removed, and the real
``cv_bridge`` only exists inside a ROS install. The few encodings a camera sends are a
reshape and a channel swap, so the conversion is written here and works everywhere.

Messages are read by duck typing (``height``, ``width``, ``encoding``, ``step``, ``data``;
``format`` and ``data`` for compressed images), so rclpy messages and the ``rosbags``
package's messages both work. Building a message imports ``sensor_msgs`` lazily.
"""
import array
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from lpcv_segmentation.core.classes import CLASSES, palette


class ImageConversionError(ValueError):
    """A message that cannot become an RGB image.

    ``kind`` is a short fixed name for the problem (counted in the node's diagnostics);
    the text says exactly what is wrong (shown to the user).
    """

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class _Encoding(NamedTuple):
    channels: int
    to_rgb: Callable[[np.ndarray], np.ndarray]  # (H, W, channels) uint8 -> (H, W, 3) uint8


# The 8-bit encodings a camera driver publishes (sensor_msgs/image_encodings.hpp names).
ENCODINGS: Dict[str, _Encoding] = {
    "rgb8": _Encoding(3, lambda a: a),
    "bgr8": _Encoding(3, lambda a: a[..., ::-1]),
    "rgba8": _Encoding(4, lambda a: a[..., :3]),
    "bgra8": _Encoding(4, lambda a: a[..., 2::-1]),
    "mono8": _Encoding(1, lambda a: np.repeat(a, 3, axis=2)),
}


def check_image_msg(msg) -> None:
    """Cheap checks of a sensor_msgs/Image before any pixel is touched.

    Raises ImageConversionError naming the problem: unsupported encoding, zero size,
    a step shorter than a row, or a data length that is not height x step.
    """
    encoding = ENCODINGS.get(msg.encoding)
    if encoding is None:
        raise ImageConversionError(
            "unsupported_encoding", "unsupported encoding %r (supported: %s)"
            % (msg.encoding, ", ".join(sorted(ENCODINGS))))
    if msg.height == 0 or msg.width == 0:
        raise ImageConversionError("empty_image", "empty image (%dx%d)" % (msg.width, msg.height))
    row_bytes = msg.width * encoding.channels
    if msg.step < row_bytes:
        raise ImageConversionError(
            "bad_step", "step %d is shorter than a row of %d px x %d channels"
            % (msg.step, msg.width, encoding.channels))
    if len(msg.data) != msg.height * msg.step:
        raise ImageConversionError(
            "data_length", "data length %d does not match height x step = %d x %d"
            % (len(msg.data), msg.height, msg.step))


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, honouring row padding (step > width x channels).

    The result may share memory with the message; it is read-only.
    """
    check_image_msg(msg)
    encoding = ENCODINGS[msg.encoding]
    buffer = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    pixels = buffer[:, :msg.width * encoding.channels].reshape(
        msg.height, msg.width, encoding.channels)
    return np.ascontiguousarray(encoding.to_rgb(pixels))


def check_compressed_msg(msg) -> None:
    """Cheap check of a sensor_msgs/CompressedImage before decoding: it holds some bytes."""
    if len(msg.data) == 0:
        raise ImageConversionError("empty_image", "empty compressed image (format %r)"
                                   % msg.format)


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG, PNG, or anything OpenCV decodes) -> (H, W, 3) RGB."""
    check_compressed_msg(msg)
    data = np.frombuffer(msg.data, dtype=np.uint8)
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(
            "undecodable", "cannot decode compressed image (format %r, %d bytes)"
            % (msg.format, data.size))
    if decoded.dtype != np.uint8:  # 16-bit PNG: keep the high byte
        decoded = (decoded >> 8).astype(np.uint8)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def msg_to_rgb(msg) -> np.ndarray:
    """Either kind of image message -> (H, W, 3) uint8 RGB (compressed ones carry ``format``)."""
    if hasattr(msg, "format"):
        return compressed_to_rgb(msg)
    return image_to_rgb(msg)


def _label_palette() -> np.ndarray:
    """(256, 1, 3) lookup table for cv2.LUT: class colours, then black for any other value
    (e.g. the ignore index 255)."""
    lut = np.zeros((256, 1, 3), dtype=np.uint8)
    lut[:len(CLASSES), 0] = palette()
    return lut


_LABEL_LUT = _label_palette()


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class indices -> (H, W, 3) uint8 RGB in the class colours."""
    # One OpenCV lookup from one channel to three: about 4x faster than merging three
    # channels for cv2.LUT, which was itself ten times faster than numpy fancy indexing.
    return cv2.applyColorMap(np.ascontiguousarray(labels, np.uint8), _LABEL_LUT)


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5,
            color: Optional[np.ndarray] = None) -> np.ndarray:
    """Class colours blended over the camera image with weight ``alpha``.

    Background pixels (class 0, whose colour is black) keep the camera image untouched,
    so the scene stays readable and only the classes found are tinted. ``color``: the
    colour mask when the caller has it already (``colorize(labels)``).
    """
    if rgb.shape[:2] != labels.shape:
        raise ValueError("image %s and labels %s differ in size" % (rgb.shape[:2], labels.shape))
    if color is None:
        color = colorize(labels)
    blended = cv2.addWeighted(rgb, 1.0 - alpha, color, alpha, 0.0)
    background = (labels == 0).view(np.uint8)
    return cv2.copyTo(np.ascontiguousarray(rgb), background, blended)


def bounded_size(height: int, width: int, max_side: int) -> Tuple[int, int]:
    """(height, width) scaled down, keeping the aspect, so the longer side is at most
    ``max_side``; unchanged when it already is."""
    longest = max(height, width)
    if longest <= max_side:
        return height, width
    scale = max_side / float(longest)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def visuals(rgb: np.ndarray, labels: np.ndarray, max_side: int, with_color: bool,
            with_overlay: bool, alpha: float = 0.5
            ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(colour mask, overlay) drawn at most ``max_side`` pixels on the longer side, each only
    when asked for (None otherwise): people look at these, so they need not cost what the
    camera's full resolution would. The colour mask serves the overlay too."""
    if not (with_color or with_overlay):
        return None, None
    height, width = bounded_size(labels.shape[0], labels.shape[1], max_side)
    if (height, width) != labels.shape:
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        if with_overlay:
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    color = colorize(labels)
    blended = overlay(rgb, labels, alpha, color) if with_overlay else None
    return (color if with_color else None), blended


def message_keeping_arrays(msg_type: type):
    """A new message of ``msg_type`` whose uint8[] fields keep an ``array.array('B')`` assigned
    to them. Messages generated with ``check_fields`` (ROS 2 Kilted on) keep it only with
    their checks on; with them off (the default) each assignment copies it once more (half
    the cost of a 1920x1080 mask message). Older ones always keep it."""
    if "_check_fields" in getattr(msg_type, "__slots__", ()):
        return msg_type(check_fields=True)
    return msg_type()


def numpy_to_image_msg(image: np.ndarray, encoding: str, header=None):
    """(H, W) mono8 or (H, W, 3) rgb8 array -> sensor_msgs/Image with the given header."""
    from sensor_msgs.msg import Image

    if image.dtype != np.uint8:
        raise ValueError("expected uint8 pixels, got %s" % image.dtype)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if encoding not in ENCODINGS or ENCODINGS[encoding].channels != channels:
        raise ValueError("array of shape %s cannot be encoded as %r" % (image.shape, encoding))
    msg = message_keeping_arrays(Image)
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    # array.array('B') is the type rclpy stores; filling it from the array's buffer is one
    # copy and no per-element check, and the message keeps that array (no second copy).
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(image).data)
    msg.data = data
    return msg


def rgb_to_compressed_msg(rgb: np.ndarray, fmt: str = "jpeg", header=None,
                          quality: Optional[int] = 90):
    """(H, W, 3) RGB -> sensor_msgs/CompressedImage in ``jpeg`` or ``png`` (tests, tools)."""
    from sensor_msgs.msg import CompressedImage

    extension = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if extension is None:
        raise ValueError("unsupported compressed format %r (jpeg, png)" % fmt)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if extension == ".jpg" and quality else []
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError("OpenCV could not encode the image as %s" % fmt)
    msg = message_keeping_arrays(CompressedImage)
    if header is not None:
        msg.header = header
    msg.format = "jpeg" if extension == ".jpg" else "png"
    msg.data = array.array("B", encoded.tobytes())
    return msg
