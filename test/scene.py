"""The test scene: known regions of detection classes, painted in the class colours.

An image painted this way is segmented exactly by the palette model of the tests, so the node
tests, the node benches and the synthetic camera (test/ros_helpers.py) share it.
"""
import numpy as np

from lpcv_segmentation.core.classes import class_id, palette

__all__ = ["scene_labels", "scene_rgb"]


def scene_labels(height: int, width: int) -> np.ndarray:
    """A label map with known regions of detection classes, scaled to the frame size."""
    labels = np.zeros((height, width), np.uint8)

    def box(cls: str, x0: float, y0: float, x1: float, y1: float) -> None:
        labels[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = \
            class_id(cls)

    box("road/railway/bridge", 0.0, 0.45, 1.0, 0.55)
    box("flood/water/river/sea", 0.0, 0.0, 0.3, 0.3)
    box("vehicle", 0.6, 0.1, 0.8, 0.3)
    box("person", 0.1, 0.7, 0.2, 0.85)
    box("person", 0.7, 0.7, 0.75, 0.8)
    box("fire/flare", 0.4, 0.65, 0.55, 0.9)
    return labels


def scene_rgb(height: int, width: int) -> np.ndarray:
    """The scene painted in the class colours (what the palette model segments exactly)."""
    return palette()[scene_labels(height, width)]
