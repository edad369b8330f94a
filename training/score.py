"""Score prediction PNGs against label PNGs: dataset mIoU, per-class IoU, pixel accuracy and
the LPCV 2023 challenge's per-image mean Dice.

Files are paired by name: every PNG in --gt needs a PNG of the same name in --pred and the other
way round. A missing counterpart, a file that cannot be decoded, a size mismatch or a value
that is not a class index (labels may also hold 255, "ignore") stops the command with a
message naming the file; nothing is skipped.

Example:
  python -m training score --pred runs/val_pred --gt LPCVC_Val/GT/val --json val_score.json
"""
import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

import numpy as np
from tqdm import tqdm

from lpcv_segmentation.core.classes import IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.fileio import write_json_atomic
from lpcv_segmentation.core.formatting import fmt
from lpcv_segmentation.core.labels_io import LabelFileError, read_label_png
from lpcv_segmentation.core.metrics import SegmentationMetrics, confusion_matrix


class ScoreError(ValueError):
    """Inputs that cannot be scored; the message names the directory or file."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR",
                        help="directory of prediction PNGs (class index per pixel)")
    parser.add_argument("--gt", required=True, metavar="DIR",
                        help="directory of label PNGs with the same file names "
                             "(index per pixel; channel 0 when the PNG has 3 channels)")
    parser.add_argument("--json", metavar="OUT.json", default=None,
                        help="write {miou, dice, pixel_acc, per_class_iou, images} here")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads decoding PNGs (default: %(default)s)")


def list_pngs(directory: str) -> Dict[str, str]:
    """File name -> path for every .png file directly in ``directory``."""
    if not os.path.isdir(directory):
        raise ScoreError("%s: not a directory" % directory)
    return {name: os.path.join(directory, name) for name in sorted(os.listdir(directory))
            if name.lower().endswith(".png")}


def pair_files(pred_dir: str, gt_dir: str) -> List[Tuple[str, str]]:
    """(prediction path, label path) pairs matched by file name; every file needs its pair."""
    gts = list_pngs(gt_dir)
    if not gts:
        raise ScoreError("%s: no label PNGs found" % gt_dir)
    preds = list_pngs(pred_dir)
    for name in gts:
        if name not in preds:
            raise ScoreError("%s: no prediction for this label (expected %s)"
                             % (gts[name], os.path.join(pred_dir, name)))
    for name in preds:
        if name not in gts:
            raise ScoreError("%s: no label for this prediction (expected %s)"
                             % (preds[name], os.path.join(gt_dir, name)))
    return [(preds[name], gts[name]) for name in sorted(gts)]


def pair_confusion(pair: Tuple[str, str]) -> np.ndarray:
    """Read one prediction/label pair and return its confusion matrix (runs in a thread;
    OpenCV's decoder releases the GIL)."""
    pred_path, gt_path = pair
    pred = read_label_png(pred_path, NUM_CLASSES, ignore_index=None)
    gt = read_label_png(gt_path, NUM_CLASSES, ignore_index=IGNORE_INDEX)
    if pred.shape != gt.shape:
        raise ScoreError("%s: prediction is %dx%d (WxH) but its label %s is %dx%d"
                         % (pred_path, pred.shape[1], pred.shape[0], gt_path,
                            gt.shape[1], gt.shape[0]))
    return confusion_matrix(pred, gt, NUM_CLASSES, IGNORE_INDEX)


def score_dirs(pred_dir: str, gt_dir: str, workers: int = 1,
               progress: bool = True) -> SegmentationMetrics:
    """Score every pair in the two directories; raises ScoreError/LabelFileError naming a file."""
    pairs = pair_files(pred_dir, gt_dir)
    metrics = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        # map() yields in order; each result is a small (C, C) matrix, so nothing piles up.
        for conf in tqdm(pool.map(pair_confusion, pairs), total=len(pairs), desc="score",
                         unit="img", disable=not progress):
            metrics.update_confusion(conf)
    finally:
        # On the first bad file, stop at once instead of decoding the rest.
        pool.shutdown(wait=True, cancel_futures=True)
    return metrics


def main(args: argparse.Namespace) -> int:
    try:
        metrics = score_dirs(args.pred, args.gt, workers=args.workers)
    except (ScoreError, LabelFileError) as e:
        print("score: error: %s" % e, file=sys.stderr)
        return 1
    summary = metrics.summary()
    if args.json:
        write_json_atomic(args.json, summary)
    print("images %d  mIoU %s  Dice %s  pixel acc %s"
          % (summary["images"], fmt(summary["miou"]), fmt(summary["dice"]),
             fmt(summary["pixel_acc"])))
    per_class = summary["per_class_iou"]
    absent = [name for name, iou in per_class.items() if iou is None]
    for name, iou in per_class.items():
        if iou is not None:
            print("  %-28s IoU %s" % (name, fmt(iou)))
    if absent:
        print("  absent from labels and predictions: %s" % ", ".join(absent))
    if args.json:
        print("wrote %s" % args.json)
    return 0
