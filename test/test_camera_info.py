"""camera_info next to an image topic, and scaled to another image size (pure functions)."""
import pytest
from sensor_msgs.msg import CameraInfo

from lpcv_segmentation.node.camera_info import camera_info_topic, scale_camera_info


@pytest.mark.parametrize("image, info", [
    ("/uav1/camera/image_raw", "/uav1/camera/camera_info"),
    ("/uav1/camera/image_raw/compressed", "/uav1/camera/camera_info"),
    ("camera/image_raw", "camera/camera_info"),
    ("image_raw", "camera_info"),
    ("/image_raw", "/camera_info"),
])
def test_camera_info_topic_is_beside_the_image(image, info):
    assert camera_info_topic(image) == info


def _info(width=640, height=480) -> CameraInfo:
    info = CameraInfo(width=width, height=height)
    info.k = [500.0, 0.0, 320.0, 0.0, 480.0, 240.0, 0.0, 0.0, 1.0]
    info.p = [500.0, 0.0, 320.0, -25.0, 0.0, 480.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.d = [0.1, -0.2, 0.0, 0.0, 0.0]
    info.roi.x_offset, info.roi.width = 64, 320
    return info


def test_scaling_halves_the_intrinsics_and_keeps_the_distortion():
    original = _info()
    scaled = scale_camera_info(original, 320, 120)  # x / 2, y / 4
    assert (scaled.width, scaled.height) == (320, 120)
    assert list(scaled.k) == [250.0, 0.0, 160.0, 0.0, 120.0, 60.0, 0.0, 0.0, 1.0]
    assert list(scaled.p) == [250.0, 0.0, 160.0, -12.5, 0.0, 120.0, 60.0, 0.0, 0.0, 0.0, 1.0,
                              0.0]
    assert list(scaled.d) == [0.1, -0.2, 0.0, 0.0, 0.0]
    assert (scaled.roi.x_offset, scaled.roi.width) == (32, 160)
    assert list(original.k)[0] == 500.0 and original.width == 640  # the input is untouched


def test_same_size_and_uncalibrated_cameras():
    same = scale_camera_info(_info(), 640, 480)
    assert list(same.k) == list(_info().k)
    blank = scale_camera_info(CameraInfo(), 160, 120)
    assert (blank.width, blank.height) == (160, 120) and not any(blank.k)
