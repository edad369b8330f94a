"""Frames to label next: the frames the model was unsure about, saved as a dataset.

A frame is unsure when its mean confidence (the per-pixel probability of the predicted
class) is below ``min_mean_confidence`` or when the share of its pixels below
``low_confidence`` exceeds ``max_low_share``. At most one frame is saved every
``min_interval_s`` seconds, in the layout ``python -m training train`` reads directly and
``python -m training import-dataset`` converts (``--mapping training/mappings/lpcv.yaml``):

    DIR/IMG/train/<name>.png    the camera frame (RGB, as received)
    DIR/GT/train/<name>.png     the predicted mask as a pre-label (class index per pixel)
    DIR/meta/<name>.json        stamp, frame_id, confidence figures, position when known

``<name>`` is ``capture_<sec>_<nanosec>`` of the frame's stamp. Each file is written
atomically (``core.fileio``), the label before the image and the sidecar last, so the folder
never holds an image without its label. ``max_mb`` caps the files here: ``delete_oldest``
makes room by removing the oldest captures, ``stop`` saves nothing more once the next frame
would not fit. A write that fails (disk full, read-only) is counted with its error and the
caller goes on: capturing never stops the node.
"""
import json
import os
import threading
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from lpcv_segmentation.core.fileio import write_bytes_atomic

__all__ = ["WHEN_FULL", "CaptureSettings", "FrameCapture", "confidence_figures", "is_unsure"]

WHEN_FULL = ("delete_oldest", "stop")
SPLIT = "train"
PREFIX = "capture_"


class CaptureSettings(NamedTuple):
    directory: str
    min_mean_confidence: float = 0.6
    low_confidence: float = 0.5
    max_low_share: float = 0.2
    min_interval_s: float = 5.0
    max_mb: float = 1024.0
    when_full: str = "delete_oldest"


def confidence_figures(confidence: np.ndarray, low_confidence: float) -> Dict[str, float]:
    """Mean confidence and share of pixels below ``low_confidence`` of a (H, W) map."""
    return {"mean_confidence": round(float(confidence.mean()), 4),
            "low_confidence_share": round(float((confidence < low_confidence).mean()), 4)}


def is_unsure(figures: Mapping[str, float], settings: CaptureSettings) -> bool:
    return (figures["mean_confidence"] < settings.min_mean_confidence
            or figures["low_confidence_share"] > settings.max_low_share)


