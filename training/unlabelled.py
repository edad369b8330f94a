"""Frames without labels, from image folders and rosbag2 flights, for distillation.

A *flight* is one source: an image folder (searched recursively) or a flight bag (the camera
topic, every Nth frame). Frames are listed first (cheap: file names, a bag's frame count), split
into training and held-out frames, then read once, in order, by ``read_frames``. A frame that
cannot be read (an image file that does not decode; a bag frame that is malformed: it does not
deserialise, or its encoding or data length is wrong) is left out with one warning line naming
it, and counted; a wrong or unreadable source stops with one error naming it.

Held-out frames: ``by="file"`` takes ``fraction`` of the frames spread evenly over each list
(neighbouring video frames look alike, so this flatters the score); ``by="flight"`` holds out
whole flights (the honest measure of footage the student has not seen; needs two flights or
more); ``auto`` is ``flight`` when there are several flights, else ``file``.
"""
import os
import re
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from lpcv_segmentation.replay.bagio import CAMERA_TOPIC, BagError, FrameReader, MalformedFrame
from lpcv_segmentation.replay.scoring import spread_indices

__all__ = ["IMAGE_SUFFIXES", "HOLDOUT_BY", "FrameSourceError", "UnlabelledFrame", "folder_frames",
           "bag_frames", "split_held_out", "read_frames", "SKIPPED"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
HOLDOUT_BY = ("auto", "file", "flight")
SKIPPED = "unreadable"  # the key of ``read_frames``'s count of frames left out


class FrameSourceError(ValueError):
    """A folder or bag that gives no usable frames; the message names it."""


class UnlabelledFrame(NamedTuple):
    flight: int               # index of its source among the sources given
    name: str                 # unique, file-system safe name ("f<flight>_<where in the source>")
    path: Optional[str]       # the image file (a folder frame), or the bag (a bag frame)
    bag_index: Optional[int]  # position among the bag's camera frames, or None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "frame"


def folder_frames(folder: str, flight: int) -> List[UnlabelledFrame]:
    """Every image under ``folder`` (recursively, sorted by relative path)."""
    root = Path(folder)
    if not root.is_dir():
        raise FrameSourceError("--images %s: no such folder" % folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FrameSourceError("--images %s: no images in it or below it (looked for %s)"
                               % (folder, " ".join(IMAGE_SUFFIXES)))
    # the suffix stays in the name: a.jpg and a.png are two frames
    return [UnlabelledFrame(flight, "f%d_%s" % (flight, _safe(str(p.relative_to(root)))), str(p),
                            None) for p in files]


def bag_frames(bag: str, flight: int, camera_topic: str = CAMERA_TOPIC,
               every: int = 1) -> List[UnlabelledFrame]:
    """Every ``every``-th camera frame of a flight bag (0, N, 2N, ...)."""
    if every < 1:
        raise FrameSourceError("--every must be >= 1, got %d" % every)
    try:
        count = len(FrameReader(bag, camera_topic, gt_topic=None))
    except BagError as error:
        raise FrameSourceError(str(error))
    if count == 0:
        raise FrameSourceError("%s: no frames on %s" % (bag, camera_topic))
    return [UnlabelledFrame(flight, "f%d_%06d" % (flight, i), str(bag), i)
            for i in range(0, count, every)]


def split_held_out(flights: Sequence[List[UnlabelledFrame]], fraction: float,
                   by: str = "auto") -> Tuple[List[UnlabelledFrame], List[UnlabelledFrame], str]:
    """(training frames, held-out frames, the rule used: "file" or "flight")."""
    if by not in HOLDOUT_BY:
        raise FrameSourceError("--holdout-by must be one of %s, got %r" % (", ".join(HOLDOUT_BY), by))
    if not 0.0 < fraction < 1.0:
        raise FrameSourceError("--holdout must be a fraction between 0 and 1, got %r" % fraction)
    if by == "auto":
        by = "flight" if len(flights) > 1 else "file"
    train: List[UnlabelledFrame] = []
    held: List[UnlabelledFrame] = []
    if by == "flight":
        if len(flights) < 2:
            raise FrameSourceError("--holdout-by flight needs two flights or more (--images DIR or "
                                   "--bag FLIGHT each); got %d" % len(flights))
        count = min(len(flights) - 1, max(1, int(round(fraction * len(flights)))))
        chosen = set(spread_indices(len(flights), count))
        for i, frames in enumerate(flights):
            (held if i in chosen else train).extend(frames)
        return train, held, by
    for frames in flights:
        if len(frames) < 2:
            train.extend(frames)
            continue
        count = min(len(frames) - 1, max(1, int(round(fraction * len(frames)))))
        chosen = set(spread_indices(len(frames), count))
        for i, frame in enumerate(frames):
            (held if i in chosen else train).append(frame)
    if not held:
        raise FrameSourceError("no frame to hold out: every flight has a single frame")
    return train, held, by


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def read_frames(frames: Sequence[UnlabelledFrame], camera_topic: str = CAMERA_TOPIC,
                skipped: Optional[Dict[str, int]] = None, warn: Callable[[str], None] = _stderr
                ) -> Iterator[Tuple[UnlabelledFrame, np.ndarray]]:
    """(frame, RGB uint8 HxWx3) for each of ``frames``, each bag read once in order. A frame
    that cannot be read (an image file that does not decode, a malformed bag frame) is left
    out, counted in ``skipped[SKIPPED]`` and named in one ``warn`` line."""
    def skip(line: str) -> None:
        if skipped is not None:
            skipped[SKIPPED] = skipped.get(SKIPPED, 0) + 1
        warn("warning: %s; skipped" % line)

    by_bag: Dict[str, Dict[int, UnlabelledFrame]] = {}
    for frame in frames:
        if frame.bag_index is None:
            bgr = cv2.imread(frame.path, cv2.IMREAD_COLOR)
            if bgr is None:
                skip("%s: cannot be decoded as an image" % frame.path)
                continue
            yield frame, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        else:
            by_bag.setdefault(os.fspath(frame.path), {})[frame.bag_index] = frame
    for bag, wanted in by_bag.items():
        def malformed(bad: MalformedFrame, wanted: Dict[int, UnlabelledFrame] = wanted) -> None:
            if wanted.pop(bad.index, None) is not None:  # frames not asked for pass unseen
                skip(bad.message)

        try:
            for item in FrameReader(bag, camera_topic, gt_topic=None, on_malformed=malformed):
                if item.index in wanted:
                    yield wanted.pop(item.index), item.rgb
                if not wanted:
                    break
        except BagError as error:
            raise FrameSourceError(str(error))
