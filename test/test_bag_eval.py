"""bag_eval on a real bag: offline (Segmenter here) and live (a real segmentation_node process),
with accuracy checked against `python -m training score` on the same frames."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lpcv_segmentation.replay.bagio import DETECTIONS_TOPIC, MASK_TOPIC, BagWriter, bag_topics
from lpcv_segmentation.core.labels_io import read_label_png
from ros_helpers import random_domain_id, ros_env, start, stop

ROOT = Path(__file__).resolve().parent.parent
START_NS = 1700000000 * 10 ** 9
FRAMES = 8  # the fixture dataset's val split
# Live replays at a fifth of the recorded 10 Hz: a pace the node keeps up with even on a
# crowded machine (the tiny model takes a few tens of ms a frame), so every frame must come back.
PACE = 0.2
CONTRACT_KEYS = {"miou", "dice", "frames", "frames_out", "dropped", "rejected", "latency_ms"}
DOMAIN = random_domain_id()


def bag_eval(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "lpcv_segmentation.replay.bag_eval"]
                          + [str(a) for a in args], cwd=ROOT, env=ros_env(DOMAIN),
                          capture_output=True, text=True, timeout=timeout)


def score(pred_dir: Path, gt_dir: Path, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "training", "score", "--pred", str(pred_dir),
                             "--gt", str(gt_dir), "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def assert_same_accuracy(report: dict, reference: dict) -> None:
    for key in ("miou", "dice", "pixel_acc"):
        assert report[key] == pytest.approx(reference[key], abs=1e-9), key
    assert report["per_class_iou"] == pytest.approx(reference["per_class_iou"], abs=1e-9)


@pytest.fixture(scope="module")
def flight(synth_dataset, tmp_path_factory) -> Path:
    from training.dataset_to_bag import FlightClock, write_flight_bag
    bag = tmp_path_factory.mktemp("flight") / "flight"
    write_flight_bag(synth_dataset, "val", bag, FlightClock(10.0, START_NS), progress=False)
    return bag


@pytest.fixture(scope="module")
def offline(flight, tiny_onnx, tmp_path_factory):
    """The offline report, its dumped predictions and overlays."""
    out = tmp_path_factory.mktemp("offline")
    result = bag_eval("--bag", flight, "--json", out / "report.json", "--mode", "offline",
                      "--model", tiny_onnx, "--dump", out / "dump", "--overlays",
                      out / "overlays", "--overlay-count", 2, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "offline replay of" in result.stdout
    return json.loads((out / "report.json").read_text()), out


def test_offline_accuracy_matches_the_scorer(offline, synth_dataset, tiny_onnx, tmp_path):
    """Predictions made independently from the dataset's PNG files, scored by the scorer
    command, give the figures bag_eval reports from the bag."""
    from lpcv_segmentation.runtime.segmenter import Segmenter
    report, out = offline
    assert CONTRACT_KEYS <= set(report)
    assert (report["frames"], report["frames_out"], report["scored_frames"]) == (FRAMES,) * 3
    assert (report["dropped"], report["rejected"], report["lost"]) == (0, 0, 0)
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["max"]

    segmenter = Segmenter(str(tiny_onnx))
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    images = sorted((synth_dataset / "IMG" / "val").glob("*.png"))
    for index, path in enumerate(images):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        labels = segmenter.segment(rgb).labels
        cv2.imwrite(str(pred_dir / path.name), labels)
        dumped = read_label_png(str(out / "dump" / "pred" / ("frame_%06d.png" % index)))
        np.testing.assert_array_equal(dumped, labels)
    reference = score(pred_dir, synth_dataset / "GT" / "val", tmp_path / "score.json")
    assert reference["images"] == FRAMES
    assert_same_accuracy(report, reference)


def test_offline_overlays(offline):
    report, out = offline
    assert [Path(p).name for p in report["overlays"]] == ["frame_000000.png",
                                                          "frame_000007.png"]
    panel = cv2.imread(report["overlays"][0])
    # camera | ground truth | prediction, each enlarged to at least 192 px, over a legend
    assert panel.shape[1] >= 3 * 192 and panel.shape[0] > 192


def check_live(report: dict, out: Path, offline_dump: Path) -> None:
    """A live report: every frame accounted for, accuracy equal to the scorer's on the frames
    that came back, and masks identical to the offline predictions of the same frames."""
    assert CONTRACT_KEYS <= set(report)
    assert report["frames"] == FRAMES
    assert (report["frames_out"], report["dropped"], report["rejected"], report["lost"]) == \
        (FRAMES, 0, 0, 0), {k: report[k] for k in ("frames_out", "dropped", "lost", "latency_ms")}
    assert report["node"]["diagnostics"] is not None
    assert report["unpaired_outputs"] == 0 and report["bad_outputs"] == 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["max"]
    assert report["detections"]["messages"] >= report["frames_out"]
    assert report["scored_frames"] == report["frames_out"]
    reference = score(out / "dump" / "pred", out / "dump" / "gt", out / "score.json")
    assert reference["images"] == report["frames_out"]
    assert_same_accuracy(report, reference)
    for path in sorted((out / "dump" / "pred").glob("*.png")):
        np.testing.assert_array_equal(read_label_png(str(path)),
                                      read_label_png(str(offline_dump / "pred" / path.name)))


@pytest.mark.slow
@pytest.mark.ros
def test_live_against_a_node_it_starts(flight, tiny_onnx, offline, tmp_path):
    out = tmp_path
    result = bag_eval("--bag", flight, "--json", out / "live.json", "--mode", "live",
                      "--rate", PACE, "--model", tiny_onnx, "--record", out / "outputs",
                      "--dump", out / "dump", "--quiet")
    assert result.returncode == 0, result.stderr + (out / "live.node.log").read_text()
    report = json.loads((out / "live.json").read_text())
    check_live(report, out, offline[1] / "dump")
    assert report["node"]["started_here"] and report["node"]["exit_code"] == 0
    assert report["recorded_rate_hz"] == pytest.approx(10.0)
    assert report["rate_factor"] == PACE and report["output_rate_hz"] > 0

    topics = bag_topics(out / "outputs")
    assert topics[MASK_TOPIC] == ("sensor_msgs/msg/Image", report["frames_out"])
    assert topics[DETECTIONS_TOPIC].msgtype == "std_msgs/msg/String"
    assert topics[DETECTIONS_TOPIC].count == report["detections"]["messages"]


@pytest.mark.slow
@pytest.mark.ros
def test_live_against_a_running_node(flight, tiny_onnx, offline, tmp_path):
    """--node-running: counters are the node's since the replay began (run twice)."""
    node = start([sys.executable, "-m", "lpcv_segmentation.node.segmentation_node", "--ros-args",
                  "--params-file", str(ROOT / "config" / "drone.yaml"),
                  "-p", "model_path:=%s" % tiny_onnx, "-p", "input_topic:=/camera/image_raw"],
                 ros_env(DOMAIN), tmp_path / "node.log")
    try:
        for run in ("first", "second"):
            out = tmp_path / run
            result = bag_eval("--bag", flight, "--json", out / "live.json", "--mode", "live",
                              "--rate", PACE, "--node-running", "--dump", out / "dump",
                              "--quiet")
            assert result.returncode == 0, result.stderr
            report = json.loads((out / "live.json").read_text())
            check_live(report, out, offline[1] / "dump")
            assert not report["node"]["started_here"]
            assert report["frames_received_by_node"] == FRAMES
    finally:
        assert stop(node) == 0, (tmp_path / "node.log").read_text()


