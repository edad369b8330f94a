"""Write a deterministic synthetic disaster-scene dataset in the LPCV 2023 layout.

Scenes are drawn from above, as a UAV sees them: ground textures, roads, undamaged and
damaged buildings, cracks, debris and mud flows, fire with glow and smoke, flood water,
ice jams, lava, pyroclastic flows, avalanches, and a few tiny people and vehicles. Each
scene has a type (flood, fire, volcano, earthquake, snow, landslide) so that classes
co-occur as they would in a real disaster, and random lighting, blur, noise and JPEG
compression, with colours that overlap between classes so that colour alone does not
separate them. Rare classes (person, vehicle, fire) stay small and rare.

The output is a stand-in for the real data for tests and the demo; it is not real
imagery and figures measured on it say nothing about the real task.

Layout written (the same one the organisers used, so training.data reads it):
  OUT/IMG/train/train_0000.png  OUT/GT/train/train_0000.png  (label: mono PNG, class index)
  OUT/IMG/val/val_0000.png      OUT/GT/val/val_0000.png
  OUT/synthetic.json            (generator, seed, count, size)
"""
import argparse
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from lpcv_segmentation.core.classes import CLASS_NAMES, NUM_CLASSES, palette

# Class indices, named here for readability; the table itself lives in lpcv_segmentation.core.classes.
BACKGROUND, AVALANCHE, BUILDING, BUILDING_DAMAGED, CRACK, DEBRIS, FIRE, WATER, ICE_JAM, \
    LAVA, PERSON, PYROCLASTIC, ROAD, VEHICLE = range(NUM_CLASSES)

MARKER_FILE = "synthetic.json"
SPLITS = ("train", "val")

Point = Tuple[float, float]
Color = Tuple[float, float, float]


class SynthError(ValueError):
    """Bad arguments or an output folder that must not be overwritten."""


# --------------------------------------------------------------------------------------
# Materials: how the colour of a surface varies. Each is a row of texture amplitudes over
# the shared noise fields (fine = per pixel, medium, coarse, streak = along the scene's flow
# direction, ripple = water waves). Classes share materials on purpose (rubble vs debris,
# snow ground vs avalanche) so texture alone does not give the class away either.
# --------------------------------------------------------------------------------------
MATERIALS: Dict[str, Tuple[float, float, float, float, float]] = {
    #             fine  medium coarse streak ripple
    "grass":     (0.07, 0.12, 0.14, 0.00, 0.00),
    "soil":      (0.09, 0.10, 0.12, 0.00, 0.00),
    "field":     (0.04, 0.05, 0.06, 0.10, 0.00),
    "ash":       (0.08, 0.14, 0.18, 0.04, 0.00),
    "snow":      (0.02, 0.05, 0.07, 0.03, 0.00),
    "asphalt":   (0.05, 0.05, 0.04, 0.00, 0.00),
    "dirt_road": (0.09, 0.07, 0.05, 0.00, 0.00),
    "roof":      (0.03, 0.03, 0.01, 0.00, 0.00),
    "rubble":    (0.26, 0.20, 0.05, 0.00, 0.00),
    "crack":     (0.10, 0.05, 0.00, 0.00, 0.00),
    "mud":       (0.10, 0.18, 0.10, 0.16, 0.00),
    "fire":      (0.12, 0.22, 0.00, 0.00, 0.00),
    "water":     (0.02, 0.05, 0.08, 0.00, 0.09),
    "ice":       (0.12, 0.14, 0.05, 0.05, 0.00),
    "lava":      (0.12, 0.25, 0.10, 0.08, 0.00),
    "pyro":      (0.04, 0.28, 0.20, 0.05, 0.00),
    "avalanche": (0.03, 0.06, 0.05, 0.14, 0.00),
    "small":     (0.04, 0.00, 0.00, 0.00, 0.00),
    "tree":      (0.12, 0.12, 0.05, 0.00, 0.00),
    "burnt":     (0.16, 0.20, 0.08, 0.00, 0.00),
}
MATERIAL_IDS: Dict[str, int] = {name: i for i, name in enumerate(MATERIALS)}
_MATERIAL_AMPS = np.array(list(MATERIALS.values()), dtype=np.float32)  # (M, 5)

# Colour families (RGB in 0..1) that several classes draw from: the overlaps are deliberate.
GREYS: Sequence[Color] = ((0.42, 0.42, 0.42), (0.55, 0.54, 0.52), (0.33, 0.33, 0.35),
                          (0.62, 0.60, 0.57))
BROWNS: Sequence[Color] = ((0.45, 0.36, 0.26), (0.38, 0.30, 0.22), (0.52, 0.44, 0.33),
                           (0.34, 0.29, 0.25))
WHITES: Sequence[Color] = ((0.90, 0.92, 0.95), (0.82, 0.85, 0.88), (0.95, 0.95, 0.93),
                           (0.78, 0.82, 0.86))
ROOFS: Sequence[Color] = ((0.62, 0.30, 0.22), (0.45, 0.45, 0.48), (0.70, 0.66, 0.60),
                          (0.30, 0.32, 0.38), (0.55, 0.40, 0.30), (0.80, 0.80, 0.78),
                          (0.28, 0.40, 0.52))
WATERS: Sequence[Color] = ((0.24, 0.33, 0.40), (0.30, 0.38, 0.42), (0.44, 0.38, 0.28),
                           (0.18, 0.26, 0.30), (0.36, 0.40, 0.40))
GROUNDS: Dict[str, Sequence[Color]] = {
    "green": ((0.30, 0.42, 0.22), (0.38, 0.46, 0.26), (0.46, 0.48, 0.30), (0.50, 0.44, 0.30)),
    "dry": ((0.58, 0.52, 0.38), (0.50, 0.45, 0.32), (0.62, 0.56, 0.42), (0.45, 0.40, 0.30)),
    "ash": ((0.24, 0.23, 0.22), (0.32, 0.30, 0.28), (0.40, 0.38, 0.36), (0.20, 0.19, 0.19)),
    "snow": ((0.86, 0.88, 0.90), (0.78, 0.80, 0.83), (0.70, 0.72, 0.74), (0.55, 0.58, 0.55)),
}
CLOTHES: Sequence[Color] = ((0.85, 0.20, 0.15), (0.15, 0.25, 0.60), (0.90, 0.75, 0.10),
                            (0.20, 0.20, 0.20), (0.90, 0.90, 0.90), (0.95, 0.45, 0.05),
                            (0.30, 0.50, 0.25))
