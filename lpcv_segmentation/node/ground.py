"""What the node adds to a frame's detections for a rescue team, outside any ROS callback.

``GroundSide`` holds the telemetry (fix, height, heading), the tracker, the frame capture and
the GeoJSON-lines log, and for each frame:
1. puts each detection on the ground when a pose pairs with the frame's stamp and the
   camera's intrinsics are known (``ground``: east/north metres from the point below the fix,
   latitude/longitude, footprint in m²), and says in ``geo`` why not otherwise;
2. tracks the detections (``track_id``, ``track_hits``, ``first_seen``; per-class counts in
   ``tracks``);
3. builds the GeoJSON FeatureCollection of the confirmed tracks and appends the ones seen in
   this frame to the log;
4. saves the frame when the model was unsure about it.
Every part is off when its parameter says so, and nothing here raises on a disk error: it is
counted and reported on /diagnostics. ``values`` and ``findings`` feed /diagnostics.
"""
import time
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from lpcv_segmentation.node.capture import CaptureSettings, FrameCapture
from lpcv_segmentation.node.config import GroundConfig
from lpcv_segmentation.node.geo_layer import LineLog, feature_collection
from lpcv_segmentation.node.geolocation import (GeoError, enu_to_geodetic, geodetic_module,
                                                ground_sampling_distance,
                                                intrinsics_from_camera_info, pixel_ground_area,
                                                pixel_to_ground)
from lpcv_segmentation.node.telemetry import Telemetry
from lpcv_segmentation.node.tracking import Tracker

__all__ = ["GroundSide", "GROUND_OFF"]

GROUND_OFF = "geolocation off (fix_topic is empty)"
WARN = 1  # the diagnostic level, as node/stats.py numbers them


def _stamp_ns(stamp: Mapping[str, int]) -> int:
    return int(stamp["sec"]) * 1000000000 + int(stamp["nanosec"])