def test_offline_scores_a_strided_model_with_either_upsampling(flight, tiny_strided_onnx,
                                                               tmp_path):
    reports = {}
    for upsample in ("labels", "logits"):
        out = tmp_path / ("%s.json" % upsample)
        result = bag_eval("--bag", flight, "--json", out, "--mode", "offline", "--model",
                          tiny_strided_onnx, "--upsample", upsample, "--quiet")
        assert result.returncode == 0, result.stderr
        reports[upsample] = json.loads(out.read_text())
        assert reports[upsample]["frames"] == FRAMES and 0.0 <= reports[upsample]["miou"] <= 1.0
    assert reports["labels"]["per_class_iou"] != reports["logits"]["per_class_iou"]


def test_missing_model_is_named(flight, tmp_path):
    result = bag_eval("--bag", flight, "--json", tmp_path / "r.json", "--mode", "live",
                      "--model", tmp_path / "absent.onnx")
    assert result.returncode == 1
    assert "no model file at %s" % (tmp_path / "absent.onnx") in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r.json").exists()


def test_ground_truth_of_wrong_size_stops_the_evaluation(tiny_onnx, tmp_path):
    bag = tmp_path / "bad_gt"
    with BagWriter(bag) as writer:
        for i in range(2):
            writer.write_image("/camera/image_raw", START_NS + i, np.zeros((16, 24, 3), np.uint8),
                               "rgb8")
            writer.write_image("/camera/gt_mask", START_NS + i, np.zeros((8, 24), np.uint8),
                               "mono8")
    result = bag_eval("--bag", bag, "--json", tmp_path / "r.json", "--model", tiny_onnx)
    assert result.returncode == 1
    assert "/camera/gt_mask at stamp %d is 24x8 (WxH)" % START_NS in result.stderr
    assert str(bag) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.ros
def test_node_that_cannot_start_is_reported(flight, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_text("not an ONNX file")
    result = bag_eval("--bag", flight, "--json", tmp_path / "r.json", "--mode", "live",
                      "--model", bad, "--quiet")
    assert result.returncode == 1
    assert "segmentation node exited with code 1" in result.stderr
    assert str(bad) in result.stderr  # the tail of the node's log says what failed
    assert "Traceback" not in result.stderr and not (tmp_path / "r.json").exists()