CARS: Sequence[Color] = ((0.85, 0.85, 0.85), (0.15, 0.15, 0.17), (0.60, 0.10, 0.10),
                         (0.35, 0.38, 0.45), (0.75, 0.72, 0.60), (0.10, 0.25, 0.50),
                         (0.90, 0.60, 0.10))


def _pick(rng: np.random.Generator, colors: Sequence[Color], spread: float = 0.06) -> Color:
    """One colour of a family, varied a little per instance."""
    base = np.asarray(colors[int(rng.integers(len(colors)))], dtype=np.float64)
    value = base * rng.uniform(1.0 - spread * 2, 1.0 + spread * 2) + rng.normal(0, spread / 2, 3)
    return tuple(float(v) for v in np.clip(value, 0.0, 1.0))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Geometry in unit coordinates (0..1 across the image), so that one seed lays out the same
# scene at any output size.
# --------------------------------------------------------------------------------------
def _bezier(ctrl: np.ndarray, n: int = 64) -> np.ndarray:
    """Points on a cubic Bezier curve through 4 control points, (n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = ctrl
    return ((1 - t) ** 3) * p0 + 3 * ((1 - t) ** 2) * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def _edge_point(rng: np.random.Generator, side: int, margin: float = 0.08) -> np.ndarray:
    """A point just outside one side of the image (0 top, 1 right, 2 bottom, 3 left)."""
    u = rng.uniform(0.05, 0.95)
    return np.array([(u, -margin), (1 + margin, u), (u, 1 + margin), (-margin, u)][side])


def _crossing_curve(rng: np.random.Generator, n: int = 64,
                    from_side: Optional[int] = None) -> np.ndarray:
    """A curve entering on one side of the image and leaving on another."""
    a = int(rng.integers(4)) if from_side is None else from_side
    b = (a + int(rng.integers(1, 4))) % 4
    p0, p3 = _edge_point(rng, a), _edge_point(rng, b)
    p1 = p0 + (rng.uniform(0.2, 0.8, 2) - p0) * rng.uniform(0.3, 0.9)
    p2 = p3 + (rng.uniform(0.2, 0.8, 2) - p3) * rng.uniform(0.3, 0.9)
    return _bezier(np.stack([p0, p1, p2, p3]), n)


def _tangents(points: np.ndarray) -> np.ndarray:
    d = np.gradient(points, axis=0)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)


def _ribbon(points: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Polygon of a band of varying width around a centre line."""
    t = _tangents(points)
    normal = np.stack([-t[:, 1], t[:, 0]], axis=1)
    half = (np.asarray(widths, dtype=np.float64) / 2.0)[:, None]
    return np.concatenate([points + normal * half, (points - normal * half)[::-1]])


