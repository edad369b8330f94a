"""What the segmentation node does with a frame, outside any ROS callback.

``LatestFrame`` is the one-slot mailbox between the subscription callback and the inference
worker: a newer frame replaces an unprocessed one (counted as dropped), so the worker always
runs on the newest frame and latency cannot build up when the camera outpaces the model.
``process_frame`` turns an RGB image into every output the node publishes.
"""
import threading
import time
from typing import Dict, Generic, NamedTuple, Optional, Sequence, TypeVar

import numpy as np

from .detections import detection_report
from .imaging import colorize, overlay

T = TypeVar("T")


class LatestFrame(Generic[T]):
    """Holds at most one item; ``put`` replaces, ``take`` waits for one and empties the slot."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Optional[T] = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced one that was never taken (a dropped frame)."""
        with self._condition:
            replaced = self._item is not None
            self._item = item
            self._condition.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[T]:
        """The newest item, waiting up to ``timeout`` s; None on timeout or once closed."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake a waiting ``take`` for good (shutdown)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class FrameOutputs(NamedTuple):
    labels: np.ndarray  # (H, W) uint8 class index, at the input size
    color: Optional[np.ndarray]  # (H, W, 3) uint8 RGB, or None when not wanted
    overlay: Optional[np.ndarray]  # (H, W, 3) uint8 RGB, or None when not wanted
    detections: Dict[str, object]  # the /seg/detections payload
    timings_ms: Dict[str, float]  # preprocess, inference, postprocess


def process_frame(segmenter, rgb: np.ndarray, stamp_sec: int, stamp_nanosec: int,
                  frame_id: str, detection_class_ids: Sequence[int], min_region_area_px: int,
                  with_color: bool = True, with_overlay: bool = True,
                  overlay_alpha: float = 0.5) -> FrameOutputs:
    """Segment one RGB frame and build every output.

    ``postprocess`` covers the segmenter's own post-processing plus the regions, colour mask
    and overlay computed here, so the stage times add up to the work done per frame.
    """
    result = segmenter.segment(rgb, with_confidence=True)
    start = time.perf_counter()
    labels = result.labels
    report = detection_report(labels, stamp_sec, stamp_nanosec, frame_id, detection_class_ids,
                              min_region_area_px, result.confidence)
    color = colorize(labels) if with_color else None
    blended = overlay(rgb, labels, overlay_alpha) if with_overlay else None
    timings = {name: float(result.timings_ms.get(name, 0.0))
               for name in ("preprocess", "inference", "postprocess")}
    timings["postprocess"] += (time.perf_counter() - start) * 1000.0
    return FrameOutputs(labels, color, blended, report, timings)
