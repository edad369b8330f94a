"""The one LPCV 2023 class table: index, name, display colour, and whether a class is a
disaster detection by default. Runtime, training, metrics and plots all read it from here.

Pure Python + numpy so that it runs on the drone (Python 3.8+) without torch.
"""
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np


class ClassInfo(NamedTuple):
    id: int
    name: str
    color: Tuple[int, int, int]  # RGB
    detect: bool  # reported on /seg/detections by default


CLASSES: Tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", (0, 0, 0), False),
    ClassInfo(1, "avalanche", (220, 235, 255), True),
    ClassInfo(2, "building_undamaged", (70, 130, 180), False),
    ClassInfo(3, "building_damaged", (230, 25, 75), True),
    ClassInfo(4, "cracks/fissure/subsidence", (145, 30, 180), True),
    ClassInfo(5, "debris/mud/rock_flow", (170, 110, 40), True),
    ClassInfo(6, "fire/flare", (255, 120, 0), True),
    ClassInfo(7, "flood/water/river/sea", (0, 90, 255), True),
    ClassInfo(8, "ice_jam_flow", (0, 220, 220), True),
    ClassInfo(9, "lava_flow", (200, 0, 0), True),
    ClassInfo(10, "person", (255, 225, 25), True),
    ClassInfo(11, "pyroclastic_flow", (128, 128, 128), True),
    ClassInfo(12, "road/railway/bridge", (210, 210, 160), False),
    ClassInfo(13, "vehicle", (60, 180, 75), True),
)

NUM_CLASSES: int = len(CLASSES)
IGNORE_INDEX: int = 255  # label value for "not annotated" (e.g. padding added by a crop)
CLASS_NAMES: Tuple[str, ...] = tuple(c.name for c in CLASSES)
DETECTION_CLASS_IDS: Tuple[int, ...] = tuple(c.id for c in CLASSES if c.detect)


def palette() -> np.ndarray:
    """(NUM_CLASSES, 3) uint8 RGB colours, indexable by a label map: ``palette()[labels]``."""
    return np.array([c.color for c in CLASSES], dtype=np.uint8)


def class_id(name: str) -> int:
    """Index of a class by its exact name; raises ValueError naming the unknown class."""
    for c in CLASSES:
        if c.name == name:
            return c.id
    raise ValueError("unknown class name %r; known: %s" % (name, ", ".join(CLASS_NAMES)))


def class_table() -> List[Dict[str, object]]:
    """The table as JSON-ready dicts, for model metadata and the /seg/label_info topic."""
    return [{"id": c.id, "name": c.name, "color": list(c.color)} for c in CLASSES]


def check_class_table(table: Sequence[Dict[str, object]]) -> None:
    """Raise ValueError if a table carried by a model file disagrees with this one."""
    names = [str(entry["name"]) for entry in table]
    if names != list(CLASS_NAMES):
        raise ValueError("model's class table %s does not match the package's %s"
                         % (names, list(CLASS_NAMES)))
