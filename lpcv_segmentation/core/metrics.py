"""Segmentation metrics: a streaming confusion matrix and the LPCV 2023 challenge's Dice.

Two families of figures come out of one pass over the images:

* dataset level, from the summed confusion matrix (rows = label, columns = prediction):
  mean IoU (what the paper reports), per-class IoU and pixel accuracy;
* image level, the challenge's accuracy: for each image a confusion matrix, per class
  ``dice = 2*TP / (2*TP + FP + FN) = 2*diag / (rowsum + colsum)``, NaN for a class absent
  from both label and prediction (skipped, i.e. nanmean over classes); a class predicted but
  absent from the label counts as 0. The score is the mean of the image scores.

Pixels whose label is ``ignore_index`` (255: not annotated, e.g. crop padding) count nowhere.
An image with no annotated pixel has no Dice (NaN); it is left out of the mean over images
but still counted in ``images``. The challenge's labels had no ignored pixels, so this choice
never changes a challenge score.

Pure numpy (no torch, no OpenCV) so that the drone, ``bag_eval`` and training share it.
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

__all__ = ["SegmentationMetrics", "confusion_matrix", "image_dice", "class_dice", "class_iou"]


def _check_labels(name: str, values: np.ndarray, num_classes: int,
                  allowed_extra: Optional[int]) -> None:
    """Raise ValueError unless every value is a class index (or ``allowed_extra``)."""
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError("%s must hold integer class indices, got dtype %s" % (name, values.dtype))
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high < num_classes:
        return  # the common case, decided by two reductions
    bad = np.unique(values[(values < 0) | (values >= num_classes)])
    if allowed_extra is not None:
        bad = bad[bad != allowed_extra]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        allowed = "0..%d" % (num_classes - 1)
        if allowed_extra is not None:
            allowed += " or %d (ignore)" % allowed_extra
        raise ValueError("%s holds values out of range (%s); allowed: %s" % (name, shown, allowed))


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES,
                     ignore_index: Optional[int] = IGNORE_INDEX) -> np.ndarray:
    """One image's (num_classes, num_classes) int64 confusion matrix, rows = gt, cols = pred.

    ``pred`` and ``gt`` are integer arrays of the same shape. Pixels where ``gt ==
    ignore_index`` are left out. Raises ValueError on a shape mismatch, a non-integer array,
    or a value that is not a class index (``ignore_index`` is allowed in ``gt`` only).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError("prediction shape %s does not match label shape %s"
                         % (pred.shape, gt.shape))
    _check_labels("label", gt, num_classes, ignore_index)
    _check_labels("prediction", pred, num_classes, None)
    gt = gt.ravel()
    pred = pred.ravel()
    if ignore_index is not None:
        annotated = gt != ignore_index
        if not annotated.all():
            gt = gt[annotated]
            pred = pred[annotated]
    # gt * C + pred is the flat (row, col) index. Both are checked to lie in [0, C), so it fits
    # the smallest unsigned type holding C*C - 1 (uint8 for 14 classes): several times faster
    # than intp arithmetic on a 512x512 image.
    index_type = np.min_scalar_type(num_classes * num_classes - 1)
    flat = gt.astype(index_type) * index_type.type(num_classes)
    flat += pred.astype(index_type, copy=False)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den == 0 (without numpy's divide warning)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN when there are none (without a RuntimeWarning)."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def class_dice(conf: np.ndarray) -> np.ndarray:
    """Per-class Dice 2*diag / (rowsum + colsum) of a confusion matrix; NaN for absent classes."""
    conf = np.asarray(conf)
    return _ratio(2 * np.diag(conf), conf.sum(axis=0) + conf.sum(axis=1))


def image_dice(conf: np.ndarray) -> float:
    """The challenge's score of one image from its confusion matrix.

    Mean over classes of ``2*diag / (rowsum + colsum)``, skipping classes absent from both
    label and prediction (NaN). A class predicted but absent from the label scores 0. NaN when
    the image has no annotated pixel.
    """
    return _nanmean(class_dice(conf))


def class_iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU diag / (rowsum + colsum - diag); NaN for a class with an empty union."""
    conf = np.asarray(conf)
    diag = np.diag(conf)
    return _ratio(diag, conf.sum(axis=0) + conf.sum(axis=1) - diag)


def _none_if_nan(value: float) -> Optional[float]:
    return None if math.isnan(value) else float(value)


class SegmentationMetrics:
    """Streaming segmentation metrics over a sequence of (prediction, label) images.

    ``update`` adds one image; ``summary`` gives ``{"miou", "dice", "pixel_acc",
    "per_class_iou": {name: IoU or None}, "images", "class_images": {name: images whose labels
    hold the class}}``; the last says how many images a class's IoU rests on. A figure that is
    undefined (nothing annotated yet; a class absent from every label and prediction) is
    ``None`` so that the summary is valid JSON. ``merge`` adds another instance's images (one
    per process/worker).
    """

    def __init__(self, num_classes: int = NUM_CLASSES,
                 ignore_index: Optional[int] = IGNORE_INDEX,
                 class_names: Optional[Sequence[str]] = None) -> None:
        if class_names is None:
            class_names = (CLASS_NAMES if num_classes == len(CLASS_NAMES)
                           else ["class_%d" % i for i in range(num_classes)])
        if len(class_names) != num_classes:
            raise ValueError("%d class names given for %d classes" % (len(class_names), num_classes))
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = tuple(str(n) for n in class_names)
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        # One entry per image, NaN for an image without annotated pixels.
        self.image_dice_scores: List[float] = []
        self.class_images = np.zeros(num_classes, dtype=np.int64)

    def reset(self) -> None:
        self.confusion[...] = 0
        self.image_dice_scores = []
        self.class_images[...] = 0

    @property
    def images(self) -> int:
        return len(self.image_dice_scores)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Add one HxW image; returns its Dice (NaN when nothing in it is annotated).

        Raises ValueError on a shape mismatch or a value that is not a class index
        (``ignore_index`` is allowed in ``gt`` only).
        """
        return self.update_confusion(confusion_matrix(pred, gt, self.num_classes,
                                                      self.ignore_index))

    def update_batch(self, preds: np.ndarray, gts: np.ndarray) -> None:
        """Add N images given as (N, H, W) arrays."""
        preds = np.asarray(preds)
        gts = np.asarray(gts)
        if preds.shape != gts.shape or preds.ndim != 3:
            raise ValueError("expected predictions and labels of the same (N, H, W) shape, got %s "
                             "and %s" % (preds.shape, gts.shape))
        for pred, gt in zip(preds, gts):
            self.update(pred, gt)

    def update_confusion(self, conf: np.ndarray) -> float:
        """Add one image given as its confusion matrix (from ``confusion_matrix``, or computed
        elsewhere, e.g. on a GPU); returns its Dice."""
        conf = np.asarray(conf)
        if conf.shape != self.confusion.shape:
            raise ValueError("confusion matrix of shape %s, expected %s"
                             % (conf.shape, self.confusion.shape))
        if not np.issubdtype(conf.dtype, np.integer) or (conf.size and conf.min() < 0):
            raise ValueError("a confusion matrix holds non-negative integer pixel counts")
        self.confusion += conf.astype(np.int64, copy=False)
        self.class_images += conf.sum(axis=1) > 0  # rows: the label's pixels of each class
        dice = image_dice(conf)
        self.image_dice_scores.append(dice)
        return dice

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Add the images another instance has seen (e.g. another process's share)."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("cannot merge metrics of %d classes (ignore %r) into %d classes "
                             "(ignore %r)" % (other.num_classes, other.ignore_index,
                                              self.num_classes, self.ignore_index))
        self.confusion += other.confusion
        self.class_images += other.class_images
        self.image_dice_scores.extend(other.image_dice_scores)
        return self

    def per_class_iou(self) -> np.ndarray:
        """Dataset-level IoU per class (NaN for classes never labelled nor predicted)."""
        return class_iou(self.confusion)

    def miou(self) -> float:
        """Mean IoU over classes present in some label or prediction; NaN if none."""
        return _nanmean(self.per_class_iou())

    def dice(self) -> float:
        """The challenge's accuracy: mean over images of the per-image Dice; NaN if none."""
        return _nanmean(np.asarray(self.image_dice_scores, dtype=np.float64))

    def pixel_acc(self) -> float:
        """Correct pixels / annotated pixels; NaN if no pixel was annotated."""
        total = int(self.confusion.sum())
        return float(np.trace(self.confusion)) / total if total else math.nan

    def summary(self) -> Dict[str, object]:
        """JSON-ready figures; undefined values are None."""
        iou = self.per_class_iou()
        return {
            "miou": _none_if_nan(self.miou()),
            "dice": _none_if_nan(self.dice()),
            "pixel_acc": _none_if_nan(self.pixel_acc()),
            "per_class_iou": {name: _none_if_nan(float(v)) for name, v in zip(self.class_names, iou)},
            "images": self.images,
            "class_images": {name: int(n) for name, n in zip(self.class_names,
                                                             self.class_images)},
        }
