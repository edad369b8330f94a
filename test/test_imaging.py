"""imaging: ROS image messages <-> numpy for every supported encoding, and the output pictures."""
import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from lpcv_segmentation.core.classes import CLASSES, NUM_CLASSES, palette
from lpcv_segmentation.core.imaging import (ENCODINGS, ImageConversionError, colorize,
                                            compressed_to_rgb, image_to_rgb,
                                            message_keeping_arrays, msg_to_rgb,
                                            numpy_to_image_msg, overlay, rgb_to_compressed_msg)


@pytest.fixture
def rgb():
    """A 5x7 image where every pixel and channel differs, so any channel or row mix-up shows."""
    return np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)


def _raw_msg(pixels: np.ndarray, encoding: str, padding: int = 0) -> Image:
    """A message built by hand (not by the code under test), with ``padding`` bytes per row."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, padding), 77, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, step=rows.shape[1] + padding)
    msg.data = array.array("B", padded.tobytes())
    return msg


@pytest.mark.parametrize("padding", [0, 5])
@pytest.mark.parametrize("encoding, make", [
    ("rgb8", lambda rgb: rgb),
    ("bgr8", lambda rgb: rgb[..., ::-1]),
    ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)])),
    ("bgra8", lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)])),
])
def test_colour_encodings_round_to_rgb(rgb, encoding, make, padding):
    msg = _raw_msg(np.ascontiguousarray(make(rgb)), encoding, padding)
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("padding", [0, 3])
def test_mono8_becomes_grey_rgb(padding):
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    out = image_to_rgb(_raw_msg(grey, "mono8", padding))
    np.testing.assert_array_equal(out, np.dstack([grey] * 3))


def test_encodings_table_covers_the_issue():
    assert set(ENCODINGS) == {"rgb8", "bgr8", "rgba8", "bgra8", "mono8"}


@pytest.mark.parametrize("mutate, kind, message", [
    (lambda m: setattr(m, "encoding", "16UC1"), "unsupported_encoding",
     "unsupported encoding '16UC1'"),
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported_encoding",
     "unsupported encoding 'yuv422'"),
    (lambda m: setattr(m, "data", m.data[:-1]), "data_length",
     "data length 104 does not match height x step = 5 x 21"),
    (lambda m: setattr(m, "height", m.height + 1), "data_length",
     "data length 105 does not match height x step = 6 x 21"),
    (lambda m: setattr(m, "width", 0), "empty_image", r"empty image \(0x5\)"),
    (lambda m: setattr(m, "height", 0), "empty_image", r"empty image \(7x0\)"),
    (lambda m: setattr(m, "step", 7 * 3 - 1), "bad_step", "step 20 is shorter than a row"),
])
def test_bad_raw_messages_are_refused_with_a_reason(rgb, mutate, kind, message):
    msg = _raw_msg(rgb, "rgb8")
    mutate(msg)
    with pytest.raises(ImageConversionError, match=message) as error:  # a sentence for the log
        image_to_rgb(msg)
    assert error.value.kind == kind


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_round_trip(fmt):
    rng = np.random.default_rng(0)
    # Smooth content so JPEG's loss stays small.
    small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    rgb = cv2.resize(small, (64, 48), interpolation=cv2.INTER_LINEAR)
    msg = rgb_to_compressed_msg(rgb, fmt)
    assert isinstance(msg, CompressedImage) and msg.format == fmt
    out = msg_to_rgb(msg)
    assert out.shape == (48, 64, 3)
    if fmt == "png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 4.0


def test_compressed_grey_and_alpha_png_become_rgb():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    ok, encoded = cv2.imencode(".png", grey)
    msg = CompressedImage(format="png", data=array.array("B", encoded.tobytes()))
    np.testing.assert_array_equal(compressed_to_rgb(msg), np.dstack([grey] * 3))
    bgra = np.dstack([grey, grey // 2, grey // 3, np.full_like(grey, 200)])
    ok, encoded = cv2.imencode(".png", bgra)
    msg = CompressedImage(format="png", data=array.array("B", encoded.tobytes()))
    np.testing.assert_array_equal(compressed_to_rgb(msg), bgra[..., 2::-1])


@pytest.mark.parametrize("payload, kind, message", [
    (b"", "empty_image", r"empty compressed image \(format 'jpeg'\)"),
    (b"this is not an image at all", "undecodable",
     r"cannot decode compressed image \(format 'jpeg', 27 bytes\)"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "undecodable",  # a JPEG header and nothing else
     r"cannot decode compressed image \(format 'jpeg', 44 bytes\)"),
])
def test_undecodable_compressed_is_refused(payload, kind, message):
    msg = CompressedImage(format="jpeg", data=array.array("B", payload))
    with pytest.raises(ImageConversionError, match=message) as error:
        compressed_to_rgb(msg)
    assert error.value.kind == kind


def test_numpy_to_image_msg_round_trip(rgb):
    msg = numpy_to_image_msg(rgb, "rgb8")
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 21, "rgb8")
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    labels = (np.arange(35, dtype=np.uint8) % NUM_CLASSES).reshape(5, 7)
    mask = numpy_to_image_msg(labels, "mono8")
    assert (mask.step, mask.encoding) == (7, "mono8")
    np.testing.assert_array_equal(np.frombuffer(mask.data, np.uint8).reshape(5, 7), labels)


def test_messages_keep_the_array_they_are_given():
    """The generated setter copies an array.array once more unless the message's
    field checks are on (ROS 2 Kilted); the messages the node builds keep it as it is."""
    for msg_type in (Image, CompressedImage):
        msg = message_keeping_arrays(msg_type)
        data = array.array("B", bytes(range(6)))
        msg.data = data
        assert msg.data is data


def test_numpy_to_image_msg_refuses_a_wrong_shape(rgb):
    with pytest.raises(ValueError, match=r"shape \(5, 7, 3\) cannot be encoded as 'mono8'"):
        numpy_to_image_msg(rgb, "mono8")
    with pytest.raises(ValueError, match="expected uint8 pixels, got float32"):
        numpy_to_image_msg(rgb.astype(np.float32), "rgb8")


def test_colorize_uses_the_class_table():
    labels = np.array([[c.id for c in CLASSES] + [255]], dtype=np.uint8)
    colours = colorize(labels)
    np.testing.assert_array_equal(colours[0, :NUM_CLASSES], palette())
    np.testing.assert_array_equal(colours[0, NUM_CLASSES], [0, 0, 0])  # ignore index: black


def test_overlay_tints_classes_and_keeps_background():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[:2, :2] = 10  # person
    out = overlay(rgb, labels, alpha=0.5)
    np.testing.assert_array_equal(out[2:, :], rgb[2:, :])  # background untouched
    expected = np.round(0.5 * 100 + 0.5 * np.array(CLASSES[10].color)).astype(np.uint8)
    assert np.abs(out[0, 0].astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match=r"image \(4, 4\) and labels \(3, 4\) differ in size"):
        overlay(rgb, labels[:3])


def test_visuals_are_drawn_at_a_bounded_size_and_only_when_asked():
    from lpcv_segmentation.core.imaging import bounded_size, visuals
    assert bounded_size(1080, 1920, 640) == (360, 640)
    assert bounded_size(480, 640, 640) == (480, 640)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 14, (1080, 1920), dtype=np.uint8)
    rgb = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    color, blend = visuals(rgb, labels, 640, True, True, 0.5)
    assert color.shape == blend.shape == (360, 640, 3)
    small = cv2.resize(labels, (640, 360), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(color, palette()[small])
    np.testing.assert_array_equal(blend, overlay(cv2.resize(rgb, (640, 360)), small, 0.5))
    assert visuals(rgb, labels, 640, False, False) == (None, None)
    color, blend = visuals(rgb[:100, :100], labels[:100, :100], 640, True, False)
    assert blend is None and color.shape == (100, 100, 3)
