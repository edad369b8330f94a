"""What the segmentation node does with a frame, outside any ROS callback.

``LatestFrame`` is the one-slot mailbox between the subscription callback and the inference
worker: a newer frame replaces an unprocessed one (counted as dropped), so the worker always
runs on the newest frame and latency cannot build up when the camera outpaces the model.
``process_frame`` turns an RGB image into the outputs someone listens to.
"""
import threading
import time
from typing import Dict, Generic, NamedTuple, Optional, Sequence, TypeVar

import numpy as np

from lpcv_segmentation.core.detections import detection_report
from lpcv_segmentation.core.imaging import visuals

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


class Wanted(NamedTuple):
    """Which optional outputs to build for a frame (the mask always is)."""
    color: bool = True
    overlay: bool = True
    detections: bool = True
    confidence: bool = False  # the per-pixel confidence, at the model's resolution


class FrameOutputs(NamedTuple):
    labels: np.ndarray  # (H, W) uint8 class index, at the input size
    color: Optional[np.ndarray]  # (h, w, 3) uint8 RGB at most visual_max_side, or None
    overlay: Optional[np.ndarray]  # (h, w, 3) uint8 RGB at most visual_max_side, or None
    detections: Optional[Dict[str, object]]  # the /seg/detections payload, or None
    timings_ms: Dict[str, float]  # preprocess, inference, postprocess, outputs
    confidence: Optional[np.ndarray] = None  # (h, w) float32 at the model's size when wanted


def process_frame(segmenter, rgb: np.ndarray, stamp_sec: int, stamp_nanosec: int,
                  frame_id: str, detection_class_ids: Sequence[int], min_region_area_px: int,
                  wanted: Wanted = Wanted(), overlay_alpha: float = 0.5,
                  visual_max_side: int = 640) -> FrameOutputs:
    """Segment one RGB frame and build the outputs ``wanted``.

    Stage times: ``preprocess``, ``inference`` and ``postprocess`` are Segmenter.segment's
    own; ``outputs`` is what is added here (detections on the label map at the model's
    resolution, colour mask and overlay at most ``visual_max_side`` pixels wide or high).
    The per-pixel confidence is asked for only when the detections need it, and at the
    model's resolution (the regions are found there).
    """
    result = segmenter.segment(rgb, with_confidence=wanted.detections or wanted.confidence,
                               confidence_at_logits=True)
    start = time.perf_counter()
    labels = result.labels
    report = None
    if wanted.detections:
        report = detection_report(labels, stamp_sec, stamp_nanosec, frame_id,
                                  detection_class_ids, min_region_area_px, result.confidence,
                                  max_side=segmenter.input_size)
    color, blended = visuals(rgb, labels, visual_max_side, wanted.color, wanted.overlay,
                             overlay_alpha)
    timings = {name: float(result.timings_ms.get(name, 0.0))
               for name in ("preprocess", "inference", "postprocess")}
    timings["outputs"] = (time.perf_counter() - start) * 1000.0
    return FrameOutputs(labels, color, blended, report, timings,
                        result.confidence if wanted.confidence else None)
