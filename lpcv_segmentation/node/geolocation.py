"""Pixels to the ground: a camera ray intersected with flat ground below the vehicle.

Frames (all right-handed):
- camera optical frame (REP 103 ``_optical``): x to the image's right, y down the image, z
  along the optical axis; a pixel (u, v) looks along ((u - cx) / fx, (v - cy) / fy, 1);
- body frame FRD: x forward, y right, z down;
- world frame ENU: east, north, up, with its origin on the ground below the GNSS fix.

A nadir camera (the default mount) looks along body down with the image's top towards the
front: camera x = body right, camera y = body backward. The mount's roll, pitch and yaw turn
the camera in the body frame like a vehicle's own angles (Z-Y-X, degrees): pitch > 0 tilts
the camera from nadir towards the front (90: a forward-looking camera), roll > 0 towards the
left, yaw > 0 turns the image clockwise seen from above. The heading turns the body about the
vertical, clockwise from north (0: the front towards north, 90: towards east). The vehicle's
own roll and pitch are taken as zero (a gimbal that keeps the camera level).

Ground positions are ENU metres from the point below the fix and latitude/longitude through
``pymap3d`` (imported only when a position is asked for). A pixel's ground footprint is the
determinant of the pixel-to-ground map at that pixel, so a region's footprint is its pixel
count times that (exact for a nadir camera over flat ground, first order for a tilted one).
"""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Intrinsics", "Pose", "GeoError", "intrinsics_from_camera_info", "camera_to_enu",
           "pixel_to_ground", "pixel_ground_area", "ground_sampling_distance", "enu_to_geodetic",
           "geodetic_module"]

# Camera axes in body FRD for the nadir mount (columns: camera x, y, z).
_NADIR = np.array([[0.0, -1.0, 0.0],
                   [1.0, 0.0, 0.0],
                   [0.0, 0.0, 1.0]])
# A ray must point at least this far below the horizon (its up component, unit ray) to meet
# the ground: rays near the horizon would put a region kilometres away.
MIN_DOWN_COMPONENT = 0.02


class GeoError(RuntimeError):
    """A ground position cannot be computed; the message says why (a missing package)."""


class Intrinsics(NamedTuple):
    """Pinhole intrinsics in pixels of the image the detections refer to."""
    fx: float
    fy: float
    cx: float
    cy: float


class Pose(NamedTuple):
    """Where the camera is: the fix, the height above the ground, heading and mount angles."""
    latitude: float  # degrees
    longitude: float  # degrees
    altitude: float  # metres (the fix's, WGS84 ellipsoid as NavSatFix states)
    height_m: float  # camera above the ground below it
    heading_deg: float  # body front, clockwise from north
    mount_roll_deg: float = 0.0
    mount_pitch_deg: float = 0.0
    mount_yaw_deg: float = 0.0


def intrinsics_from_camera_info(info, width: int, height: int) -> Optional[Intrinsics]:
    """K of a camera_info (duck-typed: ``k``, ``width``, ``height``) scaled to ``width`` x
    ``height``; None for an uncalibrated camera (fx or fy zero)."""
    k = [float(v) for v in info.k]
    if k[0] <= 0.0 or k[4] <= 0.0:
        return None
    sx = width / float(info.width) if info.width else 1.0
    sy = height / float(info.height) if info.height else 1.0
    return Intrinsics(k[0] * sx, k[4] * sy, k[2] * sx, k[5] * sy)


def _rotation_zyx(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll), angles in radians."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx


def camera_to_enu(pose: Pose) -> np.ndarray:
    """(3, 3) rotation taking camera-frame directions to ENU."""
    mount = _rotation_zyx(math.radians(pose.mount_yaw_deg), math.radians(pose.mount_pitch_deg),
                          math.radians(pose.mount_roll_deg))
    psi = math.radians(pose.heading_deg)
    # Body FRD axes in ENU: forward, right, down.
    body_to_enu = np.array([[math.sin(psi), math.cos(psi), 0.0],
                            [math.cos(psi), -math.sin(psi), 0.0],
                            [0.0, 0.0, -1.0]])
    return body_to_enu @ mount @ _NADIR


def pixel_to_ground(pixels: Sequence[Tuple[float, float]], intrinsics: Intrinsics,
                    pose: Pose) -> List[Optional[Tuple[float, float]]]:
    """(east, north) metres on the ground below the fix for each (u, v) pixel, or None for a
    pixel whose ray does not meet the ground (at or above the horizon)."""
    if not len(pixels):
        return []
    uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)  # (N, 2)
    rays = np.stack([(uv[:, 0] - intrinsics.cx) / intrinsics.fx,
                     (uv[:, 1] - intrinsics.cy) / intrinsics.fy,
                     np.ones(len(uv))], axis=1)  # (N, 3) camera frame
    world = rays @ camera_to_enu(pose).T  # (N, 3) ENU directions
    norms = np.linalg.norm(world, axis=1)
    out: List[Optional[Tuple[float, float]]] = []
    for (east, north, up), norm in zip(world, norms):
        if up / norm > -MIN_DOWN_COMPONENT:
            out.append(None)
            continue
        t = pose.height_m / -up
        out.append((float(east * t), float(north * t)))
    return out


def pixel_ground_area(u: float, v: float, intrinsics: Intrinsics, pose: Pose) -> Optional[float]:
    """Square metres of ground one pixel at (u, v) covers (determinant of the pixel-to-ground
    map there, by central differences), or None above the horizon."""
    points = pixel_to_ground([(u - 0.5, v), (u + 0.5, v), (u, v - 0.5), (u, v + 0.5)],
                             intrinsics, pose)
    if any(p is None for p in points):
        return None
    du = np.subtract(points[1], points[0])
    dv = np.subtract(points[3], points[2])
    return float(abs(du[0] * dv[1] - du[1] * dv[0]))


def ground_sampling_distance(intrinsics: Intrinsics, pose: Pose) -> Optional[float]:
    """Metres per pixel at the principal point (the square root of its ground area)."""
    area = pixel_ground_area(intrinsics.cx, intrinsics.cy, intrinsics, pose)
    return None if area is None else math.sqrt(area)


def geodetic_module():
    """``pymap3d``, or GeoError naming the package (needed only for latitude/longitude)."""
    try:
        import pymap3d
    except ImportError:
        raise GeoError("ground positions need the Python package pymap3d, which is not "
                       "installed (pip install pymap3d)") from None
    return pymap3d


def enu_to_geodetic(east: float, north: float, pose: Pose) -> Tuple[float, float]:
    """(latitude, longitude) in degrees of a point ``east``/``north`` metres from the point on
    the ground below the fix (WGS84)."""
    pymap3d = geodetic_module()
    ground_altitude = pose.altitude - pose.height_m
    lat, lon, _ = pymap3d.enu2geodetic(east, north, 0.0, pose.latitude, pose.longitude,
                                       ground_altitude)
    return float(lat), float(lon)