def _wavy_widths(rng: np.random.Generator, n: int, width: float, wobble: float,
                 taper: Tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Widths along a ribbon: a base width, a low-frequency wobble and an optional taper."""
    t = np.linspace(0.0, 1.0, n)
    w = np.ones(n)
    for k in (2, 3, 5, 9):
        w += rng.uniform(0, wobble / math.sqrt(k)) * np.sin(2 * math.pi * k * t + rng.uniform(0, 6.3))
    return width * np.clip(w, 0.25, None) * np.interp(t, [0, 1], taper)


def _blob(rng: np.random.Generator, center: Sequence[float], radius: float,
          irregularity: float = 0.35, aspect: float = 1.0, n: int = 40) -> np.ndarray:
    """An irregular closed outline (lakes, flows, rubble heaps)."""
    theta = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 7):
        r += rng.uniform(0, irregularity / k) * np.cos(k * theta + rng.uniform(0, 6.3))
    r *= 1 + rng.normal(0, irregularity * 0.05, n)
    r = radius * np.clip(r, 0.2, None)
    angle = rng.uniform(0, math.pi)
    x, y = r * np.cos(theta) * aspect, r * np.sin(theta) / aspect
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([center[0] + ca * x - sa * y, center[1] + sa * x + ca * y], axis=1)


def _rect(center: Sequence[float], length: float, width: float, angle: float) -> np.ndarray:
    """Corners of a rotated rectangle, (4, 2)."""
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = np.array([ca, sa]) * length / 2, np.array([-sa, ca]) * width / 2
    c = np.asarray(center, dtype=np.float64)
    return np.stack([c + u + v, c - u + v, c - u - v, c + u - v])


def _random_walk(rng: np.random.Generator, start: Sequence[float], heading: float, steps: int,
                 step: float, turn: float) -> np.ndarray:
    """A jagged line: each step turns by a random angle (cracks, lava glow lines)."""
    pts = [np.asarray(start, dtype=np.float64)]
    for _ in range(steps):
        heading += rng.normal(0, turn)
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    return np.stack(pts)


# --------------------------------------------------------------------------------------
# The canvas: one label map, one colour map and one material map, drawn together so that
# the label and the picture never disagree about where an object is.
# --------------------------------------------------------------------------------------
class _Canvas:
    SHIFT = 4  # sub-pixel bits for OpenCV drawing

    def __init__(self, size: int) -> None:
        self.size = size
        self.label = np.zeros((size, size), np.uint8)
        self.color = np.zeros((size, size, 3), np.float32)
        self.material = np.zeros((size, size), np.uint8)
        self.px = 1.0 / size  # one pixel in unit coordinates
        self.fire_mask = np.zeros((size, size), np.uint8)
        self.smoke: List[Tuple[np.ndarray, float, Color]] = []
        self.shadows: List[np.ndarray] = []

    def _pts(self, poly: np.ndarray) -> List[np.ndarray]:
        return [np.round(np.asarray(poly) * self.size * (1 << self.SHIFT)).astype(np.int32)]

    def fill(self, poly: np.ndarray, label: Optional[int], color: Color,
             material: Optional[str]) -> None:
        """Fill a polygon; label None or material None leaves that map as it was."""
        pts = self._pts(poly)
        if label is not None:
            cv2.fillPoly(self.label, pts, int(label), cv2.LINE_8, self.SHIFT)
        if material is not None:
            cv2.fillPoly(self.material, pts, MATERIAL_IDS[material], cv2.LINE_8, self.SHIFT)
        cv2.fillPoly(self.color, pts, color, cv2.LINE_8, self.SHIFT)

    def line(self, points: np.ndarray, width: float, label: Optional[int], color: Color,
             material: Optional[str]) -> None:
        """A polyline `width` (unit coordinates) thick, at least one pixel."""
        pts = self._pts(points)
        thickness = max(1, int(round(width * self.size)))
        if label is not None:
            cv2.polylines(self.label, pts, False, int(label), thickness, cv2.LINE_8, self.SHIFT)
        if material is not None:
            cv2.polylines(self.material, pts, False, MATERIAL_IDS[material], thickness,
                          cv2.LINE_8, self.SHIFT)
        cv2.polylines(self.color, pts, False, color, thickness, cv2.LINE_8, self.SHIFT)

    def disc(self, center: Sequence[float], radius: float, label: Optional[int], color: Color,
             material: Optional[str]) -> None:
        """A filled circle at least one pixel in radius."""
        c = tuple(int(round(v * self.size * (1 << self.SHIFT))) for v in center)
        r = max(1 << self.SHIFT, int(round(radius * self.size * (1 << self.SHIFT))))
        if label is not None:
            cv2.circle(self.label, c, r, int(label), -1, cv2.LINE_8, self.SHIFT)
        if material is not None:
            cv2.circle(self.material, c, r, MATERIAL_IDS[material], -1, cv2.LINE_8, self.SHIFT)
        cv2.circle(self.color, c, r, color, -1, cv2.LINE_8, self.SHIFT)

    def apply_shadows(self, strength: float) -> None:
        """Darken the ground under building shadows (labels stay: a shadow is not a class)."""
        if not self.shadows:
            return
        mask = np.zeros((self.size, self.size), np.uint8)
        cv2.fillPoly(mask, [p[0] for p in map(self._pts, self.shadows)], 1, cv2.LINE_8, self.SHIFT)
        self.color[mask.astype(bool)] *= strength
        self.shadows.clear()


# --------------------------------------------------------------------------------------
# Scene elements. Each takes the canvas and the layout generator and draws one kind of thing.
# Sizes are in unit coordinates; 1/512 is one pixel of a 512 px image.
# --------------------------------------------------------------------------------------
PX = 1.0 / 512.0


class _Scene:
    """Layout state shared by the elements of one scene."""

    def __init__(self, canvas: _Canvas, rng: np.random.Generator) -> None:
        self.c = canvas
        self.rng = rng
        self.roads: List[Tuple[np.ndarray, float]] = []  # (centre line, width)
        self.rivers: List[Tuple[np.ndarray, np.ndarray]] = []  # (centre line, widths)
        self.buildings: List[Tuple[np.ndarray, bool]] = []  # (corners, damaged)
        self.sun = rng.uniform(0, 2 * math.pi)
        self.flow = rng.uniform(0, math.pi)  # direction of streak textures


def _ground(s: _Scene, style: str) -> None:
    """Background: a base ground colour with field patches and tree clumps."""
    rng, c = s.rng, s.c
    colors = GROUNDS[style]
    material = {"green": "grass", "dry": "soil", "ash": "ash", "snow": "snow"}[style]
    c.color[:] = _pick(rng, colors)
    c.material[:] = MATERIAL_IDS[material]
    # Patchwork fields: jittered quadrilaterals of neighbouring ground colours.
    for _ in range(int(rng.integers(2, 9))):
        center = rng.uniform(0, 1, 2)
        quad = _rect(center, rng.uniform(0.15, 0.5), rng.uniform(0.1, 0.4), rng.uniform(0, math.pi))
        quad += rng.normal(0, 0.02, quad.shape)
        patch_material = "field" if (style in ("green", "dry") and rng.random() < 0.6) else material
        c.fill(quad, BACKGROUND, _pick(rng, colors), patch_material)
    if style in ("green", "dry", "snow") and rng.random() < 0.8:
        tree = _pick(rng, ((0.14, 0.24, 0.12), (0.20, 0.30, 0.15), (0.12, 0.18, 0.12)))
        for _ in range(int(rng.integers(1, 6))):
            center = rng.uniform(0, 1, 2)
            for _ in range(int(rng.integers(3, 25))):
                p = center + rng.normal(0, 0.04, 2)
                c.disc(p, rng.uniform(3, 9) * PX, BACKGROUND, tree, "tree")


def _road(s: _Scene, dirt: bool = False) -> None:
    """A road crossing the image, with a centre line on asphalt; sometimes a railway."""
    rng, c = s.rng, s.c
    line = _crossing_curve(rng)
    if rng.random() < 0.12:  # railway: gravel bed with two dark rails
        width = rng.uniform(10, 16) * PX
        c.line(line, width, ROAD, _pick(rng, GREYS + BROWNS[:1]), "dirt_road")
        t = _tangents(line)
        normal = np.stack([-t[:, 1], t[:, 0]], axis=1)
        for side in (-0.22, 0.22):
            c.line(line + normal * width * side, 1.5 * PX, ROAD, (0.22, 0.2, 0.18), None)
    else:
        width = rng.uniform(9, 26) * PX
        color = _pick(rng, BROWNS if dirt else GREYS)
        c.line(line, width, ROAD, color, "dirt_road" if dirt else "asphalt")
        if not dirt and width > 14 * PX and rng.random() < 0.7:
            dash = (0.9, 0.9, 0.85) if rng.random() < 0.6 else (0.85, 0.75, 0.3)
            for i in range(0, len(line) - 2, 4):
                c.line(line[i:i + 2], 1.2 * PX, None, dash, None)
    s.roads.append((line, width))


def _river(s: _Scene, width: float) -> None:
    """A river or canal crossing the image (flood/water)."""
    rng = s.rng
    line = _crossing_curve(rng, n=80)
    widths = _wavy_widths(rng, len(line), width, 0.25)
    s.c.fill(_ribbon(line, widths), WATER, _pick(rng, WATERS, 0.04), "water")
    s.rivers.append((line, widths))


def _flood(s: _Scene) -> None:
    """A large body of flood water spreading from one side (often muddy brown)."""
    rng = s.rng
    color = _pick(rng, WATERS, 0.04)
    side = int(rng.integers(4))
    for _ in range(int(rng.integers(1, 4))):
        center = _edge_point(rng, side, margin=-rng.uniform(0.0, 0.3))
        s.c.fill(_blob(rng, center, rng.uniform(0.2, 0.5), 0.5, rng.uniform(0.7, 1.5)),
                 WATER, color, "water")


def _buildings_along_roads(s: _Scene, count: int, damaged_frac: float,
                           burnt: bool = False) -> None:
    """Houses lined up along the roads, plus a few scattered ones."""
    rng = s.rng
    for _ in range(count):
        length, depth = rng.uniform(12, 40) * PX, rng.uniform(10, 28) * PX
        if s.roads and rng.random() < 0.75:
            line, width = s.roads[int(rng.integers(len(s.roads)))]
            i = int(rng.integers(2, len(line) - 2))
            tangent = _tangents(line)[i]
            normal = np.array([-tangent[1], tangent[0]]) * rng.choice([-1.0, 1.0])
            center = line[i] + normal * (width / 2 + depth / 2 + rng.uniform(3, 12) * PX)
            angle = math.atan2(tangent[1], tangent[0]) + rng.normal(0, 0.05)
        else:
            center = rng.uniform(0.05, 0.95, 2)
            angle = rng.uniform(0, math.pi)
        corners = _rect(center, length, depth, angle)
        s.buildings.append((corners, bool(rng.random() < damaged_frac)))
    # Shadows first (cast on whatever is below), then the buildings themselves.
    offset = np.array([math.cos(s.sun), math.sin(s.sun)]) * rng.uniform(3, 8) * PX
    s.c.shadows.extend(corners + offset for corners, damaged in s.buildings if not damaged)
    s.c.apply_shadows(rng.uniform(0.45, 0.7))
    for corners, damaged in s.buildings:
        if damaged:
            _damaged_building(s, corners, burnt)
        else:
            _building(s, corners)


def _building(s: _Scene, corners: np.ndarray) -> None:
    """An intact roof: two halves shaded by the sun, a ridge line."""
    rng, c = s.rng, s.c
    roof = np.asarray(_pick(rng, ROOFS, 0.05))
    c.fill(corners, BUILDING, tuple(roof), "roof")
    if rng.random() < 0.7:  # pitched roof: the half facing away from the sun is darker
        mid_a, mid_b = (corners[0] + corners[3]) / 2, (corners[1] + corners[2]) / 2
        half = np.stack([corners[0], corners[1], mid_b, mid_a])
        c.fill(half, None, tuple(roof * rng.uniform(0.7, 0.85)), None)
        c.line(np.stack([mid_a, mid_b]), 1.0 * PX, None, tuple(np.clip(roof * 1.15, 0, 1)), None)


def _damaged_building(s: _Scene, corners: np.ndarray, burnt: bool) -> None:
    """A collapsed or burnt building: a broken outline, rubble, part of the roof left."""
    rng, c = s.rng, s.c
    center = corners.mean(axis=0)
    outline = np.concatenate([corners, (corners + np.roll(corners, -1, axis=0)) / 2])
    outline = outline[[0, 4, 1, 5, 2, 6, 3, 7]]
    outline = center + (outline - center) * rng.uniform(0.75, 1.3, (8, 1))
    outline += rng.normal(0, 2.5 * PX, outline.shape)
    rubble = _pick(rng, ((0.15, 0.13, 0.12), (0.22, 0.20, 0.19)) if burnt else GREYS + BROWNS)
    c.fill(outline, BUILDING_DAMAGED, rubble, "burnt" if burnt else "rubble")
    if rng.random() < 0.6:  # a surviving piece of roof
        piece = center + (corners - center) * rng.uniform(0.3, 0.6)
        piece[int(rng.integers(4))] = center
        c.fill(piece, BUILDING_DAMAGED, _pick(rng, ROOFS, 0.08), "roof")


def _cracks(s: _Scene, count: int) -> None:
    """Thin dark jagged fissures across ground and roads; sometimes a subsidence hole."""
    rng, c = s.rng, s.c
    for _ in range(count):
        walk = _random_walk(rng, rng.uniform(0.1, 0.9, 2), rng.uniform(0, 2 * math.pi),
                            int(rng.integers(8, 30)), rng.uniform(0.008, 0.02), 0.45)
        color = _pick(rng, ((0.10, 0.09, 0.08), (0.18, 0.16, 0.14), (0.28, 0.25, 0.22)))
        c.line(walk, rng.uniform(1.0, 4.0) * PX, CRACK, color, "crack")
        if rng.random() < 0.4:  # a branch
            j = int(rng.integers(len(walk)))
            branch = _random_walk(rng, walk[j], rng.uniform(0, 2 * math.pi),
                                  int(rng.integers(3, 10)), 0.01, 0.5)
            c.line(branch, 1.0 * PX, CRACK, color, "crack")
    if rng.random() < 0.3:
        hole = _blob(rng, rng.uniform(0.2, 0.8, 2), rng.uniform(8, 20) * PX, 0.4)
        c.fill(hole, CRACK, _pick(rng, BROWNS, 0.05), "mud")


def _debris_flow(s: _Scene, count: int, ribbon: bool) -> None:
    """Mud and rock flows: a tongue running downhill, or heaps."""
    rng, c = s.rng, s.c
    for _ in range(count):
        color = _pick(rng, BROWNS + GREYS[:1], 0.06)
        if ribbon:
            line = _crossing_curve(rng, n=60)
            start = int(rng.integers(0, 20))
            line = line[start:start + int(rng.integers(25, 60))]
            widths = _wavy_widths(rng, len(line), rng.uniform(0.05, 0.16), 0.4, (0.5, 1.4))
            c.fill(_ribbon(line, widths), DEBRIS, color, "mud")
        else:
            c.fill(_blob(rng, rng.uniform(0.1, 0.9, 2), rng.uniform(0.03, 0.1), 0.6),
                   DEBRIS, color, "mud")


def _fires(s: _Scene, count: int, sites: Optional[List[np.ndarray]] = None) -> None:
    """Small bright fires with a glow and a smoke plume drifting down-wind."""
    rng, c = s.rng, s.c
    wind = rng.uniform(0, 2 * math.pi)
    for _ in range(count):
        center = sites[int(rng.integers(len(sites)))] if sites else rng.uniform(0.1, 0.9, 2)
        center = center + rng.normal(0, 4 * PX, 2)
        radius = rng.uniform(3, 12) * PX
        c.fill(_blob(rng, center, radius, 0.6, n=20), FIRE,
               _pick(rng, ((1.0, 0.55, 0.1), (0.95, 0.35, 0.05), (1.0, 0.75, 0.25)), 0.04), "fire")
        core = _blob(rng, center, radius * 0.45, 0.5, n=14)
        c.fill(core, None, (1.0, 0.92, 0.6), None)
        cv2.fillPoly(c.fire_mask, c._pts(_blob(rng, center, radius, 0.3, n=12)), 255,
                     cv2.LINE_8, c.SHIFT)
        if rng.random() < 0.8:
            drift = np.array([math.cos(wind), math.sin(wind)])
            plume = _blob(rng, center + drift * radius * rng.uniform(3, 6), radius * rng.uniform(3, 6),
                          0.5, aspect=1.8)
            c.smoke.append((plume, rng.uniform(0.35, 0.7), _pick(rng, GREYS + WHITES[1:2], 0.05)))


def _lava(s: _Scene, count: int) -> None:
    """Lava flows: dark crust with glowing orange cracks inside."""
    rng, c = s.rng, s.c
    for _ in range(count):
        line = _crossing_curve(rng, n=60)
        line = line[: int(rng.integers(30, 61))]
        widths = _wavy_widths(rng, len(line), rng.uniform(0.04, 0.12), 0.35, (0.6, 1.3))
        c.fill(_ribbon(line, widths), LAVA, _pick(rng, ((0.16, 0.12, 0.10), (0.25, 0.14, 0.10),
                                                        (0.12, 0.11, 0.11)), 0.04), "lava")
        t = _tangents(line)
        normal = np.stack([-t[:, 1], t[:, 0]], axis=1)
        glow = _pick(rng, ((1.0, 0.45, 0.08), (0.95, 0.25, 0.05), (1.0, 0.65, 0.2)), 0.04)
        for _ in range(int(rng.integers(2, 7))):
            offset = rng.uniform(-0.35, 0.35) + np.cumsum(rng.normal(0, 0.04, len(line)))
            offset = np.clip(offset, -0.4, 0.4)
            glow_line = line + normal * (widths * offset)[:, None]
            a = int(rng.integers(0, len(line) // 2))
            c.line(glow_line[a:a + int(rng.integers(5, 30))], rng.uniform(1, 2.5) * PX, None,
                   glow, None)


def _pyroclastic(s: _Scene) -> None:
    """A grey billowing ash cloud on the ground: a cluster of overlapping puffs."""
    rng, c = s.rng, s.c
    base = _pick(rng, GREYS + ((0.48, 0.45, 0.42),), 0.05)
    line = _crossing_curve(rng, n=20)[: int(rng.integers(6, 15))]
    for p in line:
        for _ in range(int(rng.integers(2, 5))):
            shade = tuple(float(v) for v in np.clip(np.asarray(base) * rng.uniform(0.85, 1.15), 0, 1))
            c.fill(_blob(rng, p + rng.normal(0, 0.03, 2), rng.uniform(0.03, 0.09), 0.5, n=24),
                   PYROCLASTIC, shade, "pyro")


def _avalanche(s: _Scene) -> None:
    """Snow tongues running down a slope from an image edge."""
    rng, c = s.rng, s.c
    side = int(rng.integers(4))
    for _ in range(int(rng.integers(1, 3))):
        line = _crossing_curve(rng, n=60, from_side=side)[: int(rng.integers(25, 50))]
        widths = _wavy_widths(rng, len(line), rng.uniform(0.1, 0.28), 0.35, (0.5, 1.5))
        c.fill(_ribbon(line, widths), AVALANCHE, _pick(rng, WHITES, 0.03), "avalanche")


def _ice_jam(s: _Scene) -> None:
    """Broken ice piled up along part of a river: blocks with dark gaps."""
    rng, c = s.rng, s.c
    if not s.rivers:
        _river(s, rng.uniform(0.06, 0.12))
    line, widths = s.rivers[int(rng.integers(len(s.rivers)))]
    a = int(rng.integers(0, len(line) // 2))
    b = a + int(rng.integers(15, len(line) // 2 + 1))
    c.fill(_ribbon(line[a:b], widths[a:b] * 1.05), ICE_JAM, _pick(rng, WHITES, 0.05), "ice")
    t = _tangents(line)
    normal = np.stack([-t[:, 1], t[:, 0]], axis=1)
    for _ in range(int(rng.integers(15, 50))):
        i = int(rng.integers(a, max(a + 1, b - 1)))
        p = line[i] + normal[i] * widths[i] * rng.uniform(-0.4, 0.4)
        block = _rect(p, rng.uniform(4, 14) * PX, rng.uniform(3, 10) * PX, rng.uniform(0, math.pi))
        c.fill(block, None, _pick(rng, WHITES + GREYS[3:], 0.08), None)


def _vehicles(s: _Scene, count: int) -> None:
    """Cars on the roads (some parked off road): small rotated rectangles."""
    rng, c = s.rng, s.c
    for _ in range(count):
        if s.roads and rng.random() < 0.85:
            line, width = s.roads[int(rng.integers(len(s.roads)))]
            i = int(rng.integers(1, len(line) - 1))
            tangent = _tangents(line)[i]
            normal = np.array([-tangent[1], tangent[0]])
            center = line[i] + normal * width * rng.uniform(-0.3, 0.3)
            angle = math.atan2(tangent[1], tangent[0])
        else:
            center, angle = rng.uniform(0.05, 0.95, 2), rng.uniform(0, math.pi)
        length = rng.uniform(8, 16) * PX
        body = _rect(center, length, length * rng.uniform(0.4, 0.5), angle)
        color = _pick(rng, CARS, 0.04)
        c.fill(body, VEHICLE, color, "small")
        if length * c.size > 8:  # windscreen
            glass = _rect(center + np.array([math.cos(angle), math.sin(angle)]) * length * 0.15,
                          length * 0.18, length * 0.4, angle)
            c.fill(glass, None, (0.12, 0.14, 0.18), None)


def _people(s: _Scene, count: int) -> None:
    """People: a few pixels each, in small groups near buildings or roads."""
    rng, c = s.rng, s.c
    placed = 0
    while placed < count:
        anchors = [b.mean(axis=0) for b, _ in s.buildings] + [r[0][len(r[0]) // 2] for r in s.roads]
        group_center = (anchors[int(rng.integers(len(anchors)))] + rng.normal(0, 0.05, 2)
                        if anchors and rng.random() < 0.7 else rng.uniform(0.05, 0.95, 2))
        for _ in range(min(count - placed, int(rng.integers(1, 5)))):
            p = group_center + rng.normal(0, 6 * PX, 2)
            c.disc(p + np.array([1.5, 1.0]) * PX, 2.0 * PX, None, (0.1, 0.1, 0.1), None)  # shadow
            c.disc(p, rng.uniform(1.5, 2.8) * PX, PERSON, _pick(rng, CLOTHES, 0.05), "small")
            placed += 1


# --------------------------------------------------------------------------------------
# Scene types: which elements, in which order, with how many of each.
# --------------------------------------------------------------------------------------
def _flood_scene(s: _Scene) -> None:
    rng = s.rng
    _ground(s, "green" if rng.random() < 0.7 else "dry")
    if rng.random() < 0.5:
        _river(s, rng.uniform(0.04, 0.1))
    for _ in range(int(rng.integers(1, 4))):
        _road(s, dirt=rng.random() < 0.3)
    _flood(s)
    _buildings_along_roads(s, int(rng.integers(3, 20)), damaged_frac=rng.uniform(0.0, 0.25))
    if rng.random() < 0.35:
        _debris_flow(s, int(rng.integers(1, 3)), ribbon=False)
    _common_small(s)


def _fire_scene(s: _Scene) -> None:
    rng = s.rng
    _ground(s, "dry" if rng.random() < 0.6 else "green")
    for _ in range(int(rng.integers(1, 4))):
        _road(s, dirt=rng.random() < 0.4)
    _buildings_along_roads(s, int(rng.integers(4, 22)), damaged_frac=rng.uniform(0.1, 0.5),
                           burnt=True)
    sites = [b.mean(axis=0) for b, damaged in s.buildings if damaged] or None
    _fires(s, int(rng.integers(1, 6)), sites)
    _common_small(s)


def _volcano_scene(s: _Scene) -> None:
    rng = s.rng
    _ground(s, "ash" if rng.random() < 0.75 else "dry")
    if rng.random() < 0.6:
        _road(s, dirt=rng.random() < 0.5)
    _lava(s, int(rng.integers(1, 4)))
    if rng.random() < 0.7:
        _pyroclastic(s)
    if rng.random() < 0.5:
        _buildings_along_roads(s, int(rng.integers(1, 8)), damaged_frac=rng.uniform(0.3, 0.8),
                               burnt=True)
    if rng.random() < 0.3:
        _fires(s, int(rng.integers(1, 3)))
    if rng.random() < 0.3:
        _debris_flow(s, 1, ribbon=rng.random() < 0.5)
    if rng.random() < 0.3:
        _cracks(s, int(rng.integers(1, 4)))
    _common_small(s, people=0.2)


def _earthquake_scene(s: _Scene) -> None:
    rng = s.rng
    _ground(s, "green" if rng.random() < 0.5 else "dry")
    for _ in range(int(rng.integers(1, 5))):
        _road(s, dirt=rng.random() < 0.2)
    _buildings_along_roads(s, int(rng.integers(8, 30)), damaged_frac=rng.uniform(0.2, 0.7))
    _cracks(s, int(rng.integers(1, 7)))
    if rng.random() < 0.4:
        _debris_flow(s, int(rng.integers(1, 4)), ribbon=False)
    if rng.random() < 0.15:
        _fires(s, 1, [b.mean(axis=0) for b, _ in s.buildings])
    _common_small(s, people=0.75)


def _snow_scene(s: _Scene) -> None:
    rng = s.rng
    _ground(s, "snow" if rng.random() < 0.7 else "green")
    if rng.random() < 0.75:
        _river(s, rng.uniform(0.05, 0.12))
    for _ in range(int(rng.integers(0, 3))):
        _road(s, dirt=rng.random() < 0.3)
    if rng.random() < 0.75:
        _avalanche(s)
    if s.rivers and rng.random() < 0.7:
        _ice_jam(s)
    if rng.random() < 0.6:
        _buildings_along_roads(s, int(rng.integers(1, 10)), damaged_frac=rng.uniform(0.0, 0.4))
    _common_small(s, people=0.3)


def _landslide_scene(s: _Scene) -> None:
    rng = s.rng
    _ground(s, "green" if rng.random() < 0.7 else "dry")
    if rng.random() < 0.5:
        _river(s, rng.uniform(0.03, 0.08))
    for _ in range(int(rng.integers(1, 3))):
        _road(s, dirt=rng.random() < 0.4)
    if rng.random() < 0.7:
        _buildings_along_roads(s, int(rng.integers(2, 14)), damaged_frac=rng.uniform(0.0, 0.5))
    _debris_flow(s, int(rng.integers(1, 3)), ribbon=True)
    if rng.random() < 0.3:
        _cracks(s, int(rng.integers(1, 3)))
    _common_small(s)


def _common_small(s: _Scene, people: float = 0.5, vehicles: float = 0.6) -> None:
    """The rare, tiny classes: a few vehicles and people in some scenes only."""
    rng = s.rng
    if rng.random() < vehicles:
        _vehicles(s, int(rng.integers(1, 8)))
    if rng.random() < people:
        _people(s, int(rng.integers(1, 9)))


# scene type -> (relative frequency, recipe)
SCENE_TYPES: Dict[str, Tuple[float, Callable[[_Scene], None]]] = {
    "flood": (0.22, _flood_scene),
    "fire": (0.14, _fire_scene),
    "volcano": (0.14, _volcano_scene),
    "earthquake": (0.20, _earthquake_scene),
    "snow": (0.14, _snow_scene),
    "landslide": (0.16, _landslide_scene),
}


# --------------------------------------------------------------------------------------
# Turning the drawn maps into a photo-like image.
# --------------------------------------------------------------------------------------
def _noise_field(rng: np.random.Generator, cells: Tuple[int, int], size: int) -> np.ndarray:
    """Smooth noise: random values on a coarse grid, upsampled with cubic interpolation."""
    grid = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _pixel_noise(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance per-pixel noise (uniform; from raw bytes, which is fast)."""
    raw = np.frombuffer(rng.bytes(int(np.prod(shape))), np.uint8).reshape(shape)
    return raw.astype(np.float32) * np.float32(1 / 73.9) - np.float32(127.5 / 73.9)


def _texture(c: _Canvas, rng: np.random.Generator, flow: float) -> np.ndarray:
    """Per-pixel brightness multiplier from the material map and shared noise fields."""
    size, material = c.size, c.material
    fine = _pixel_noise(rng, (size, size))
    medium = _noise_field(rng, (max(4, size // 6),) * 2, size)
    coarse = _noise_field(rng, (6, 6), size)
    # Streaks: noise stretched along one axis, mixed between the two axes by the flow angle.
    streak = math.cos(flow) ** 2 * _noise_field(rng, (48, 4), size) \
        + math.sin(flow) ** 2 * _noise_field(rng, (4, 48), size)
    shade = np.ones((size, size), np.float32)
    for k, field in enumerate((fine, medium, coarse, streak)):
        shade += _MATERIAL_AMPS[:, k][material] * field
    ripple_amp = _MATERIAL_AMPS[:, 4][material]
    if ripple_amp.any():  # ripples on water, bent by the medium noise
        axis = np.arange(size, dtype=np.float32) / size
        freq = rng.uniform(60, 140)
        phase = (axis[None, :] * (math.cos(flow) * freq) + axis[:, None] * (math.sin(flow) * freq)
                 + 2.0 * medium)
        shade += ripple_amp * np.sin(phase)
    return np.clip(shade, 0.3, 1.8, out=shade)


def _smoke(c: _Canvas, img: np.ndarray) -> np.ndarray:
    """Semi-transparent blurred smoke plumes (they hide what is below; labels do not change)."""
    if not c.smoke:
        return img
    # Premultiplied: alpha and alpha * colour are blurred together so the edges stay grey.
    alpha = np.zeros((c.size, c.size), np.float32)
    tinted = np.zeros((c.size, c.size, 3), np.float32)
    for plume, opacity, shade in c.smoke:
        pts = c._pts(plume)
        cv2.fillPoly(alpha, pts, float(opacity), cv2.LINE_8, c.SHIFT)
        cv2.fillPoly(tinted, pts, tuple(opacity * v for v in shade), cv2.LINE_8, c.SHIFT)
    sigma = max(1.0, 0.02 * c.size)
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)[..., None]
    tinted = cv2.GaussianBlur(tinted, (0, 0), sigma)
    return img * (1 - alpha) + tinted


def _glow(c: _Canvas, img: np.ndarray) -> np.ndarray:
    """Additive orange glow around fires."""
    if not c.fire_mask.any():
        return img
    glow = cv2.GaussianBlur(c.fire_mask.astype(np.float32) / 255.0, (0, 0), max(1.0, 0.012 * c.size))
    return img + glow[..., None] * np.array([0.9, 0.45, 0.1], np.float32) * 0.8


def _lighting(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Weather and exposure: illumination gradient, vignetting, white balance, gain, haze."""
    # The light varies slowly: compute it on a coarse grid and upsample.
    axis = np.linspace(-0.5, 0.5, 33, dtype=np.float32)
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    vignette = rng.uniform(0, 0.3)
    light = (1.0 + gy * axis[:, None] + gx * axis[None, :]) \
        * (1.0 - vignette * (axis[:, None] ** 2 + axis[None, :] ** 2))
    light *= rng.uniform(0.7, 1.25)  # exposure gain
    light = cv2.resize(light, (size, size), interpolation=cv2.INTER_LINEAR)
    white_balance = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    img *= light[..., None]
    if rng.random() < 0.4:  # haze: blend toward a pale blue-grey
        amount = rng.uniform(0.05, 0.3)
        haze = np.array([0.7, 0.74, 0.8], np.float32) * rng.uniform(0.8, 1.1) * amount
        img *= white_balance * (1.0 - amount)
        img += haze
    else:
        img *= white_balance
    return img


def _camera(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Lens blur, sensor noise, gamma, 8-bit quantisation and, often, JPEG compression."""
    sigma = rng.uniform(0, 1.1) * size / 512
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += _pixel_noise(rng, img.shape) * np.float32(rng.uniform(0.005, 0.03))
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    gamma = rng.uniform(0.75, 1.35)
    out = cv2.LUT(out, np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8))
    if rng.random() < 0.5:
        quality = int(rng.integers(55, 96))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out


def render_scene(seed: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic UAV disaster scene.

    Returns ``(rgb, label)``: RGB uint8 ``(size, size, 3)`` and class-index uint8
    ``(size, size)``. Deterministic for ``(seed, size)``; the layout depends on the seed
    only, so one seed gives the same scene at any size.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError("seed must be a non-negative integer, got %r" % (seed,))
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise SynthError("size must be an integer of at least 16 pixels, got %r" % (size,))
    size = int(size)
    layout_rng = np.random.default_rng([int(seed), 0])   # what is where (size-independent)
    pixel_rng = np.random.default_rng([int(seed), 1])    # noise fields (size-dependent)
    look_rng = np.random.default_rng([int(seed), 2])     # lighting and camera

    canvas = _Canvas(size)
    scene = _Scene(canvas, layout_rng)
    names = list(SCENE_TYPES)
    weights = np.array([SCENE_TYPES[n][0] for n in names])
    kind = names[int(layout_rng.choice(len(names), p=weights / weights.sum()))]
    SCENE_TYPES[kind][1](scene)

    img = canvas.color
    img *= _texture(canvas, pixel_rng, scene.flow)[..., None]
    img = _smoke(canvas, img)
    img = _glow(canvas, img)
    img = _lighting(img, look_rng, size)
    rgb = _camera(img, look_rng, size)
    return rgb, canvas.label


# --------------------------------------------------------------------------------------
# Writing a dataset.
# --------------------------------------------------------------------------------------
def scene_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` of a dataset written with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def split_counts(count: int, val_fraction: float) -> Dict[str, int]:
    """How many scenes go to each split."""
    n_val = int(round(count * val_fraction))
    if count > 1 and 0 < val_fraction and n_val == 0:
        n_val = 1
    return {"train": count - n_val, "val": n_val}


def _prepare_output(out: Path) -> None:
    """Make the split folders; clear PNGs left by an earlier synthetic run, never real data."""
    for top in ("IMG", "GT"):
        for split in SPLITS:
            folder = out / top / split
            if folder.is_dir() and any(folder.glob("*.png")):
                if not (out / MARKER_FILE).is_file():
                    raise SynthError("%s already holds PNG files and %s was not written by this "
                                     "generator; choose an empty --out folder"
                                     % (folder, out))
    for top in ("IMG", "GT"):
        for split in SPLITS:
            folder = out / top / split
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("*.png"):
                old.unlink()


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise SynthError("could not write %s" % path)


def write_dataset(out: Path, count: int, size: int, seed: int, val_fraction: float = 0.2,
                  workers: Optional[int] = None, progress: bool = True) -> Path:
    """Write ``count`` scenes in the organisers' layout under ``out`` and return ``out``.

    ``out/IMG/{train,val}/{split}_{i:04d}.png`` (RGB) and ``out/GT/{train,val}/...png``
    (mono label PNG). Deterministic for ``(count, size, seed, val_fraction)``. PNGs left in
    those folders by an earlier run of this generator are removed first; a folder that
    already holds other PNGs is refused.
    """
    from tqdm import tqdm

    if count < 1:
        raise SynthError("count must be at least 1, got %d" % count)
    if not 0.0 <= val_fraction <= 1.0:
        raise SynthError("val_fraction must be in [0, 1], got %r" % (val_fraction,))
    render_scene(0, size)  # checks size before anything is written
    out = Path(out)
    _prepare_output(out)
    counts = split_counts(count, val_fraction)
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]

    def write_one(job_index: int) -> None:
        split, i = jobs[job_index]
        rgb, label = render_scene(scene_seed(seed, job_index), size)
        name = "%s_%04d.png" % (split, i)
        _write_png(out / "IMG" / split / name, np.ascontiguousarray(rgb[..., ::-1]))
        _write_png(out / "GT" / split / name, label)

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress) as bar:
        for _ in pool.map(write_one, range(len(jobs))):
            bar.update(1)
    marker = {"generator": "training.synth", "synthetic": True, "seed": int(seed),
              "count": int(count), "size": int(size), "val_fraction": float(val_fraction),
              "splits": counts,
              "note": "Synthetic scenes for tests and demos; not real imagery."}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def contact_sheet(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], columns: int = 4,
                  tile: int = 192) -> np.ndarray:
    """RGB mosaic: each scene above its colour label, then a legend of the classes."""
    colors = palette()
    cells = []
    for rgb, label in pairs:
        image = cv2.resize(rgb, (tile, tile), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(colors[label], (tile, tile), interpolation=cv2.INTER_NEAREST)
        cells.append(np.concatenate([image, mask], axis=0))
    while len(cells) % columns:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.concatenate(cells[r:r + columns], axis=1) for r in range(0, len(cells), columns)]
    sheet = np.concatenate(rows, axis=0)
    # Legend: one swatch and name per class, in class order.
    per_row = max(1, sheet.shape[1] // 230)
    legend = np.full((22 * int(math.ceil(NUM_CLASSES / per_row)) + 6, sheet.shape[1], 3), 255,
                     np.uint8)
    for k, name in enumerate(CLASS_NAMES):
        x, y = 6 + (k % per_row) * 230, 6 + (k // per_row) * 22
        cv2.rectangle(legend, (x, y), (x + 16, y + 16), tuple(int(v) for v in colors[k]), -1)
        cv2.rectangle(legend, (x, y), (x + 16, y + 16), (0, 0, 0), 1)
        cv2.putText(legend, "%d %s" % (k, name), (x + 22, y + 13), cv2.FONT_HERSHEY_SIMPLEX,
                    0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([sheet, legend], axis=0)


def write_preview(dataset: Path, path: Path, count: int = 16, split: str = "train") -> Path:
    """Contact sheet of the first ``count`` scenes of a written split, as a PNG."""
    names = sorted((Path(dataset) / "IMG" / split).glob("*.png"))[:count]
    pairs = []
    for name in names:
        rgb = cv2.imread(str(name), cv2.IMREAD_COLOR)[..., ::-1]
        label = cv2.imread(str(Path(dataset) / "GT" / split / name.name), cv2.IMREAD_UNCHANGED)
        pairs.append((rgb, label))
    if not pairs:
        raise SynthError("no images in %s to preview" % (Path(dataset) / "IMG" / split))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_png(Path(path), np.ascontiguousarray(contact_sheet(pairs)[..., ::-1]))
    return Path(path)


def colour_only_miou(train: Iterable[Tuple[np.ndarray, np.ndarray]],
                     test: Iterable[Tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean IoU of the best colour-only classifier: a lookup table from RGB (8 levels per
    channel) to the class most often seen with that colour in ``train``, scored on ``test``.
    Low values mean colour alone does not separate the classes. Both are iterated once."""
    def bins(rgb: np.ndarray) -> np.ndarray:
        q = (rgb // 32).astype(np.int64)
        return q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]

    table = np.zeros((512, NUM_CLASSES), np.int64)
    for rgb, label in train:
        np.add.at(table, (bins(rgb).ravel(), label.ravel()), 1)
    lookup = table.argmax(axis=1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for rgb, label in test:
        np.add.at(confusion, (label.ravel(), lookup[bins(rgb)].ravel()), 1)
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def print_stats(out: Path, size: int, timing_scenes: int = 20) -> None:
    """Read the written dataset back through training.data and print what it holds."""
    import time

    from training.data import SegmentationDataset

    datasets = {}
    for split in SPLITS:
        if not any((out / "IMG" / split).glob("*.png")):
            continue
        start = time.perf_counter()
        datasets[split] = SegmentationDataset(out, split, progress=False)
        print("%s: %d images, validated in %.2f s" % (split, len(datasets[split]),
                                                      time.perf_counter() - start))
    pixels = np.zeros(NUM_CLASSES, np.int64)
    images = np.zeros(NUM_CLASSES, np.int64)
    for dataset in datasets.values():
        for i in range(len(dataset)):
            counts = np.bincount(dataset.load(i)[1].ravel(), minlength=NUM_CLASSES)
            pixels += counts[:NUM_CLASSES]
            images += counts[:NUM_CLASSES] > 0
    print("%-3s %-28s %9s %8s" % ("id", "class", "pixels %", "images"))
    for k, name in enumerate(CLASS_NAMES):
        print("%-3d %-28s %9.3f %8d" % (k, name, 100.0 * pixels[k] / pixels.sum(), images[k]))
    if len(datasets) == 2:
        train, val = datasets["train"], datasets["val"]
        miou = colour_only_miou((train.load(i) for i in range(len(train))),
                                (val.load(i) for i in range(len(val))))
        print("colour-only lookup table, fitted on train, mIoU on val: %.3f" % miou)
    start = time.perf_counter()
    for i in range(timing_scenes):
        render_scene(i, size)
    print("render_scene at %d px: %.1f ms per scene (mean of %d, one thread)"
          % (size, 1000.0 * (time.perf_counter() - start) / timing_scenes, timing_scenes))


# --------------------------------------------------------------------------------------
# Command line: python -m training synth
# --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--count", type=int, default=300, help="number of scenes (default 300)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of scenes in the val split (default 0.2; 1 makes a "
                             "test set, every scene in val)")
    parser.add_argument("--workers", type=int, default=None,
                        help="writer threads (default: up to 4)")
    parser.add_argument("--preview", type=Path, default=None, metavar="PNG",
                        help="also write a contact sheet of the first train scenes (val "
                             "scenes when there are none)")
    parser.add_argument("--stats", action="store_true",
                        help="read the dataset back and print class frequencies, a colour-only "
                             "baseline and the render time")


def main(args: argparse.Namespace) -> int:
    try:
        out = write_dataset(args.out, args.count, args.size, args.seed, args.val_fraction,
                            workers=args.workers)
        counts = split_counts(args.count, args.val_fraction)
        print("wrote %d train + %d val synthetic scenes (%d px, seed %d) to %s"
              % (counts["train"], counts["val"], args.size, args.seed, out))
        if args.preview is not None:
            split = "train" if counts["train"] else "val"
            print("preview: %s" % write_preview(out, args.preview, split=split))
        if args.stats:
            cv2.setNumThreads(1)
            print_stats(out, args.size)
    except (ValueError, OSError) as err:  # SynthError, DatasetError: messages name the file
        print("error: %s" % err, file=sys.stderr)
        return 1
    return 0
