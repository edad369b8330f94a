"""Detections on the ground in a real ROS 2 graph of separate processes: a camera (the test
scene drifting 2 px a frame), a NavSatFix publisher, a relative-altitude publisher, a heading
publisher and the camera's camera_info publisher, the node (the exact palette model) and a
listener. Checked against the test's own geometry: a nadir camera at 50 m, fx = fy = 400 px,
heading north, so a pixel (u, v) lies 50 (u - cx) / 400 m east and 50 (cy - v) / 400 m north
of the fix. Also: stable track ids over the sequence, GeoJSON that geojson and shapely parse,
the GeoJSON-lines log, the PNG mask equal to the raw one, the confidence image, the reason
when the fix goes stale, and a noise frame (the model unsure) as the one frame captured, in a
folder that import-dataset and the training reader take. About 30 s on 2 cores.
"""
import json
import sys
import time

import numpy as np
import pytest

from lpcv_segmentation.core.classes import CLASS_NAMES, DETECTION_CLASS_IDS
from lpcv_segmentation.core.detections import find_regions
from ros_helpers import (HELPERS, REPO, random_domain_id, ros_env, scene_labels, start, stop,
                         write_palette_model)
from test_geolocation import metres_to_degrees
from test_node import CAMERA_TOPIC, Graph

pytestmark = [pytest.mark.ros, pytest.mark.slow]

LAT, LON, ALT = 47.3712, 8.5421, 500.0
# Frames at the palette model's input size, so that its regions are exactly the scene's.
HEIGHT, FX, WIDTH, HEIGHT_PX = 50.0, 400.0, 128, 128
CX, CY = WIDTH / 2.0, HEIGHT_PX / 2.0
DRIFT, FRAMES = 2, 8


def expected_regions(index: int):
    """The true regions of frame ``index`` (the scene rolled right) and their ground points."""
    labels = np.roll(scene_labels(HEIGHT_PX, WIDTH), index * DRIFT, axis=1)
    regions = find_regions(labels, DETECTION_CLASS_IDS, 1)
    for region in regions:
        u, v = region["centroid"]  # pixel centres at integer coordinates, as in camera_info
        region["east"] = HEIGHT * (u - CX) / FX
        region["north"] = HEIGHT * (CY - v) / FX
    return regions


def match(region, truth):
    """The true region of the same class nearest to a reported one."""
    same = [t for t in truth if t["class_id"] == region["class_id"]]
    return min(same, key=lambda t: np.hypot(t["centroid"][0] - region["centroid"][0],
                                            t["centroid"][1] - region["centroid"][1]))


