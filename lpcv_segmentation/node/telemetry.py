"""The vehicle's fix, height above ground and heading, paired with a frame by stamp.

Each input keeps its last samples with their times (nanoseconds of the ROS clock): the
header stamp where the message has one (NavSatFix, Range), the arrival time otherwise
(std_msgs/Float64 from MAVROS). ``pose_at`` takes, for one frame stamp, the sample of each
input nearest to it and gives a ``geolocation.Pose`` only when every one lies within the
tolerance; otherwise it gives the reason, never a guessed position. Thread-safe: the
subscription callbacks write, the inference thread reads.
"""
import collections
import math
import threading
from typing import Deque, Dict, NamedTuple, Optional, Tuple, Union

from lpcv_segmentation.node.geolocation import Pose

__all__ = ["HEIGHT_SOURCES", "Telemetry", "PoseOrReason", "stamp_ns"]

HEIGHT_SOURCES = ("rel_alt", "range", "fix_altitude")
HISTORY = 64  # samples kept per input: seconds of GNSS at 10-20 Hz
NO_FIX = -1  # sensor_msgs/NavSatStatus.STATUS_NO_FIX


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time (``sec``, ``nanosec``) as nanoseconds."""
    return int(stamp.sec) * 1000000000 + int(stamp.nanosec)


class PoseOrReason(NamedTuple):
    pose: Optional[Pose]
    reason: Optional[str]  # why there is no pose (None when there is one)


Sample = Tuple[int, object]  # (time ns, value)


class Telemetry:
    """Latest samples of fix, height and heading; ``pose_at`` pairs them with a frame."""

    def __init__(self, height_source: str = "rel_alt", tolerance_s: float = 0.5,
                 ground_elevation_m: float = 0.0, mount_deg: Tuple[float, float, float] = (0, 0, 0),
                 topics: Optional[Dict[str, str]] = None) -> None:
        if height_source not in HEIGHT_SOURCES:
            raise ValueError("height_source must be one of %s" % ", ".join(HEIGHT_SOURCES))
        self.height_source = height_source
        self.tolerance_ns = int(tolerance_s * 1e9)
        self.ground_elevation_m = ground_elevation_m
        self.mount_deg = tuple(float(a) for a in mount_deg)
        self.topics = dict(topics or {})
        self._lock = threading.Lock()
        self._samples: Dict[str, Deque[Sample]] = {
            name: collections.deque(maxlen=HISTORY) for name in ("fix", "height", "heading")}
        self.received = {name: 0 for name in self._samples}

    def _add(self, name: str, time_ns: int, value: object) -> None:
        with self._lock:
            self._samples[name].append((time_ns, value))
            self.received[name] += 1

    def add_fix(self, msg) -> None:
        """A sensor_msgs/NavSatFix (its header stamp is its time)."""
        # NO_FIX is the one status that says the position is not one; newer ROS versions
        # default to STATUS_UNKNOWN (-2), which MAVROS never sends with a position.
        has_position = (int(msg.status.status) != NO_FIX and math.isfinite(msg.latitude)
                        and math.isfinite(msg.longitude) and math.isfinite(msg.altitude))
        self._add("fix", stamp_ns(msg.header.stamp),
                  (float(msg.latitude), float(msg.longitude), float(msg.altitude))
                  if has_position else None)
        if self.height_source == "fix_altitude" and has_position:
            self._add("height", stamp_ns(msg.header.stamp),
                      float(msg.altitude) - self.ground_elevation_m)

    def add_rel_alt(self, value: float, received_ns: int) -> None:
        """Relative altitude in metres (std_msgs/Float64 data), at its arrival time."""
        if self.height_source == "rel_alt":
            self._add("height", received_ns, float(value) if math.isfinite(value) else None)

    def add_range(self, msg) -> None:
        """A sensor_msgs/Range pointing down; out-of-limits readings count as none."""
        if self.height_source != "range":
            return
        value = float(msg.range)
        valid = math.isfinite(value) and msg.min_range <= value <= msg.max_range
        self._add("height", stamp_ns(msg.header.stamp), value if valid else None)

    def add_heading(self, degrees: float, received_ns: int) -> None:
        """Compass heading in degrees from north (std_msgs/Float64 data), at arrival."""
        self._add("heading", received_ns, float(degrees) if math.isfinite(degrees) else None)

    def _nearest(self, name: str, at_ns: int) -> Union[Sample, str]:
        samples = self._samples[name]
        if not samples:
            return "no %s received%s" % (self._what(name), self._on(name))
        time_ns, value = min(samples, key=lambda s: abs(s[0] - at_ns))
        offset_s = (time_ns - at_ns) / 1e9
        if abs(time_ns - at_ns) > self.tolerance_ns:
            return ("%s %.2f s from the frame's stamp (tolerance %.2f s)%s"
                    % (self._what(name), offset_s, self.tolerance_ns / 1e9, self._on(name)))
        if value is None:
            return "%s without a valid value%s" % (self._what(name), self._on(name))
        return time_ns, value

    def _what(self, name: str) -> str:
        if name == "height":
            return {"rel_alt": "relative altitude", "range": "rangefinder height",
                    "fix_altitude": "fix altitude (height source fix_altitude)"
                    }[self.height_source]
        return {"fix": "GNSS fix", "heading": "heading"}[name]

    def _on(self, name: str) -> str:
        topic = self.topics.get(name if name != "height" else self.height_source)
        return " on %s" % topic if topic else ""

    def pose_at(self, frame_ns: int) -> PoseOrReason:
        """The pose for a frame stamped ``frame_ns``, or the reason there is none."""
        if frame_ns == 0:
            return PoseOrReason(None, "the frame has no stamp")
        with self._lock:
            found = {name: self._nearest(name, frame_ns) for name in ("fix", "height", "heading")}
        reasons = [value for value in found.values() if isinstance(value, str)]
        if reasons:
            return PoseOrReason(None, "; ".join(reasons))
        latitude, longitude, altitude = found["fix"][1]
        height = found["height"][1]
        if height <= 0.0:
            return PoseOrReason(None, "height above ground %.2f m is not positive" % height)
        roll, pitch, yaw = self.mount_deg
        return PoseOrReason(Pose(latitude, longitude, altitude, height, found["heading"][1],
                                 roll, pitch, yaw), None)
