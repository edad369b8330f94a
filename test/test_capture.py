"""Frames to label next (node/capture.py), the GeoJSON layer and its log (node/geo_layer.py)
and the radio-link outputs (node/link.py), on real files: rate limit, cap (oldest first, or
stop), atomic writes, a folder that cannot be written and a cap too small for any frame standing in for a
full disk, a killed log line, PNG round trips."""
import json

import cv2
import numpy as np
import pytest

from lpcv_segmentation.core.classes import class_id
from lpcv_segmentation.core.detections import detection_report
from lpcv_segmentation.core.fileio import TEMP_MARKER
from lpcv_segmentation.node.capture import CaptureSettings, FrameCapture, confidence_figures
from lpcv_segmentation.node.geo_layer import LineLog, feature_collection
from lpcv_segmentation.node.link import (PNG_FORMAT, confidence_mono8, decode_mask_png,
                                         encode_mask_png, png_mask_msg)
from lpcv_segmentation.node.tracking import Tracker
from scene import scene_labels, scene_rgb

H, W = 96, 128


def unsure(value: float = 0.4) -> np.ndarray:
    return np.full((64, 64), value, np.float32)


def stamp(sec: int) -> dict:
    return {"sec": sec, "nanosec": 5}


def capture(tmp_path, **overrides) -> FrameCapture:
    settings = dict(directory=str(tmp_path / "cap"), min_interval_s=1.0, max_mb=10.0)
    settings.update(overrides)
    return FrameCapture(CaptureSettings(**settings))


def test_confidence_figures_and_what_counts_as_unsure(tmp_path):
    confidence = np.array([[0.9, 0.9], [0.3, 1.0]], np.float32)
    assert confidence_figures(confidence, 0.5) == {"mean_confidence": 0.775,
                                                   "low_confidence_share": 0.25}
    cap = capture(tmp_path, min_mean_confidence=0.6, max_low_share=0.2)
    rgb, labels = scene_rgb(H, W), scene_labels(H, W)
    assert cap.consider(rgb, labels, np.full((8, 8), 0.95, np.float32), stamp(1), "c", 0.0) \
        == "sure"
    assert cap.consider(rgb, labels, confidence, stamp(2), "c", 0.0) == "saved"  # share 0.25


def test_saved_frames_form_a_dataset_with_a_sidecar(tmp_path):
    cap = capture(tmp_path)
    rgb, labels = scene_rgb(H, W), scene_labels(H, W)
    assert cap.consider(rgb, labels, unsure(), stamp(7), "cam", 10.0,
                        {"geo": {"status": "ok"}}) == "saved"
    root = tmp_path / "cap"
    name = "capture_0000000007_000000005"
    image = cv2.imread(str(root / "IMG" / "train" / (name + ".png")), cv2.IMREAD_COLOR)
    assert np.array_equal(image[..., ::-1], rgb)
    label = cv2.imread(str(root / "GT" / "train" / (name + ".png")), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label, labels)
    meta = json.loads((root / "meta" / (name + ".json")).read_text())
    assert meta["stamp"] == {"sec": 7, "nanosec": 5} and meta["frame_id"] == "cam"
    assert meta["mean_confidence"] == pytest.approx(0.4) and meta["geo"] == {"status": "ok"}
    assert not [p for p in root.rglob("*") if TEMP_MARKER in p.name]
    # The training reader takes the folder as it is.
    from training.data import find_pairs, validate_pairs
    pairs = find_pairs(root, "train")
    assert [p[0].name for p in pairs] == [name + ".png"]
    validate_pairs(pairs, progress=False)


def test_rate_limit(tmp_path):
    cap = capture(tmp_path, min_interval_s=5.0)
    rgb, labels = scene_rgb(H, W), scene_labels(H, W)
    results = [cap.consider(rgb, labels, unsure(), stamp(t), "c", float(t))
               for t in range(12)]
    assert results == ["saved"] + ["rate_limited"] * 4 + ["saved"] + ["rate_limited"] * 4 \
        + ["saved", "rate_limited"]
    assert cap.counts["saved"] == 3 and cap.counts["unsure"] == 12


def frame_bytes(tmp_path) -> int:
    probe = capture(tmp_path / "probe")
    probe.consider(scene_rgb(H, W), scene_labels(H, W), unsure(), stamp(0), "c", 0.0)
    return probe.used_bytes()


def test_cap_deletes_the_oldest_first(tmp_path):
    size = frame_bytes(tmp_path)
    cap = capture(tmp_path, min_interval_s=0.0, max_mb=2.5 * size / 1048576.0)
    for t in range(5):
        assert cap.consider(scene_rgb(H, W), scene_labels(H, W), unsure(), stamp(t), "c",
                            float(t)) == "saved"
    names = sorted(p.stem for p in (tmp_path / "cap" / "meta").iterdir())
    assert names == ["capture_0000000003_000000005", "capture_0000000004_000000005"]
    assert sorted(p.stem for p in (tmp_path / "cap" / "GT" / "train").iterdir()) == names
    assert cap.counts["deleted"] == 3 and cap.used_bytes() <= cap.cap_bytes
    # A restart continues the same cap over what is on disk.
    again = capture(tmp_path, min_interval_s=0.0, max_mb=2.5 * size / 1048576.0)
    assert again.used_bytes() == cap.used_bytes()