def test_detections_on_the_ground_tracks_geojson_capture_and_link(tmp_path):
    import geojson
    from shapely.geometry import shape

    model = write_palette_model(tmp_path / "palette.onnx", 128)
    env = ros_env(random_domain_id())
    capture_dir, log_path = tmp_path / "capture", tmp_path / "objects.geojsonl"
    graph = Graph(tmp_path, env, [
        "-p", "model_path:=%s" % model, "-p", "input_topic:=%s" % CAMERA_TOPIC,
        "-p", "input_qos:=reliable", "-p", "fix_topic:=/gps/fix", "-p", "rel_alt_topic:=/gps/rel_alt",
        "-p", "heading_topic:=/gps/heading", "-p", "track_min_frames:=2",
        "-p", "min_region_area_px:=16", "-p", "capture_dir:=%s" % capture_dir,
        "-p", "capture_low_confidence:=0.99", "-p", "capture_max_low_share:=0.01",
        "-p", "capture_min_interval_s:=0.0", "-p", "geo_log_path:=%s" % log_path,
        "-p", "diagnostics_period_s:=0.3"], listener_args=["--ground"])
    publishers = {}
    try:
        for kind, args in (("fix", ["--topic", "/gps/fix", "--lat", str(LAT), "--lon", str(LON),
                                    "--alt", str(ALT)]),
                           ("rel_alt", ["--topic", "/gps/rel_alt", "--value", str(HEIGHT)]),
                           ("heading", ["--topic", "/gps/heading", "--value", "0"]),
                           ("camera_info", ["--topic", "/camera/camera_info", "--fx", str(FX),
                                            "--width", str(WIDTH), "--height", str(HEIGHT_PX)])):
            publishers[kind] = start([sys.executable, str(HELPERS), "telemetry", "--kind", kind]
                                     + args, env, tmp_path / ("%s.log" % kind))
        graph.wait_for("the node's label info", lambda: graph.events("label_info"), timeout=60)

        size = ["--width", str(WIDTH), "--height", str(HEIGHT_PX)]

        def located():  # frames until the telemetry has reached the node
            graph.camera("--qos", "reliable", "--frame-id", "warmup", *size)
            return any(e["data"]["geo"]["status"] == "ok" for e in graph.events("detections")
                       if e["data"]["frame_id"] == "warmup")
        graph.wait_for("ground positions", located, timeout=60)
        graph.camera("--qos", "reliable", "--count", str(FRAMES), "--rate", "4", "--number",
                     "--drift", str(DRIFT), "--frame-id", "keep_geo", *size)
        names = ["keep_geo%d" % i for i in range(FRAMES)]
        for topic in ("detections", "geojson", "mask", "mask_png", "confidence"):
            graph.wait_for(topic, lambda: {e.get("frame_id") or e["data"].get("frame_id")
                                           or e["data"]["properties"]["frame_id"]
                                           for e in graph.events(topic)} >= set(names))
        # The fix goes silent: the next frame keeps its pixels and says why.
        stop(publishers.pop("fix"))
        time.sleep(1.0)  # beyond geo_sync_tolerance_s
        graph.camera("--qos", "reliable", "--frame-id", "stale", *size)
        # A frame the model is unsure about (noise): the only one captured.
        graph.camera("--qos", "reliable", "--frame-id", "unsure", "--pattern", "noise", *size)
        stale = graph.wait_for("the stale frame", lambda: [
            e["data"] for e in graph.events("detections") if e["data"]["frame_id"] == "stale"])
        graph.wait_for("the unsure frame", lambda: [
            e for e in graph.events("mask") if e["frame_id"] == "unsure"])
        called = time.time()
        diagnostics = graph.wait_for("diagnostics after the stale frame",
                                     lambda: graph.diagnostics(after=called))
    finally:
        for process in publishers.values():
            stop(process)
        assert graph.close() == 0
    assert "Traceback" not in graph.log()

    # Ground positions against the test's own geometry; stable ids.
    reports = {e["data"]["frame_id"]: e["data"] for e in graph.events("detections")}
    ids = {}
    for index, name in enumerate(names):
        report = reports[name]
        assert report["geo"]["status"] == "ok", report["geo"]
        assert report["geo"]["gsd_m"] == pytest.approx(HEIGHT / FX, rel=1e-3)
        truth = expected_regions(index)
        assert len(report["detections"]) == len(truth)
        for region in report["detections"]:
            expected = match(region, truth)
            ground = region["ground"]
            assert abs(ground["east_m"] - expected["east"]) < 0.5, (name, region, expected)
            assert abs(ground["north_m"] - expected["north"]) < 0.5, (name, region, expected)
            dlat, dlon = metres_to_degrees(expected["east"], expected["north"], LAT, ALT - HEIGHT)
            assert abs(ground["latitude"] - (LAT + dlat)) * 111e3 < 0.5
            assert abs(ground["longitude"] - (LON + dlon)) * 75e3 < 0.5
            area = expected["area_px"] * (HEIGHT / FX) ** 2
            assert ground["footprint_m2"] == pytest.approx(area, rel=0.3)
            assert region["track_id"] is not None  # confirmed during the warm-up frames
            key = (region["class_id"], expected["bbox"][0] - index * DRIFT)  # one object
            assert ids.setdefault(key, region["track_id"]) == region["track_id"], (name, key)
    assert len(set(ids.values())) == len(ids)  # one id per object
    people = sum(1 for class_id, _ in ids if CLASS_NAMES[class_id] == "person")
    assert reports[names[-1]]["tracks"]["confirmed_now"]["person"] == people == 2

    # GeoJSON on the topic: one Feature per tracked object, as geojson and shapely read it.
    collections = {e["data"]["properties"]["frame_id"]: e["data"] for e in graph.events("geojson")}
    last = geojson.loads(json.dumps(collections[names[-1]]))
    assert last.is_valid and len(last["features"]) == len(ids)
    located_last = {r["track_id"]: r["ground"] for r in reports[names[-1]]["detections"]}
    for feature in last["features"]:
        point = shape(feature["geometry"])
        ground = located_last[feature["properties"]["track_id"]]
        assert (point.x, point.y) == pytest.approx((ground["longitude"], ground["latitude"]),
                                                   abs=1e-6)
    # The log: one Feature per line for each confirmed object seen in a frame.
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert all(geojson.loads(json.dumps(line)).is_valid for line in lines)
    assert {line["properties"]["track_id"] for line in lines} == set(ids.values())

    # The stale fix: pixels kept, no guessed position, the reason in the JSON and diagnostics.
    assert stale[0]["geo"]["status"] == "unavailable"
    assert "GNSS fix" in stale[0]["geo"]["reason"] and stale[0]["detections"]
    assert all(region["ground"] is None for region in stale[0]["detections"])
    assert "GNSS fix" in diagnostics["geolocation"]
    assert "no ground positions" in diagnostics["_message"] and diagnostics["_level"] == 1
    assert diagnostics["tracks_confirmed_total: person"] == "2"

    # Radio link: the PNG mask decodes to the raw mask; the confidence is mono8 at its size.
    for name in names:
        assert np.array_equal(graph.image("mask_png", name), graph.image("mask", name))
    assert {e["format"] for e in graph.events("mask_png")} == {"mono8; png compressed"}
    confidence = graph.image("confidence", names[0])
    assert confidence.shape == (HEIGHT_PX, WIDTH) and confidence.max() == 255

    # Captured frames: a dataset the training reader and import-dataset take.
    from training.data import find_pairs, validate_pairs
    from training.import_dataset import ImportOptions, import_dataset
    pairs = find_pairs(capture_dir, "train")
    assert len(pairs) == 1  # the scene's frames are certain, the noise is not
    validate_pairs(pairs, progress=False)
    meta = json.loads(next((capture_dir / "meta").glob("*.json")).read_text())
    assert meta["frame_id"] == "unsure" and meta["low_confidence_share"] > 0.01
    counts = import_dataset(str(capture_dir / "IMG"), str(capture_dir / "GT"),
                            str(REPO / "training" / "mappings" / "lpcv.yaml"),
                            str(tmp_path / "imported"), ImportOptions(val_fraction=0.0),
                            progress=False)
    assert counts == {"train": len(pairs), "val": 0}
