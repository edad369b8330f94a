"""The same object across frames: per-class tracks of detected regions with stable ids.

Each frame's regions (``detections.detection_report``) are matched to the live tracks of
their class, greedily by the best score first:
- when both the track and the region have a ground position: by ground distance (at most
  ``max_distance_m``, score = the distance), from the track's position moved on by its last
  velocity;
- otherwise by the overlap (IoU) of bounding boxes, the track's box moved on by its last
  velocity in pixels (at least ``min_iou``).
A region nobody claims starts a tentative track. A track is confirmed after ``min_frames``
matched frames and gets its id then (ids count up from 1 over the node's life, across
classes), so a one-frame flicker never takes an id; a track missed in more than
``max_missed`` frames in a row is dropped. Each region gets ``track_id`` (None while
tentative), ``track_hits``, ``first_seen`` (the stamp of the track's first frame) and
``track_confirmed``. Pure Python and numpy; no ROS.
"""
from typing import Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

__all__ = ["Track", "Tracker", "box_iou"]

Box = Tuple[float, float, float, float]  # x, y, w, h in pixels


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    w = min(ax0 + aw, bx0 + bw) - max(ax0, bx0)
    h = min(ay0 + ah, by0 + bh) - max(ay0, by0)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / float(aw * ah + bw * bh - inter)


class Track:
    """One object of one class: where it was last, how it moves, how often it was seen."""

    def __init__(self, class_id: int, region: Mapping[str, object], stamp: Mapping[str, int]
                 ) -> None:
        self.class_id = class_id
        self.track_id: Optional[int] = None
        self.hits = 1
        self.missed = 0
        self.first_seen = dict(stamp)
        self.last_seen = dict(stamp)
        self.box: Box = tuple(float(v) for v in region["bbox"])
        self.velocity_px = (0.0, 0.0)
        self.ground = _ground_xy(region)
        self.velocity_m = (0.0, 0.0)
        self.region: Mapping[str, object] = region  # the last region matched

    @property
    def confirmed(self) -> bool:
        return self.track_id is not None

    def predicted_box(self) -> Box:
        steps = self.missed + 1
        x, y, w, h = self.box
        return (x + self.velocity_px[0] * steps, y + self.velocity_px[1] * steps, w, h)

    def predicted_ground(self) -> Optional[Tuple[float, float]]:
        if self.ground is None:
            return None
        steps = self.missed + 1
        return (self.ground[0] + self.velocity_m[0] * steps,
                self.ground[1] + self.velocity_m[1] * steps)

    def update(self, region: Mapping[str, object], stamp: Mapping[str, int]) -> None:
        steps = self.missed + 1
        box = tuple(float(v) for v in region["bbox"])
        self.velocity_px = ((box[0] - self.box[0]) / steps, (box[1] - self.box[1]) / steps)
        self.box = box
        ground = _ground_xy(region)
        if ground is not None and self.ground is not None:
            self.velocity_m = ((ground[0] - self.ground[0]) / steps,
                               (ground[1] - self.ground[1]) / steps)
        else:
            self.velocity_m = (0.0, 0.0)
        if ground is not None:
            self.ground = ground
        self.hits += 1
        self.missed = 0
        self.last_seen = dict(stamp)
        self.region = region


def _ground_xy(region: Mapping[str, object]) -> Optional[Tuple[float, float]]:
    ground = region.get("ground")
    if not ground:
        return None
    return (float(ground["east_m"]), float(ground["north_m"]))


class Tracker:
    """Per-class tracks over a stream of detection reports."""

    def __init__(self, min_frames: int = 3, max_missed: int = 5, min_iou: float = 0.1,
                 max_distance_m: float = 5.0) -> None:
        self.min_frames = int(min_frames)
        self.max_missed = int(max_missed)
        self.min_iou = float(min_iou)
        self.max_distance_m = float(max_distance_m)
        self.tracks: List[Track] = []
        self.next_id = 1
        self.confirmed_ever: Dict[str, int] = {}

    def _score(self, track: Track, region: Mapping[str, object]) -> Optional[float]:
        """Lower is better; None: the region cannot be this track."""
        ground, predicted = _ground_xy(region), track.predicted_ground()
        if ground is not None and predicted is not None:
            distance = ((ground[0] - predicted[0]) ** 2 + (ground[1] - predicted[1]) ** 2) ** 0.5
            return distance if distance <= self.max_distance_m else None
        iou = box_iou(track.predicted_box(), region["bbox"])
        # 1 - IoU ranks overlaps below any ground distance of the same frame: fine, as a
        # frame has positions for all of its regions or for none.
        return 1.0 - iou if iou >= self.min_iou and iou > 0.0 else None

    def update(self, regions: Sequence[MutableMapping[str, object]],
               stamp: Mapping[str, int]) -> None:
        """Match one frame's regions (annotated in place) and age the tracks."""
        matched_tracks, matched_regions = set(), set()
        pairs: List[Tuple[float, int, int]] = []
        for t, track in enumerate(self.tracks):
            for r, region in enumerate(regions):
                if int(region["class_id"]) != track.class_id:
                    continue
                score = self._score(track, region)
                if score is not None:
                    pairs.append((score, t, r))
        for score, t, r in sorted(pairs):
            if t in matched_tracks or r in matched_regions:
                continue
            matched_tracks.add(t)
            matched_regions.add(r)
            self.tracks[t].update(regions[r], stamp)
        kept: List[Track] = []
        for t, track in enumerate(self.tracks):
            if t not in matched_tracks:
                track.missed += 1
                if track.missed > self.max_missed:
                    continue
            kept.append(track)
        for r, region in enumerate(regions):
            if r not in matched_regions:
                track = Track(int(region["class_id"]), region, stamp)
                kept.append(track)
        self.tracks = kept
        for track in self.tracks:
            if track.track_id is None and track.hits >= self.min_frames:
                track.track_id = self.next_id
                self.next_id += 1
                name = str(track.region["class_name"])
                self.confirmed_ever[name] = self.confirmed_ever.get(name, 0) + 1
            if track.missed == 0:  # matched or started in this frame: annotate its region
                region = track.region
                region["track_id"] = track.track_id
                region["track_hits"] = track.hits
                region["track_confirmed"] = track.confirmed
                region["first_seen"] = dict(track.first_seen)

    def confirmed(self) -> List[Track]:
        """The live confirmed tracks (seen in this frame or missed at most max_missed)."""
        return [track for track in self.tracks if track.confirmed]

    def counts(self) -> Dict[str, Dict[str, int]]:
        """Per class name: confirmed tracks alive now and confirmed since start-up."""
        alive: Dict[str, int] = {}
        for track in self.confirmed():
            name = str(track.region["class_name"])
            alive[name] = alive.get(name, 0) + 1
        return {"confirmed_now": alive, "confirmed_total": dict(self.confirmed_ever)}
