"""lpcv_segmentation.core.metrics against a slow per-pixel reference (test/metrics_reference.py)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.metrics import (SegmentationMetrics, class_iou, confusion_matrix,
                                            image_dice)
from metrics_reference import ref_confusion, ref_image_dice, summary_matches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_pair(rng: np.random.Generator, num_classes: int = NUM_CLASSES):
    """A small (pred, gt) pair in which the label uses a few classes, the prediction partly
    others (classes predicted but never labelled), with some ignored pixels; sometimes the
    whole label is ignored or the image is empty."""
    kind = rng.integers(0, 10)
    h, w = int(rng.integers(1, 13)), int(rng.integers(1, 13))
    if kind == 0:
        return np.zeros((0, w), np.uint8), np.zeros((0, w), np.uint8)
    gt_classes = rng.choice(num_classes, size=int(rng.integers(1, 5)), replace=False)
    pred_classes = rng.choice(num_classes, size=int(rng.integers(1, 5)), replace=False)
    gt = rng.choice(gt_classes, size=(h, w)).astype(np.uint8)
    pred = np.where(rng.random((h, w)) < 0.5, gt, rng.choice(pred_classes, size=(h, w)))
    pred = pred.astype(np.uint8)
    if kind == 1:
        gt[:] = IGNORE_INDEX
    else:
        gt[rng.random((h, w)) < 0.1] = IGNORE_INDEX
    return pred, gt


@pytest.mark.parametrize("seed", range(25))
def test_agrees_with_per_pixel_reference(seed):
    rng = np.random.default_rng(seed)
    pairs = [random_pair(rng) for _ in range(int(rng.integers(1, 8)))]
    metrics = SegmentationMetrics()
    for pred, gt in pairs:
        dice = metrics.update(pred, gt)
        np.testing.assert_array_equal(
            confusion_matrix(pred, gt), np.array(ref_confusion(pred, gt, NUM_CLASSES)))
        want = ref_image_dice(pred, gt, NUM_CLASSES)
        assert (math.isnan(dice) if want is None else dice == pytest.approx(want, abs=1e-12))
    assert summary_matches(metrics.summary(), pairs, NUM_CLASSES, CLASS_NAMES) == []


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_reference_for_other_class_counts_and_int_types(seed):
    rng = np.random.default_rng(100 + seed)
    num_classes = int(rng.integers(2, 40))  # up to 40*40 bins: the uint16 index path
    names = ["c%d" % i for i in range(num_classes)]
    pairs = [tuple(a.astype(np.int64) for a in random_pair(rng, num_classes)) for _ in range(4)]
    metrics = SegmentationMetrics(num_classes=num_classes, class_names=names)
    for pred, gt in pairs:
        metrics.update(pred, gt)
    assert summary_matches(metrics.summary(), pairs, num_classes, names) == []


def test_class_predicted_but_absent_from_label_scores_zero_dice():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 1]], np.uint8)
    metrics = SegmentationMetrics()
    # class 0: 2*3 / (4 + 3); class 1: 2*0 / (0 + 1); the other 12 classes are skipped.
    assert metrics.update(pred, gt) == pytest.approx((6 / 7 + 0) / 2)
    summary = metrics.summary()
    assert summary["per_class_iou"]["background"] == pytest.approx(3 / 4)
    assert summary["per_class_iou"]["avalanche"] == 0.0
    assert summary["miou"] == pytest.approx(3 / 8)
    assert summary["pixel_acc"] == pytest.approx(3 / 4)
    assert [n for n, v in summary["per_class_iou"].items() if v is None] == list(CLASS_NAMES[2:])


def test_confusion_rows_are_labels_and_columns_predictions():
    conf = confusion_matrix(np.array([[2, 2, 5]]), np.array([[1, 2, 255]]))
    assert conf.shape == (NUM_CLASSES, NUM_CLASSES) and conf.dtype == np.int64
    assert conf[1, 2] == 1 and conf[2, 2] == 1 and conf.sum() == 2  # the 255 pixel is ignored


def test_fully_ignored_and_empty_images_have_no_dice_and_do_not_dilute_the_mean():
    metrics = SegmentationMetrics()
    assert math.isnan(metrics.update(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)))
    assert math.isnan(metrics.update(np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.uint8)))
    only_ignored = metrics.summary()
    assert only_ignored["images"] == 2
    assert only_ignored["miou"] is None and only_ignored["dice"] is None
    assert only_ignored["pixel_acc"] is None
    assert all(v is None for v in only_ignored["per_class_iou"].values())
    metrics.update(np.ones((3, 3), np.uint8), np.ones((3, 3), np.uint8))
    summary = metrics.summary()
    assert summary["dice"] == 1.0 and summary["miou"] == 1.0 and summary["images"] == 3


def test_nothing_seen_gives_json_ready_nones():
    summary = SegmentationMetrics().summary()
    assert summary["images"] == 0
    assert summary["miou"] is None and summary["dice"] is None and summary["pixel_acc"] is None


def test_image_dice_and_class_iou_of_empty_confusion_are_nan():
    empty = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    assert math.isnan(image_dice(empty))
    assert np.isnan(class_iou(empty)).all()


def test_merge_equals_one_pass_and_batch_update_equals_single_updates():
    rng = np.random.default_rng(7)
    preds = rng.integers(0, NUM_CLASSES, (6, 9, 11), dtype=np.uint8)
    gts = rng.integers(0, NUM_CLASSES, (6, 9, 11), dtype=np.uint8)
    gts[0, :4] = IGNORE_INDEX
    whole = SegmentationMetrics()
    whole.update_batch(preds, gts)
    first, second = SegmentationMetrics(), SegmentationMetrics()
    for pred, gt in zip(preds[:2], gts[:2]):
        first.update(pred, gt)
    for pred, gt in zip(preds[2:], gts[2:]):
        second.update(pred, gt)
    merged = first.merge(second)
    np.testing.assert_array_equal(merged.confusion, whole.confusion)
    assert merged.summary() == whole.summary()
    with pytest.raises(ValueError, match="cannot merge"):
        merged.merge(SegmentationMetrics(num_classes=3, class_names=["a", "b", "c"]))


def test_class_images_count_the_images_whose_labels_hold_each_class():
    metrics = SegmentationMetrics()
    water, avalanche = CLASS_NAMES.index("flood/water/river/sea"), CLASS_NAMES.index("avalanche")
    for k in range(5):
        gt = np.zeros((4, 4), np.uint8)
        gt[0, :k] = water  # water in images 1-4
        if k == 2:
            gt[3, 3] = avalanche
        pred = np.full((4, 4), avalanche, np.uint8)  # predicted everywhere: not counted
        metrics.update(pred, gt)
    counts = metrics.summary()["class_images"]
    assert counts["background"] == 5 and counts["flood/water/river/sea"] == 4
    assert counts["avalanche"] == 1 and counts["vehicle"] == 0
    ignored = np.full((4, 4), IGNORE_INDEX, np.uint8)  # an unannotated image holds no class
    metrics.update(np.zeros((4, 4), np.uint8), ignored)
    assert metrics.summary()["class_images"] == counts
    metrics.reset()
    assert set(metrics.summary()["class_images"].values()) == {0}


def test_reset_forgets_everything():
    metrics = SegmentationMetrics()
    metrics.update(np.ones((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    metrics.reset()
    assert metrics.confusion.sum() == 0 and metrics.summary()["images"] == 0


@pytest.mark.parametrize("pred, gt, message", [
    (np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), "shape"),
    (np.full((2, 2), 14, np.uint8), np.zeros((2, 2), np.uint8), r"prediction .*\(14\)"),
    (np.full((2, 2), 255, np.uint8), np.zeros((2, 2), np.uint8), r"prediction .*\(255\)"),
    (np.full((2, 2), -1, np.int16), np.zeros((2, 2), np.uint8), r"prediction .*\(-1\)"),
    (np.zeros((2, 2), np.uint8), np.full((2, 2), 14, np.uint8), r"label .*\(14\)"),
    (np.zeros((2, 2), np.uint8), np.array([[254, 255], [0, 1]], np.uint8), r"label .*\(254\)"),
    (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8), "integer"),
    (np.zeros((2, 2), np.uint8), np.zeros((2, 2), bool), "integer"),
])
def test_bad_input_raises_value_error(pred, gt, message):
    metrics = SegmentationMetrics()
    with pytest.raises(ValueError, match=message):
        metrics.update(pred, gt)
    assert metrics.summary()["images"] == 0  # a rejected image leaves no trace


def test_update_confusion_checks_its_matrix():
    metrics = SegmentationMetrics()
    with pytest.raises(ValueError, match=r"shape \(3, 3\), expected \(%d, %d\)"
                       % (NUM_CLASSES, NUM_CLASSES)):
        metrics.update_confusion(np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="non-negative integer pixel counts"):
        metrics.update_confusion(-np.ones((NUM_CLASSES, NUM_CLASSES), np.int64))


def test_on_board_modules_run_on_python_38_and_metrics_needs_only_numpy():
    files = [os.path.join(ROOT, "lpcv_segmentation", "core", name) for name in ("metrics.py", "labels_io.py")]
    vermin = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vermin"),
                             "-t=3.8-", "--no-tips", "--violations"] + files,
                            capture_output=True, text=True)
    assert vermin.returncode == 0, vermin.stdout + vermin.stderr
    probe = ("import sys, lpcv_segmentation.core.metrics; "
             "print(sorted(m for m in ('cv2', 'torch', 'training', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
