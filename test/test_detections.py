"""detections: connected regions per class, on label maps whose true regions are known."""
import json

import numpy as np
import pytest

from lpcv_segmentation.core.classes import CLASS_NAMES, DETECTION_CLASS_IDS, class_id
from lpcv_segmentation.core.detections import class_coverage, detection_report, find_regions

PERSON, VEHICLE, FIRE, ROAD = (class_id(n) for n in
                               ("person", "vehicle", "fire/flare", "road/railway/bridge"))


@pytest.fixture
def scene():
    """60x80 labels: two people, one vehicle, a diagonal fire streak, a road, and a 2 px speck."""
    labels = np.zeros((60, 80), np.uint8)
    labels[10:20, 5:15] = PERSON  # 100 px, bbox (5, 10, 10, 10)
    labels[40:44, 60:75] = PERSON  # 60 px, bbox (60, 40, 15, 4)
    labels[30:50, 20:30] = VEHICLE  # 200 px
    for i in range(12):  # a diagonal line: one region only with 8-connectivity
        labels[45 + i // 4, 36 + i] = FIRE
    labels[:, 50:52] = ROAD  # 120 px, not a detection class below
    labels[2, 70:72] = VEHICLE  # 2 px speck
    return labels


def test_regions_have_the_true_boxes_centroids_and_areas(scene):
    regions = find_regions(scene, [PERSON, VEHICLE, FIRE], min_area_px=1)
    by_class = {}
    for region in regions:
        by_class.setdefault(region["class_name"], []).append(region)
    people = by_class["person"]
    assert [r["bbox"] for r in people] == [[5, 10, 10, 10], [60, 40, 15, 4]]  # largest first
    assert [r["area_px"] for r in people] == [100, 60]
    assert people[0]["centroid"] == [9.5, 14.5]
    assert people[0]["area_fraction"] == pytest.approx(100 / 4800, abs=1e-6)
    assert people[0]["class_id"] == PERSON
    vehicles = by_class["vehicle"]
    assert [r["area_px"] for r in vehicles] == [200, 2]
    assert vehicles[0]["bbox"] == [20, 30, 10, 20]
    fire = by_class["fire/flare"]
    assert len(fire) == 1 and fire[0]["area_px"] == 12 and fire[0]["bbox"] == [36, 45, 12, 3]
    assert all(r["mean_confidence"] is None for r in regions)


def test_minimum_area_and_class_selection(scene):
    regions = find_regions(scene, [VEHICLE, ROAD], min_area_px=10)
    assert [(r["class_name"], r["area_px"]) for r in regions] == [  # by class id
        ("road/railway/bridge", 120), ("vehicle", 200)]
    per_class = find_regions(scene, [PERSON, VEHICLE], min_area_px={PERSON: 80, VEHICLE: 1})
    assert [(r["class_id"], r["area_px"]) for r in per_class] == [
        (PERSON, 100), (VEHICLE, 200), (VEHICLE, 2)]
    assert find_regions(scene, [class_id("lava_flow")]) == []


def test_mean_confidence_per_region(scene):
    confidence = np.full(scene.shape, 0.9, np.float32)
    confidence[10:20, 5:10] = 0.5  # half of the first person
    regions = find_regions(scene, [PERSON], confidence=confidence)
    assert regions[0]["mean_confidence"] == pytest.approx(0.7, abs=1e-4)
    assert regions[1]["mean_confidence"] == pytest.approx(0.9, abs=1e-4)
    with pytest.raises(ValueError, match=r"confidence \(10, \d+\) and labels \(\d+, \d+\) differ"):
        find_regions(scene, [PERSON], confidence=confidence[:10])


def test_coverage_sums_to_one_and_names_every_class(scene):
    coverage = class_coverage(scene)
    assert list(coverage) == list(CLASS_NAMES)
    assert sum(coverage.values()) == pytest.approx(1.0, abs=1e-5)
    assert coverage["vehicle"] == pytest.approx(202 / 4800, abs=1e-6)
    assert coverage["lava_flow"] == 0.0


def test_report_is_json_with_the_documented_keys(scene):
    report = detection_report(scene, 12, 345, "cam", [PERSON], 50,
                              np.ones(scene.shape, np.float32))
    decoded = json.loads(json.dumps(report))
    assert set(decoded) == {"stamp", "frame_id", "width", "height", "detections", "coverage"}
    assert decoded["stamp"] == {"sec": 12, "nanosec": 345}
    assert (decoded["width"], decoded["height"], decoded["frame_id"]) == (80, 60, "cam")
    assert set(decoded["detections"][0]) == {"class_id", "class_name", "bbox", "centroid",
                                             "area_px", "area_fraction", "mean_confidence"}
    assert [d["area_px"] for d in decoded["detections"]] == [100, 60]


def test_regions_found_at_model_resolution_are_reported_in_image_pixels():
    from ros_helpers import scene_labels
    full = scene_labels(720, 1280)
    exact = detection_report(full, 1, 2, "cam", DETECTION_CLASS_IDS, 64)
    shrunk = detection_report(full, 1, 2, "cam", DETECTION_CLASS_IDS, 64, max_side=256)
    assert (shrunk["width"], shrunk["height"]) == (1280, 720)
    assert [r["class_name"] for r in shrunk["detections"]] == \
        [r["class_name"] for r in exact["detections"]]
    step = 1280 / 256.0  # one pixel of the shrunk map, in image pixels
    for got, want in zip(shrunk["detections"], exact["detections"]):
        assert max(abs(a - b) for a, b in zip(got["bbox"], want["bbox"])) <= step
        assert max(abs(a - b) for a, b in zip(got["centroid"], want["centroid"])) <= step
        assert abs(got["area_px"] - want["area_px"]) <= 0.1 * want["area_px"]
    for name, fraction in exact["coverage"].items():
        assert abs(shrunk["coverage"][name] - fraction) < 0.01
    # A map already at most max_side is used as it is.
    small = scene_labels(120, 160)
    assert detection_report(small, 1, 2, "cam", DETECTION_CLASS_IDS, 20, max_side=256) == \
        detection_report(small, 1, 2, "cam", DETECTION_CLASS_IDS, 20)


def test_min_area_stays_in_image_pixels_on_a_shrunk_map():
    labels = np.zeros((400, 400), np.uint8)
    labels[0:20, 0:20] = 10  # 400 image pixels: 25 on the 80x80 map
    kept = detection_report(labels, 0, 0, "", [10], 400, max_side=80)["detections"]
    dropped = detection_report(labels, 0, 0, "", [10], 401, max_side=80)["detections"]
    assert [r["area_px"] for r in kept] == [400] and dropped == []
