"""`python -m training score` end to end on PNG files, in a separate process."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from lpcv_segmentation.core.classes import CLASS_NAMES, NUM_CLASSES
from metrics_reference import summary_matches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def run_score(*args):
    return subprocess.run([sys.executable, "-m", "training", "score"] + [str(a) for a in args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def write_pairs(root, count=6, shape=(24, 32), seed=0):
    """Prediction and label PNGs in root/pred and root/gt; returns the (pred, gt) arrays."""
    rng = np.random.default_rng(seed)
    (root / "pred").mkdir()
    (root / "gt").mkdir()
    pairs = []
    for i in range(count):
        gt = rng.choice(rng.choice(NUM_CLASSES, 3, replace=False), size=shape).astype(np.uint8)
        pred = np.where(rng.random(shape) < 0.6, gt,
                        rng.integers(0, NUM_CLASSES, shape)).astype(np.uint8)
        gt[rng.random(shape) < 0.05] = 255
        if i == 1:
            gt[:] = 255  # nothing annotated: no Dice for this image
        name = "img_%03d.png" % i
        cv2.imwrite(str(root / "pred" / name), pred)
        if i == 2:  # a 3-channel label: the index is channel 0 (red)
            rgb = np.stack([gt, np.full_like(gt, 11), np.full_like(gt, 1)], axis=-1)
            Image.fromarray(rgb, "RGB").save(str(root / "gt" / name))
        else:
            cv2.imwrite(str(root / "gt" / name), gt)
        pairs.append((pred, gt))
    return pairs


def test_scores_a_directory_like_the_reference(tmp_path):
    pairs = write_pairs(tmp_path)
    out = tmp_path / "out" / "score.json"
    result = run_score("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--json", out)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert set(summary) == {"miou", "dice", "pixel_acc", "per_class_iou", "images",
                            "class_images"}
    assert list(summary["per_class_iou"]) == list(CLASS_NAMES)
    assert summary_matches(summary, pairs, NUM_CLASSES, CLASS_NAMES) == []
    assert "images 6" in result.stdout and "mIoU %.4f" % summary["miou"] in result.stdout


def test_help_is_clean():
    result = run_score("--help")
    assert result.returncode == 0 and "--pred" in result.stdout and "--json" in result.stdout


def _remove(path):
    os.remove(str(path))


def _corrupt(path):
    with open(str(path), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")


def _resize(path):
    cv2.imwrite(str(path), np.zeros((24, 31), np.uint8))


def _put(value):
    def put(path):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        image[3, 4] = value
        cv2.imwrite(str(path), image)
    return put


# (directory, file, change) -> the command must stop with a message naming that file.
BAD_INPUTS = {
    "prediction missing": ("pred", "img_003.png", _remove, "img_003.png"),
    "label missing": ("gt", "img_004.png", _remove, "img_004.png"),
    "corrupt label": ("gt", "img_000.png", _corrupt, "img_000.png"),
    "corrupt prediction": ("pred", "img_005.png", _corrupt, "img_005.png"),
    "size mismatch": ("pred", "img_003.png", _resize, "img_003.png"),
    "label value 14": ("gt", "img_004.png", _put(14), "img_004.png"),
    "prediction value 255": ("pred", "img_000.png", _put(255), "img_000.png"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_stops_with_message_naming_the_file(tmp_path, case):
    write_pairs(tmp_path)
    directory, name, change, named = BAD_INPUTS[case]
    change(tmp_path / directory / name)
    out = tmp_path / "score.json"
    result = run_score("--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--json", out)
    assert result.returncode != 0
    assert named in result.stderr and "error" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_or_empty_directories_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_score("--pred", tmp_path / "nowhere", "--gt", tmp_path / "empty")
    assert result.returncode != 0 and "empty: no label PNGs" in result.stderr
    (tmp_path / "empty" / "a.png").write_bytes(b"")
    result = run_score("--pred", tmp_path / "nowhere", "--gt", tmp_path / "empty")
    assert result.returncode != 0 and "nowhere: not a directory" in result.stderr
    assert "Traceback" not in result.stderr
