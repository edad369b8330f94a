"""The demo chain (scenes -> bag -> node -> live replay -> summary) with a real node process,
and the shipped default model the node and the demo fall back on."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from lpcv_segmentation.replay.bagio import MASK_TOPIC, bag_topics
from ros_helpers import random_domain_id, ros_env

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "default.onnx"


def demo(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "training", "demo"] + [str(a) for a in args],
                          cwd=ROOT, env=ros_env(random_domain_id()), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.ros
def test_demo_chain_end_to_end(tiny_onnx, tmp_path):
    out = tmp_path / "demo"
    # Paced at 2 Hz, which the node keeps up with even on a crowded machine (the tiny model
    # takes a few tens of ms a frame; 5 Hz saw a frame dropped at load 20 on 2 cores): every
    # frame must come back segmented.
    result = demo("--model", tiny_onnx, "--out", out, "--frames", 6, "--size", 128,
                  "--rate", 2, "--overlays", 2)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "live" and report["frames"] == 6
    assert (report["frames_out"], report["dropped"], report["rejected"], report["lost"]) == \
        (6, 0, 0, 0), {k: report[k] for k in ("frames_out", "dropped", "lost", "latency_ms")}
    assert report["node"]["started_here"] and report["node"]["exit_code"] == 0
    for label in ("frames segmented", "output rate", "latency, end to end",
                  "accuracy vs ground truth", "detections per class", "overlays"):
        assert label in result.stdout
    assert "mIoU %.3f" % report["miou"] in result.stdout
    overlays = report["overlays"]
    assert 1 <= len(overlays) <= 2
    for path in overlays:
        assert path.replace(str(Path.cwd()) + "/", "") in result.stdout or path in result.stdout
        assert cv2.imread(path) is not None
    assert bag_topics(out / "outputs")[MASK_TOPIC].count == report["frames_out"]

    # A second run replaces the first run's outputs instead of failing on them.
    again = demo("--model", tiny_onnx, "--out", out, "--frames", 2, "--size", 64,
                 "--rate", 2, "--overlays", 1)
    assert again.returncode == 0, again.stderr
    second = json.loads((out / "report.json").read_text())
    assert (second["frames"], second["frames_out"]) == (2, 2), second
    assert bag_topics(out / "outputs")[MASK_TOPIC].count == 2


def test_demo_without_its_model_fails_naming_it(tmp_path):
    missing = tmp_path / "absent.onnx"
    result = demo("--model", missing, "--out", tmp_path / "demo")
    assert result.returncode == 1
    assert "no model file at %s" % missing in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "demo" / "flight").exists()


def test_node_and_demo_default_to_the_shipped_model():
    from lpcv_segmentation.replay.bag_eval import resolve_model
    from lpcv_segmentation.node.config import default_model_path
    from lpcv_segmentation.runtime.segmenter import Segmenter

    assert default_model_path() == DEFAULT_MODEL
    assert resolve_model(None) == str(DEFAULT_MODEL)
    segmenter = Segmenter(str(DEFAULT_MODEL))
    assert segmenter.backend_name == "onnxruntime" and segmenter.num_classes == 14
    assert DEFAULT_MODEL.stat().st_size < 10 * 1024 * 1024  # small enough to commit
    card = (ROOT / "models" / "README.md").read_text()
    assert "trained on synthetic scenes only" in card
    assert "python -m training default-model" in card
    assert "`--quick` run" not in card  # not the card of a test build
