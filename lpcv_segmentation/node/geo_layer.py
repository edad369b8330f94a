"""Tracked objects as GeoJSON (RFC 7946) for a ground station's map, and the append-only log.

``feature_collection`` gives one Point Feature per confirmed track with a ground position
(longitude, latitude in WGS84, as RFC 7946 orders them). ``LineLog`` appends one JSON object
per line (GeoJSON text sequences, newline-delimited) from a thread of its own, so that the
inference thread never waits for the disk (an fsync costs milliseconds on an SD card): each
frame's lines go out in one write, then flush and fsync. A killed process loses at most the
lines not yet written (a frame's, as the writer keeps up) and leaves at most one partial line,
which is closed with a newline when the log is reopened, so every earlier line still parses.
"""
import json
import os
import queue
import threading
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = ["track_feature", "feature_collection", "LineLog"]

COORDINATE_DIGITS = 7  # 1e-7 degrees: about a centimetre


def _seconds(stamp: Mapping[str, int]) -> float:
    return int(stamp["sec"]) + int(stamp["nanosec"]) / 1e9


def track_feature(track) -> Optional[Dict[str, object]]:
    """A ``tracking.Track`` as a Point Feature, or None when its last region had no ground
    position."""
    region = track.region
    ground = region.get("ground")
    if not ground:
        return None
    properties = {
        "track_id": track.track_id,
        "class_id": int(region["class_id"]),
        "class_name": str(region["class_name"]),
        "first_seen": dict(track.first_seen),
        "last_seen": dict(track.last_seen),
        "seen_s": round(_seconds(track.last_seen) - _seconds(track.first_seen), 3),
        "hits": track.hits,
        "missed": track.missed,
        "east_m": ground["east_m"],
        "north_m": ground["north_m"],
        "footprint_m2": ground.get("footprint_m2"),
        "mean_confidence": region.get("mean_confidence"),
    }
    return {"type": "Feature", "id": track.track_id,
            "geometry": {"type": "Point",
                         "coordinates": [round(float(ground["longitude"]), COORDINATE_DIGITS),
                                         round(float(ground["latitude"]), COORDINATE_DIGITS)]},
            "properties": properties}


def feature_collection(tracks: Iterable, stamp: Mapping[str, int], frame_id: str,
                       extra: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
    """The FeatureCollection of the confirmed ``tracks`` that have a ground position."""
    features: List[Dict[str, object]] = []
    for track in tracks:
        feature = track_feature(track)
        if feature is not None:
            features.append(feature)
    collection = {"type": "FeatureCollection", "features": features,
                  "properties": dict(extra or {}, stamp=dict(stamp), frame_id=frame_id)}
    return collection


class LineLog:
    """An append-only file of one JSON object per line, written and fsynced by its thread."""

    def __init__(self, path: str) -> None:
        self.path = os.path.expanduser(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        # Unbuffered: what a failed write refused is not held back to fail again at close.
        self._file = open(self.path, "a+b", buffering=0)
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(-1, os.SEEK_END)
            if self._file.read(1) != b"\n":  # a line cut short by a kill: close it
                self._file.write(b"\n")
                self._sync()
        self.lines = 0  # written and fsynced
        self.error: Optional[str] = None  # the last write's error, None once one succeeds
        self._queue: "queue.Queue[Optional[List[bytes]]]" = queue.Queue()
        self._writer = threading.Thread(target=self._write_batches, name="geo-log", daemon=True)
        self._writer.start()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, obj: Mapping[str, object]) -> None:
        """Append ``obj`` as one line (queued)."""
        self.write_many([obj])

    def write_many(self, objs: Sequence[Mapping[str, object]]) -> None:
        """Append each of ``objs`` as a line, in one write (queued)."""
        if objs:
            self._queue.put([json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n"
                             for obj in objs])

    def _write_batches(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                data = memoryview(b"".join(batch))
                while data:
                    data = data[self._file.write(data):]
                self._sync()
                self.lines += len(batch)
                self.error = None
            except (OSError, ValueError) as error:  # disk full, or closed under us
                self.error = "%s: %s" % (self.path, error)
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Until every queued line is written."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued, then close the file."""
        self._queue.put(None)
        self._writer.join(timeout=10.0)
        try:
            self._file.close()
        except OSError:
            pass