class FrameCapture:
    """Saves unsure frames under ``settings.directory``; ``consider`` once per frame."""

    def __init__(self, settings: CaptureSettings) -> None:
        if settings.when_full not in WHEN_FULL:
            raise ValueError("when_full must be one of %s" % ", ".join(WHEN_FULL))
        self.settings = settings
        self.root = Path(os.path.expanduser(settings.directory))
        self._lock = threading.Lock()
        self._last_saved: Optional[float] = None
        self.counts = {"saved": 0, "unsure": 0, "rate_limited": 0, "full": 0, "deleted": 0,
                       "failed": 0}
        self.last_error: Optional[str] = None
        self.last_error_at: Optional[float] = None
        self.failing = False  # the last attempt to save failed or found the cap reached
        self._index: List[Tuple[str, int]] = self._scan()  # (name, bytes), oldest first

    @property
    def cap_bytes(self) -> int:
        return int(self.settings.max_mb * 1024 * 1024)

    def _paths(self, name: str) -> Tuple[Path, Path, Path]:
        return (self.root / "GT" / SPLIT / (name + ".png"),
                self.root / "IMG" / SPLIT / (name + ".png"),
                self.root / "meta" / (name + ".json"))

    def _scan(self) -> List[Tuple[str, int]]:
        """Captures already on disk (a restart continues the same folder and cap)."""
        meta = self.root / "meta"
        if not meta.is_dir():
            return []
        found = []
        for path in sorted(meta.glob(PREFIX + "*.json")):
            name = path.stem
            size = 0
            for part in self._paths(name):
                try:
                    size += part.stat().st_size
                except OSError:
                    pass
            found.append((name, size))
        return found

    def used_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._index)

    def consider(self, rgb: np.ndarray, labels: np.ndarray, confidence: np.ndarray,
                 stamp: Mapping[str, int], frame_id: str, now: float,
                 extra: Optional[Mapping[str, object]] = None) -> str:
        """Save this frame if it is unsure, due and fits; what happened: ``sure``,
        ``rate_limited``, ``full``, ``failed`` or ``saved``. ``now``: seconds of a monotonic
        clock; ``extra``: more for the sidecar (position, detections summary)."""
        settings = self.settings
        figures = confidence_figures(confidence, settings.low_confidence)
        if not is_unsure(figures, settings):
            return "sure"
        with self._lock:
            self.counts["unsure"] += 1
            if self._last_saved is not None and now - self._last_saved < settings.min_interval_s:
                self.counts["rate_limited"] += 1
                return "rate_limited"
            self._last_saved = now  # failed or full attempts wait for the interval too
            return self._save(rgb, labels, figures, stamp, frame_id, now, extra or {})

    def _save(self, rgb, labels, figures, stamp, frame_id, now, extra) -> str:
        name = "%s%010d_%09d" % (PREFIX, int(stamp["sec"]), int(stamp["nanosec"]))
        ok_label, label_png = cv2.imencode(".png", np.ascontiguousarray(labels))
        ok_image, image_png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not (ok_label and ok_image):
            return self._failed("cannot encode frame %s as PNG" % name, now)
        sidecar = dict(extra, stamp={"sec": int(stamp["sec"]), "nanosec": int(stamp["nanosec"])},
                       frame_id=frame_id, width=int(labels.shape[1]), height=int(labels.shape[0]),
                       label_source="prediction", **figures)
        meta = (json.dumps(sidecar, indent=2, default=str) + "\n").encode("utf-8")
        blobs = [label_png.tobytes(), image_png.tobytes(), meta]
        size = sum(len(b) for b in blobs)
        if not self._make_room(size):
            self.counts["full"] += 1
            self.last_error = ("capture folder %s is at its cap of %.1f MB: no more frames "
                               "saved" % (self.root, self.settings.max_mb))
            self.last_error_at = now
            self.failing = True
            return "full"
        written: List[Path] = []
        try:
            for path, blob in zip(self._paths(name), blobs):
                write_bytes_atomic(path, blob)
                written.append(path)
        except OSError as error:
            for path in written:  # no image without its label
                try:
                    path.unlink()
                except OSError:
                    pass
            return self._failed("cannot save frame %s in %s: %s" % (name, self.root, error), now)
        self._index = [entry for entry in self._index if entry[0] != name] + [(name, size)]
        self.counts["saved"] += 1
        self.failing = False
        return "saved"

    def _failed(self, message: str, now: float) -> str:
        self.counts["failed"] += 1
        self.last_error, self.last_error_at = message, now
        self.failing = True
        return "failed"

    def _make_room(self, size: int) -> bool:
        """True when ``size`` more bytes fit under the cap, deleting the oldest captures
        first when so configured."""
        cap = self.cap_bytes
        used = sum(s for _, s in self._index)
        if size > cap:
            return False
        if self.settings.when_full == "stop":
            return used + size <= cap
        while self._index and used + size > cap:
            name, old = self._index.pop(0)
            for path in self._paths(name):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    break
            used -= old
            self.counts["deleted"] += 1
        return used + size <= cap

    def status(self) -> Dict[str, object]:
        """Counters, bytes used and the last error, for the JSON and /diagnostics."""
        with self._lock:
            return dict(self.counts, used_mb=round(sum(s for _, s in self._index) / 1048576.0, 3),
                        directory=str(self.root), last_error=self.last_error,
                        last_error_at=self.last_error_at)