class GroundSide:
    """Per-frame ground positions, tracks, GeoJSON, log and capture for one node."""

    def __init__(self, config: GroundConfig, camera_info_topic: str = "") -> None:
        self.config = config
        self.camera_info_topic = camera_info_topic
        self.telemetry: Optional[Telemetry] = None
        self.missing_package: Optional[str] = None
        if config.fix_topic:
            try:
                geodetic_module()
            except GeoError as error:  # pixel detections go on; the reason says what is missing
                self.missing_package = str(error)
            topics = {"fix": config.fix_topic, "rel_alt": config.rel_alt_topic,
                      "range": config.range_topic, "heading": config.heading_topic,
                      "fix_altitude": config.fix_topic}
            self.telemetry = Telemetry(config.height_source, config.geo_sync_tolerance_s,
                                       config.ground_elevation_m, config.mount_deg, topics)
        self.tracker = Tracker(config.track_min_frames, config.track_max_missed,
                               config.track_min_iou, config.track_max_distance_m)
        self.capture: Optional[FrameCapture] = None
        if config.capture_dir:
            self.capture = FrameCapture(CaptureSettings(
                config.capture_dir, config.capture_min_mean_confidence,
                config.capture_low_confidence, config.capture_max_low_share,
                config.capture_min_interval_s, config.capture_max_mb, config.capture_when_full))
        self.log: Optional[LineLog] = LineLog(config.geo_log_path) if config.geo_log_path else None
        self.last_geo: Dict[str, object] = {"status": "unavailable",
                                            "reason": "no frame with detections yet"}
        self.geo_frames = {"with_position": 0, "without_position": 0}

    @property
    def wants_detections(self) -> bool:
        """The log needs detections in every frame, whoever subscribes."""
        return self.log is not None

    # -- per frame ----------------------------------------------------------------------------
    def locate(self, report: Dict[str, object], camera_info) -> Dict[str, object]:
        """Put the report's detections on the ground (in place); the report's ``geo``."""
        geo = self._pose_and_intrinsics(report, camera_info)
        if isinstance(geo, str):
            for region in report["detections"]:
                region["ground"] = None
            report["geo"] = {"status": "unavailable", "reason": geo}
            self.geo_frames["without_position"] += 1
            self.last_geo = report["geo"]
            return report["geo"]
        pose, intrinsics = geo
        regions = report["detections"]
        centres = [tuple(region["centroid"]) for region in regions]
        for region, point, centre in zip(regions, pixel_to_ground(centres, intrinsics, pose),
                                         centres):
            if point is None:
                region["ground"] = None  # its centre lies above the horizon
                continue
            latitude, longitude = enu_to_geodetic(point[0], point[1], pose)
            pixel_area = pixel_ground_area(centre[0], centre[1], intrinsics, pose)
            region["ground"] = {
                "east_m": round(point[0], 3), "north_m": round(point[1], 3),
                "latitude": round(latitude, 8), "longitude": round(longitude, 8),
                "footprint_m2": (None if pixel_area is None
                                 else round(pixel_area * float(region["area_px"]), 3))}
        gsd = ground_sampling_distance(intrinsics, pose)
        report["geo"] = {
            "status": "ok", "reason": None,
            "fix": {"latitude": pose.latitude, "longitude": pose.longitude,
                    "altitude": pose.altitude},
            "height_m": round(pose.height_m, 3), "heading_deg": round(pose.heading_deg, 3),
            "mount_deg": {"roll": pose.mount_roll_deg, "pitch": pose.mount_pitch_deg,
                          "yaw": pose.mount_yaw_deg},
            "gsd_m": None if gsd is None else round(gsd, 5),
        }
        self.geo_frames["with_position"] += 1
        self.last_geo = {"status": "ok", "reason": None}
        return report["geo"]

    def _pose_and_intrinsics(self, report, camera_info):
        if self.telemetry is None:
            return GROUND_OFF
        if self.missing_package:
            return self.missing_package
        reasons: List[str] = []
        found = self.telemetry.pose_at(_stamp_ns(report["stamp"]))
        if found.reason:
            reasons.append(found.reason)
        intrinsics = None
        if camera_info is None:
            reasons.append("no camera_info%s" % (" on %s" % self.camera_info_topic
                                                 if self.camera_info_topic else ""))
        else:
            intrinsics = intrinsics_from_camera_info(camera_info, int(report["width"]),
                                                     int(report["height"]))
            if intrinsics is None:
                reasons.append("camera_info uncalibrated (fx or fy is 0)")
        if reasons:
            return "; ".join(reasons)
        return found.pose, intrinsics

    def track(self, report: Dict[str, object]) -> Dict[str, object]:
        """Match the report's detections to tracks (in place); per-class counts."""
        self.tracker.update(report["detections"], report["stamp"])
        report["tracks"] = self.tracker.counts()
        return report["tracks"]

    def geojson(self, report: Mapping[str, object]) -> Dict[str, object]:
        """The FeatureCollection of the live confirmed tracks with a ground position."""
        return feature_collection(self.tracker.confirmed(), report["stamp"],
                                  str(report["frame_id"]), {"geo": report.get("geo")})

    def write_log(self, report: Mapping[str, object]) -> None:
        """Append the confirmed tracks seen in this frame (one Feature per line)."""
        if self.log is None:
            return
        seen = [t for t in self.tracker.confirmed() if t.missed == 0]
        collection = feature_collection(seen, report["stamp"], str(report["frame_id"]))
        for feature in collection["features"]:
            feature["properties"]["stamp"] = dict(report["stamp"])
        self.log.write_many(collection["features"])  # written by the log's own thread

    def consider_capture(self, rgb: np.ndarray, labels: np.ndarray,
                         confidence: Optional[np.ndarray], stamp: Mapping[str, int],
                         frame_id: str, report: Optional[Mapping[str, object]]) -> Optional[str]:
        """Save the frame if the model was unsure about it; what happened, or None."""
        if self.capture is None or confidence is None:
            return None
        extra: Dict[str, object] = {}
        if report is not None:
            extra["geo"] = report.get("geo")
            extra["detections"] = [
                {k: region.get(k) for k in ("class_name", "bbox", "area_px", "mean_confidence",
                                            "ground", "track_id")}
                for region in report["detections"]]
        return self.capture.consider(rgb, labels, confidence, stamp, frame_id, time.monotonic(),
                                     extra)

    # -- diagnostics --------------------------------------------------------------------------
    def values(self) -> List[Tuple[str, str]]:
        """(key, value) pairs for /diagnostics."""
        pairs: List[Tuple[str, str]] = [
            ("geolocation", "ok" if self.last_geo["status"] == "ok"
             else str(self.last_geo["reason"])),
            ("frames_with_ground_positions", str(self.geo_frames["with_position"])),
            ("frames_without_ground_positions", str(self.geo_frames["without_position"]))]
        counts = self.tracker.counts()
        for name, count in sorted(counts["confirmed_now"].items()):
            pairs.append(("tracks_confirmed_now: %s" % name, str(count)))
        for name, count in sorted(counts["confirmed_total"].items()):
            pairs.append(("tracks_confirmed_total: %s" % name, str(count)))
        if self.capture is not None:
            status = self.capture.status()
            for key in ("saved", "unsure", "rate_limited", "full", "deleted", "failed"):
                pairs.append(("capture_%s" % key, str(status[key])))
            pairs.append(("capture_used_mb", "%.1f" % status["used_mb"]))
            pairs.append(("capture_last_error", str(status["last_error"] or "")))
        if self.log is not None:
            pairs.append(("geo_log_lines", str(self.log.lines)))
            pairs.append(("geo_log_error", self.log.error or ""))
        return pairs

    def findings(self) -> List[Tuple[int, str]]:
        """WARN findings: ground positions lost after a fix arrived, capture or log failing."""
        found: List[Tuple[int, str]] = []
        telemetry = self.telemetry
        if (telemetry is not None and telemetry.received["fix"] and self.last_geo["status"] != "ok"
                and self.geo_frames["without_position"]):
            found.append((WARN, "no ground positions: %s" % self.last_geo["reason"]))
        if self.capture is not None and self.capture.failing:
            found.append((WARN, "capture: %s" % self.capture.last_error))
        if self.log is not None and self.log.error:
            found.append((WARN, "geo log %s" % self.log.error))
        return found

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
