"""Tracking (node/tracking.py) on scripted label maps with moving regions: ids appear on
confirmation, survive a one-frame flicker, stay with their objects when two pass close, and
follow ground positions when the regions have them."""
from typing import Dict, List, Sequence, Tuple

import numpy as np

from lpcv_segmentation.core.classes import class_id
from lpcv_segmentation.core.detections import detection_report
from lpcv_segmentation.node.tracking import Tracker, box_iou

PERSON, VEHICLE = class_id("person"), class_id("vehicle")
Box = Tuple[int, int, int, int, int]  # class, x, y, w, h


def frame(boxes: Sequence[Box], index: int, size=(120, 200)) -> Dict[str, object]:
    labels = np.zeros(size, np.uint8)
    for cls, x, y, w, h in boxes:
        labels[y:y + h, x:x + w] = cls
    return detection_report(labels, 1000 + index, 0, "cam", [PERSON, VEHICLE], 4)


def run(tracker: Tracker, frames: List[Sequence[Box]]) -> List[Dict[Tuple[int, int], object]]:
    """Per frame: (class, region x) -> track id."""
    seen = []
    for index, boxes in enumerate(frames):
        report = frame(boxes, index)
        tracker.update(report["detections"], report["stamp"])
        seen.append({(r["class_id"], r["bbox"][0]): r["track_id"] for r in report["detections"]})
    return seen


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == 50 / 150
    assert box_iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0


def test_ids_on_confirmation_and_a_flicker_creates_no_new_id():
    tracker = Tracker(min_frames=3, max_missed=2)
    frames = [[(PERSON, 10 + 3 * i, 40, 12, 12)] for i in range(8)]
    frames[4] = []  # the person flickers out for one frame
    frames[6] = frames[6] + [(VEHICLE, 150, 80, 20, 14)]  # a one-frame false vehicle
    seen = run(tracker, frames)
    assert [list(s.values()) for s in seen[:3]] == [[None], [None], [1]]
    person_ids = [tid for s in seen for (cls, _), tid in s.items() if cls == PERSON]
    assert person_ids == [None, None, 1, 1, 1, 1, 1]  # frame 4 has no region
    assert seen[6][(VEHICLE, 150)] is None  # tentative, never confirmed
    assert tracker.next_id == 2
    assert tracker.counts() == {"confirmed_now": {"person": 1}, "confirmed_total": {"person": 1}}


def test_hits_first_seen_and_drop_after_max_missed():
    tracker = Tracker(min_frames=2, max_missed=1)
    report = None
    for index in range(3):
        report = frame([(PERSON, 10 + 2 * index, 10, 10, 10)], index)
        tracker.update(report["detections"], report["stamp"])
    region = report["detections"][0]
    assert (region["track_id"], region["track_hits"], region["track_confirmed"]) == (1, 3, True)
    assert region["first_seen"] == {"sec": 1000, "nanosec": 0}
    for index in range(3, 5):  # two empty frames: the track is gone
        empty = frame([], index)
        tracker.update(empty["detections"], empty["stamp"])
    assert tracker.tracks == []
    assert tracker.counts() == {"confirmed_now": {}, "confirmed_total": {"person": 1}}
    again = frame([(PERSON, 16, 10, 10, 10)], 5)
    tracker.update(again["detections"], again["stamp"])
    assert again["detections"][0]["track_id"] is None  # a new object now, tentative


def test_two_people_passing_close_keep_their_ids():
    # Two people walk towards each other, 4 px per frame each, on rows whose boxes overlap
    # by 4 px: as they pass, the two regions touch and become one for two frames (one person
    # is missed), then part again.
    tracker = Tracker(min_frames=2, max_missed=3, min_iou=0.05)
    ids_by_walker = {"right": [], "left": []}
    merged = 0
    for index in range(36):
        report = frame([(PERSON, 10 + 4 * index, 30, 10, 12),
                        (PERSON, 150 - 4 * index, 38, 10, 12)], index)
        tracker.update(report["detections"], report["stamp"])
        merged += len(report["detections"]) == 1
        for region in report["detections"]:
            if region["track_id"] is not None:
                ids_by_walker["right" if region["bbox"][1] == 30 else "left"].append(
                    region["track_id"])
    assert merged == 2
    assert set(ids_by_walker["right"]) == {1} and set(ids_by_walker["left"]) == {2}
    assert len(ids_by_walker["left"]) == 33  # every frame after confirmation but the merged


def test_ground_positions_match_tracks_when_boxes_no_longer_overlap():
    # A fast vehicle jumps 30 px a frame (no box overlap), 3 m a frame on the ground.
    tracker = Tracker(min_frames=2, max_missed=1, max_distance_m=5.0)
    ids = []
    for index in range(5):
        report = frame([(VEHICLE, 10 + 30 * index, 40, 16, 10)], index)
        for region in report["detections"]:
            region["ground"] = {"east_m": 3.0 * index, "north_m": 0.0}
        tracker.update(report["detections"], report["stamp"])
        ids.append(report["detections"][0]["track_id"])
    assert ids == [None, 1, 1, 1, 1]
    without = Tracker(min_frames=2, max_missed=1)
    assert [tid for s in run(without, [[(VEHICLE, 10 + 30 * i, 40, 16, 10)] for i in range(5)])
            for tid in s.values()] == [None, None, None, None, None]