def test_cap_stops_and_warns(tmp_path):
    size = frame_bytes(tmp_path)
    cap = capture(tmp_path, min_interval_s=0.0, max_mb=2.5 * size / 1048576.0,
                  when_full="stop")
    results = [cap.consider(scene_rgb(H, W), scene_labels(H, W), unsure(), stamp(t), "c",
                            float(t)) for t in range(4)]
    assert results == ["saved", "saved", "full", "full"]
    assert cap.failing and "cap" in cap.last_error
    assert len(list((tmp_path / "cap" / "meta").iterdir())) == 2


def test_a_cap_smaller_than_a_frame_saves_nothing_and_says_so(tmp_path):
    cap = capture(tmp_path, max_mb=1e-4)
    assert cap.consider(scene_rgb(H, W), scene_labels(H, W), unsure(), stamp(1), "c",
                        0.0) == "full"
    assert cap.status()["full"] == 1 and cap.failing


def test_a_folder_that_cannot_be_written_fails_without_raising(tmp_path):
    # The labels' folder is a file: no write can succeed there, whoever runs the node (root
    # writes into read-only folders, so permissions would not show it).
    root = tmp_path / "cap"
    root.mkdir()
    (root / "GT").write_text("not a folder")
    cap = capture(tmp_path)
    assert cap.consider(scene_rgb(H, W), scene_labels(H, W), unsure(), stamp(1), "c",
                        0.0) == "failed"
    assert "GT" in cap.last_error and cap.failing
    assert not (root / "IMG").exists() or not any((root / "IMG").rglob("*.*"))


def test_a_write_error_leaves_no_image_without_its_label(tmp_path):
    # The image's folder is a file: the label is written first, then removed again.
    root = tmp_path / "cap"
    (root / "IMG").mkdir(parents=True)
    (root / "IMG" / "train").write_text("not a folder")
    cap = capture(tmp_path)
    assert cap.consider(scene_rgb(H, W), scene_labels(H, W), unsure(), stamp(1), "c",
                        0.0) == "failed"
    assert list((root / "GT" / "train").iterdir()) == []
    assert "cannot save frame capture_0000000001_000000005" in cap.last_error


# -- GeoJSON and its log -------------------------------------------------------------------------
def tracked_report():
    labels = np.zeros((60, 80), np.uint8)
    labels[10:20, 10:20] = class_id("person")
    tracker = Tracker(min_frames=1)
    report = detection_report(labels, 5, 0, "cam", [class_id("person")], 1)
    report["detections"][0]["ground"] = {"east_m": 1.0, "north_m": 2.0, "latitude": 47.1,
                                         "longitude": 8.2, "footprint_m2": 3.0}
    tracker.update(report["detections"], report["stamp"])
    return tracker, report


def test_feature_collection_parses_with_geojson_and_shapely():
    import geojson
    from shapely.geometry import shape
    tracker, report = tracked_report()
    collection = feature_collection(tracker.confirmed(), report["stamp"], "cam")
    parsed = geojson.loads(json.dumps(collection))
    assert parsed.is_valid and len(parsed["features"]) == 1
    point = shape(parsed["features"][0]["geometry"])
    assert (point.x, point.y) == (8.2, 47.1)  # longitude first (RFC 7946)
    assert parsed["features"][0]["properties"]["track_id"] == 1


def test_log_lines_survive_a_line_cut_short(tmp_path):
    path = tmp_path / "log" / "objects.geojsonl"
    log = LineLog(str(path))
    log.write({"type": "Feature", "n": 1})
    log.close()
    with open(path, "ab") as handle:  # what a kill in the middle of a write leaves
        handle.write(b'{"type": "Feat')
    log = LineLog(str(path))
    log.write({"type": "Feature", "n": 2})
    log.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["n"] == 1 and json.loads(lines[2])["n"] == 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1])


# -- radio link ----------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_mask_is_lossless(level):
    labels = scene_labels(480, 640)
    labels[::7, ::5] = 13  # speckle, so the PNG has more than flat runs to keep
    data = encode_mask_png(labels, level)
    assert np.array_equal(decode_mask_png(data), labels)
    msg = png_mask_msg(labels, level=level)
    assert msg.format == PNG_FORMAT and np.array_equal(decode_mask_png(msg.data), labels)


def test_confidence_mono8():
    confidence = np.array([[1.0, 0.5], [0.0, 0.999]], np.float32)
    assert confidence_mono8(confidence, (2, 2)).tolist() == [[255, 128], [0, 255]]
    assert confidence_mono8(confidence, (8, 6)).shape == (6, 8)


def test_log_on_a_full_disk_reports_the_error():
    log = LineLog("/dev/full")  # every write: ENOSPC, as on a full disk
    log.write_many([{"n": 1}, {"n": 2}])
    log.wait()
    assert log.lines == 0 and "No space left on device" in log.error
    log.close()
