"""Pixels to the ground (node/geolocation.py) and telemetry paired by stamp (node/telemetry.py),
against geometry computed here: a nadir camera at 50 m, a tilted mount, heading 90 degrees,
the footprint of a known square, and WGS84 latitude/longitude from the radii of curvature."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from lpcv_segmentation.core.detections import detection_report
from lpcv_segmentation.node.config import PARAMETERS, check_config, ground_config
from lpcv_segmentation.node.geolocation import (Intrinsics, Pose, enu_to_geodetic,
                                                ground_sampling_distance,
                                                intrinsics_from_camera_info, pixel_ground_area,
                                                pixel_to_ground)
from lpcv_segmentation.node.ground import GROUND_OFF, GroundSide
from lpcv_segmentation.node.telemetry import Telemetry

K = Intrinsics(fx=500.0, fy=500.0, cx=320.0, cy=240.0)
LAT, LON, ALT = 47.3712, 8.5421, 450.0
A_WGS84, F_WGS84 = 6378137.0, 1 / 298.257223563


def metres_to_degrees(east: float, north: float, latitude: float, height: float = ALT - 50.0):
    """Small offsets at ``height`` above the ellipsoid to degrees, with the WGS84 meridian
    and prime-vertical radii."""
    e2 = F_WGS84 * (2 - F_WGS84)
    s = math.sin(math.radians(latitude))
    meridian = A_WGS84 * (1 - e2) / (1 - e2 * s * s) ** 1.5
    prime = A_WGS84 / math.sqrt(1 - e2 * s * s)
    return (math.degrees(north / (meridian + height)),
            math.degrees(east / ((prime + height) * math.cos(math.radians(latitude)))))


def pose(heading: float = 0.0, roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0,
         height: float = 50.0) -> Pose:
    return Pose(LAT, LON, ALT, height, heading, roll, pitch, yaw)


def test_nadir_camera_centre_below_the_fix_and_fx_to_the_right_50_m_east():
    centre, right, below = pixel_to_ground([(K.cx, K.cy), (K.cx + K.fx, K.cy),
                                            (K.cx, K.cy + K.fy)], K, pose())
    assert centre == pytest.approx((0.0, 0.0), abs=1e-9)
    assert right == pytest.approx((50.0, 0.0), abs=1e-9)
    assert below == pytest.approx((0.0, -50.0), abs=1e-9)  # image down = behind = south
    assert ground_sampling_distance(K, pose()) == pytest.approx(50.0 / K.fx)


def test_heading_90_turns_the_image_top_to_the_east():
    right, up = pixel_to_ground([(K.cx + K.fx, K.cy), (K.cx, K.cy - K.fy / 2)], K,
                                pose(heading=90.0))
    assert right == pytest.approx((0.0, -50.0), abs=1e-9)  # image right: south
    assert up == pytest.approx((25.0, 0.0), abs=1e-9)  # image top: east


@pytest.mark.parametrize("pitch", [20.0, 45.0])
def test_pitched_mount_looks_ahead_by_the_tangent(pitch):
    (centre,) = pixel_to_ground([(K.cx, K.cy)], K, pose(pitch=pitch))
    assert centre == pytest.approx((0.0, 50.0 * math.tan(math.radians(pitch))), abs=1e-9)
    # The image row through the centre stays perpendicular to the view: a pixel fx to the
    # right is as far right as the slant range to the centre.
    (right,) = pixel_to_ground([(K.cx + K.fx, K.cy)], K, pose(pitch=pitch))
    assert right[0] == pytest.approx(50.0 / math.cos(math.radians(pitch)))
    assert right[1] == pytest.approx(centre[1])


def test_rolled_mount_looks_left_and_yawed_mount_turns_the_image():
    (centre,) = pixel_to_ground([(K.cx, K.cy)], K, pose(roll=30.0))
    assert centre == pytest.approx((-50.0 * math.tan(math.radians(30.0)), 0.0), abs=1e-9)
    (right,) = pixel_to_ground([(K.cx + K.fx, K.cy)], K, pose(yaw=90.0))
    assert right == pytest.approx((0.0, -50.0), abs=1e-9)  # as a heading of 90


def test_rays_at_or_above_the_horizon_have_no_ground_position():
    top, centre = pixel_to_ground([(K.cx, 0.0), (K.cx, K.cy)], K, pose(pitch=90.0))
    assert top is None and centre is None  # a forward camera: the centre is the horizon
    (below,) = pixel_to_ground([(K.cx, K.cy + K.fy)], K, pose(pitch=90.0))
    assert below == pytest.approx((0.0, 50.0), abs=1e-9)  # 45 degrees down


def test_footprint_of_a_known_square():
    # 20x20 pixels at 50 m and fx 500: 2 m x 2 m.
    assert 400 * pixel_ground_area(K.cx, K.cy, K, pose()) == pytest.approx(4.0)
    # Tilted by 30 degrees: the centre pixel's ground patch stretches by 1/cos along the view
    # and both sides by the slant range 50 / cos: area (0.1 / cos)^2 / cos per pixel.
    c = math.cos(math.radians(30.0))
    assert pixel_ground_area(K.cx, K.cy, K, pose(pitch=30.0)) == pytest.approx(
        0.01 / c ** 3, rel=1e-6)


def test_latitude_longitude_match_the_radii_of_curvature():
    latitude, longitude = enu_to_geodetic(30.0, 40.0, pose())
    dlat, dlon = metres_to_degrees(30.0, 40.0, LAT)
    assert latitude == pytest.approx(LAT + dlat, abs=1e-8)  # ~1 mm
    assert longitude == pytest.approx(LON + dlon, abs=1e-8)


def test_intrinsics_scale_with_the_image():
    info = SimpleNamespace(k=[500.0, 0, 320.0, 0, 400.0, 240.0, 0, 0, 1], width=640, height=480)
    assert intrinsics_from_camera_info(info, 320, 240) == Intrinsics(250.0, 200.0, 160.0, 120.0)
    info.k = [0.0] * 9
    assert intrinsics_from_camera_info(info, 640, 480) is None


# -- telemetry -----------------------------------------------------------------------------------
def stamp(t: float) -> SimpleNamespace:
    return SimpleNamespace(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))


def fix_msg(t: float, status: int = 0, latitude: float = LAT) -> SimpleNamespace:
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp(t)), latitude=latitude,
                           longitude=LON, altitude=ALT, status=SimpleNamespace(status=status))


def ns(t: float) -> int:
    return int(round(t * 1e9))


def test_telemetry_pairs_the_nearest_samples_within_the_tolerance():
    telemetry = Telemetry("rel_alt", tolerance_s=0.5, topics={"fix": "/fix"})
    assert telemetry.pose_at(ns(100.0)).reason == "no GNSS fix received on /fix; " \
        "no relative altitude received; no heading received"
    for t, latitude in ((99.0, 1.0), (100.1, 2.0), (101.0, 3.0)):
        telemetry.add_fix(fix_msg(t, latitude=latitude))
    telemetry.add_rel_alt(50.0, ns(100.2))
    telemetry.add_heading(90.0, ns(99.8))
    found = telemetry.pose_at(ns(100.0))
    assert found.reason is None and found.pose.latitude == 2.0
    assert (found.pose.height_m, found.pose.heading_deg) == (50.0, 90.0)
    stale = telemetry.pose_at(ns(102.0))
    assert stale.pose is None and "relative altitude -1.80 s from the frame's stamp" in stale.reason
    assert telemetry.pose_at(0).reason == "the frame has no stamp"


def test_telemetry_refuses_a_fix_without_position_and_uses_the_fix_altitude_source():
    telemetry = Telemetry("fix_altitude", ground_elevation_m=400.0)
    telemetry.add_fix(fix_msg(10.0, status=-1))
    telemetry.add_heading(0.0, ns(10.0))
    assert "GNSS fix without a valid value" in telemetry.pose_at(ns(10.0)).reason
    telemetry.add_fix(fix_msg(10.1))
    found = telemetry.pose_at(ns(10.1))
    assert found.pose.height_m == pytest.approx(ALT - 400.0)


def test_telemetry_takes_a_downward_rangefinder_within_its_limits():
    telemetry = Telemetry("range")
    telemetry.add_fix(fix_msg(10.0))
    telemetry.add_heading(0.0, ns(10.0))
    telemetry.add_rel_alt(99.0, ns(10.0))  # not the height source: ignored

    def reading(t: float, value: float) -> SimpleNamespace:
        return SimpleNamespace(header=SimpleNamespace(stamp=stamp(t)), range=value,
                               min_range=0.2, max_range=40.0)
    telemetry.add_range(reading(10.0, 45.0))  # beyond max_range: no valid value
    assert "rangefinder height without a valid value" in telemetry.pose_at(ns(10.0)).reason
    telemetry.add_range(reading(10.05, 31.5))
    assert telemetry.pose_at(ns(10.05)).pose.height_m == 31.5


# -- the ground side on a detection report -------------------------------------------------------
def ground_values(**overrides) -> dict:
    values = {spec.name: spec.default for spec in PARAMETERS}
    values.update(overrides)
    return values


def test_ground_side_locates_each_region_or_says_why_not():
    labels = np.zeros((480, 640), np.uint8)
    labels[230:250, 60:80] = 10  # a 20x20 person left of the centre...
    labels[300:320, 310:330] = 10  # ...and one below it
    report = detection_report(labels, 100, 0, "cam", [10], 1)
    side = GroundSide(ground_config(ground_values()))
    info = SimpleNamespace(k=[K.fx, 0, K.cx, 0, K.fy, K.cy, 0, 0, 1], width=640, height=480)
    assert side.locate(report, info)["reason"].startswith("no GNSS fix received on /mavros")
    assert all(region["ground"] is None for region in report["detections"])
    side.telemetry.add_fix(fix_msg(100.0))
    side.telemetry.add_rel_alt(50.0, ns(100.0))
    side.telemetry.add_heading(0.0, ns(100.0))
    assert side.locate(report, None)["reason"] == "no camera_info"
    geo = side.locate(report, info)
    assert geo["status"] == "ok" and geo["gsd_m"] == pytest.approx(0.1)
    assert len(report["detections"]) == 2
    for region in report["detections"]:
        u, v = region["centroid"]
        ground = region["ground"]
        assert ground["east_m"] == pytest.approx(50.0 * (u - K.cx) / K.fx, abs=1e-3)
        assert ground["north_m"] == pytest.approx(-50.0 * (v - K.cy) / K.fy, abs=1e-3)
        assert ground["footprint_m2"] == pytest.approx(4.0)
        dlat, dlon = metres_to_degrees(ground["east_m"], ground["north_m"], LAT)
        assert (ground["latitude"], ground["longitude"]) == pytest.approx((LAT + dlat,
                                                                           LON + dlon), abs=1e-7)
    off = GroundSide(ground_config(ground_values(fix_topic="")))
    assert off.locate(detection_report(labels, 1, 0, "cam", [10], 1), info)["reason"] == GROUND_OFF


@pytest.mark.parametrize("name, value", [
    ("height_source", "baro"), ("mount_pitch_deg", 200.0), ("track_min_frames", 0),
    ("track_min_iou", 0.0), ("capture_when_full", "panic"), ("mask_png_level", 10),
    ("capture_max_mb", 0.0), ("geo_sync_tolerance_s", 0.0), ("rel_alt_topic", " "),
])
def test_each_new_parameter_is_checked_by_name(name, value, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(ValueError, match="parameter %s=" % name):
        check_config(ground_values(**{name: value, "model_path": str(model)}))
