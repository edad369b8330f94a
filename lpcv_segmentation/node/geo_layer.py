"""Tracked objects as GeoJSON (RFC 7946) for a ground station's map, and the append-only log.

``feature_collection`` gives one Point Feature per confirmed track with a ground position
(longitude, latitude in WGS84, as RFC 7946 orders them). ``LineLog`` appends one JSON object
per line (GeoJSON text sequences, newline-delimited) and flushes and fsyncs each line, so a
killed process or a power cut loses at most the line being written; a partial last line left
by one is closed with a newline when the log is reopened, so every earlier line still parses.
"""
import json
import os
from typing import Dict, Iterable, List, Mapping, Optional

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
    """An append-only file of one JSON object per line, each line flushed and fsynced."""

    def __init__(self, path: str) -> None:
        self.path = os.path.expanduser(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._file = open(self.path, "a+b")
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(-1, os.SEEK_END)
            if self._file.read(1) != b"\n":  # a line cut short by a kill: close it
                self._file.write(b"\n")
                self._sync()
        self.lines = 0

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, obj: Mapping[str, object]) -> None:
        """Append ``obj`` as one line; OSError when the disk refuses it."""
        self._file.write(json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n")
        self._sync()
        self.lines += 1

    def close(self) -> None:
        self._file.close()
