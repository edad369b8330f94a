"""Label map -> per-class disaster detections: the connected regions of each detection class.

Pure functions over numpy arrays; the result is a JSON-ready dict (the /seg/detections
schema, documented in docs/node.md):

    {"stamp": {"sec", "nanosec"}, "frame_id", "width", "height",
     "detections": [{"class_id", "class_name", "bbox": [x, y, w, h], "centroid": [x, y],
                     "area_px", "area_fraction", "mean_confidence"}, ...],
     "coverage": {class_name: fraction of the image, for every class}}
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

from lpcv_segmentation.core.classes import CLASS_NAMES, NUM_CLASSES

# 8-connectivity: a diagonal chain of pixels (a thin crack, a road seen at an angle) is one region.
CONNECTIVITY = 8

MinArea = Union[int, Mapping[int, int]]


def _min_area_for(min_area_px: MinArea, class_id: int) -> int:
    if isinstance(min_area_px, Mapping):
        return int(min_area_px.get(class_id, 1))
    return int(min_area_px)


def find_regions(labels: np.ndarray, class_ids: Sequence[int], min_area_px: MinArea = 1,
                 confidence: Optional[np.ndarray] = None) -> List[Dict[str, object]]:
    """Connected regions of each class in ``class_ids`` whose area is at least ``min_area_px``.

    labels: (H, W) uint8 class indices; confidence: optional (H, W) float per-pixel confidence
    of the predicted class, averaged over each region (``None`` in the output without it).
    min_area_px: one minimum for all classes, or {class_id: minimum}.
    Regions come sorted by class id, then by decreasing area.
    """
    if labels.ndim != 2:
        raise ValueError("labels must be (H, W), got shape %s" % (labels.shape,))
    if confidence is not None and confidence.shape != labels.shape:
        raise ValueError("confidence %s and labels %s differ in shape"
                         % (confidence.shape, labels.shape))
    image_area = float(labels.size)
    pixel_counts = np.bincount(labels.ravel(), minlength=256)
    regions: List[Dict[str, object]] = []
    for class_id in sorted(set(int(c) for c in class_ids)):
        min_area = _min_area_for(min_area_px, class_id)
        if pixel_counts[class_id] < min_area:
            continue
        inside = labels == class_id
        count, components, stats, centroids = cv2.connectedComponentsWithStats(
            inside.view(np.uint8), connectivity=CONNECTIVITY)
        # Filter in numpy first: a noisy map can hold thousands of specks per class.
        kept = np.nonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area)[0] + 1  # 0: the rest
        confidence_sums = None
        if confidence is not None and kept.size:
            # Only this class's pixels: the sums of its regions are added in the same order.
            confidence_sums = np.bincount(components[inside], weights=confidence[inside],
                                          minlength=count)
        found = []
        for component in kept:
            x, y, w, h, area = (int(v) for v in stats[component])
            mean_confidence = None
            if confidence_sums is not None:
                mean_confidence = round(float(confidence_sums[component]) / area, 4)
            found.append({
                "class_id": class_id,
                "class_name": CLASS_NAMES[class_id],
                "bbox": [x, y, w, h],
                "centroid": [round(float(centroids[component][0]), 2),
                             round(float(centroids[component][1]), 2)],
                "area_px": area,
                "area_fraction": round(area / image_area, 6),
                "mean_confidence": mean_confidence,
            })
        found.sort(key=lambda region: -region["area_px"])
        regions.extend(found)
    return regions


def class_coverage(labels: np.ndarray) -> Dict[str, float]:
    """Fraction of the image each class covers, for every class (0.0 when absent)."""
    counts = np.bincount(labels.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    return {name: round(float(n) / labels.size, 6) for name, n in zip(CLASS_NAMES, counts)}


def _work_area(area_px: int, pixel_area: float) -> int:
    """The smallest region on the shrunk map whose area in the image reaches ``area_px``."""
    return max(1, int(math.ceil(area_px / pixel_area - 1e-9)))


def _scale_regions(regions: List[Dict[str, object]], sx: float, sy: float,
                   image_area: float) -> List[Dict[str, object]]:
    """Regions found on a map ``sx`` x ``sy`` times smaller, in the full image's pixels."""
    for region in regions:
        x, y, w, h = region["bbox"]
        x0, y0 = int(round(x * sx)), int(round(y * sy))
        region["bbox"] = [x0, y0, int(round((x + w) * sx)) - x0, int(round((y + h) * sy)) - y0]
        cx, cy = region["centroid"]  # pixel centres: i in the map is (i + 0.5) * s - 0.5
        region["centroid"] = [round((cx + 0.5) * sx - 0.5, 2), round((cy + 0.5) * sy - 0.5, 2)]
        region["area_px"] = int(round(region["area_px"] * sx * sy))
        region["area_fraction"] = round(region["area_px"] / image_area, 6)
    return regions


def detection_report(labels: np.ndarray, stamp_sec: int, stamp_nanosec: int, frame_id: str,
                     class_ids: Sequence[int], min_area_px: MinArea = 1,
                     confidence: Optional[np.ndarray] = None,
                     max_side: Optional[int] = None) -> Dict[str, object]:
    """The whole /seg/detections payload for one frame (labels at the input image's size).

    ``max_side``: find the regions on the label map shrunk (nearest neighbour) to at most
    this many pixels on its longer side, and report them in the image's pixels. The node
    passes the model's input size, the resolution the labels were predicted at, so the cost
    does not grow with the camera's resolution; bounding boxes are then exact to one model
    pixel. Areas below ``min_area_px`` (input-image pixels) are left out either way.
    """
    height, width = labels.shape
    work = labels
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / float(max(height, width))
        size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
        work = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    if confidence is not None and confidence.shape != work.shape:
        # e.g. left at the model's resolution by Segmenter.segment(confidence_at_logits=True)
        confidence = cv2.resize(confidence, (work.shape[1], work.shape[0]),
                                interpolation=cv2.INTER_NEAREST)
    sx, sy = width / float(work.shape[1]), height / float(work.shape[0])
    if isinstance(min_area_px, Mapping):
        work_min_area: MinArea = {k: _work_area(v, sx * sy) for k, v in min_area_px.items()}
    else:
        work_min_area = _work_area(min_area_px, sx * sy)
    regions = find_regions(work, class_ids, work_min_area, confidence)
    if work is not labels:
        regions = _scale_regions(regions, sx, sy, float(height * width))
    return {
        "stamp": {"sec": int(stamp_sec), "nanosec": int(stamp_nanosec)},
        "frame_id": frame_id,
        "width": int(width),
        "height": int(height),
        "detections": regions,
        "coverage": class_coverage(work),
    }
