"""A deliberately slow, loop-by-loop reading of the metric definitions (LPCV_FACTS.md), kept
independent of lpcv_segmentation.core.metrics so the tests compare two implementations."""
import math
from typing import Dict, List, Optional, Sequence, Tuple

IGNORE = 255


def ref_confusion(pred: Sequence[Sequence[int]], gt: Sequence[Sequence[int]],
                  num_classes: int) -> List[List[int]]:
    conf = [[0] * num_classes for _ in range(num_classes)]
    for pred_row, gt_row in zip(pred, gt):
        for p, g in zip(pred_row, gt_row):
            if int(g) == IGNORE:
                continue
            conf[int(g)][int(p)] += 1
    return conf


def ref_image_dice(pred, gt, num_classes: int) -> Optional[float]:
    """Per class 2TP / (2TP + FP + FN) counted pixel by pixel; classes with no pixel in
    label or prediction are skipped; None when no class counts (no annotated pixel)."""
    scores = []
    for c in range(num_classes):
        tp = fp = fn = 0
        for pred_row, gt_row in zip(pred, gt):
            for p, g in zip(pred_row, gt_row):
                p, g = int(p), int(g)
                if g == IGNORE:
                    continue
                if p == c and g == c:
                    tp += 1
                elif p == c:
                    fp += 1
                elif g == c:
                    fn += 1
        if tp + fp + fn:
            scores.append(2.0 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else None


def ref_summary(pairs, num_classes: int) -> Tuple[Optional[float], Optional[float],
                                                  Optional[float], List[Optional[float]]]:
    """(mIoU, mean Dice over images, pixel accuracy, per-class IoU) over (pred, gt) pairs."""
    total = [[0] * num_classes for _ in range(num_classes)]
    dices = []
    for pred, gt in pairs:
        conf = ref_confusion(pred, gt, num_classes)
        for i in range(num_classes):
            for j in range(num_classes):
                total[i][j] += conf[i][j]
        d = ref_image_dice(pred, gt, num_classes)
        if d is not None:
            dices.append(d)
    ious = []  # type: List[Optional[float]]
    for c in range(num_classes):
        tp = total[c][c]
        fn = sum(total[c]) - tp
        fp = sum(total[r][c] for r in range(num_classes)) - tp
        ious.append(tp / float(tp + fp + fn) if tp + fp + fn else None)
    present = [v for v in ious if v is not None]
    miou = sum(present) / len(present) if present else None
    pixels = sum(sum(row) for row in total)
    acc = sum(total[c][c] for c in range(num_classes)) / float(pixels) if pixels else None
    dice = sum(dices) / len(dices) if dices else None
    return miou, dice, acc, ious


def close(a: Optional[float], b: Optional[float], tol: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return False
    return abs(a - b) <= tol


def summary_matches(summary: Dict[str, object], pairs, num_classes: int,
                    class_names: Sequence[str]) -> List[str]:
    """Differences between a metrics summary and the reference; empty when they agree."""
    miou, dice, acc, ious = ref_summary(pairs, num_classes)
    problems = []
    for key, want in (("miou", miou), ("dice", dice), ("pixel_acc", acc)):
        if not close(summary[key], want):
            problems.append("%s: got %r, reference %r" % (key, summary[key], want))
    per_class = summary["per_class_iou"]
    for name, want in zip(class_names, ious):
        if not close(per_class[name], want):
            problems.append("IoU %s: got %r, reference %r" % (name, per_class[name], want))
    if summary["images"] != len(pairs):
        problems.append("images: got %r, expected %d" % (summary["images"], len(pairs)))
    holding = [sum(1 for _, gt in pairs if any(int(v) == c for row in gt for v in row))
               for c in range(num_classes)]
    if summary["class_images"] != dict(zip(class_names, holding)):
        problems.append("class_images: got %r, reference %r" % (summary["class_images"], holding))
    return problems
