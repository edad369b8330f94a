"""The one image | label | prediction panel painter (bag_eval's overlays, training evaluate's).

Label and prediction are drawn in the class colours (``classes.palette``), unannotated pixels
in IGNORE_COLOR, over a title row and above a legend of the classes shown. RGB uint8.
"""
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import cv2
import numpy as np

from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX, palette

__all__ = ["IGNORE_COLOR", "MIN_PANEL_WIDTH", "overlay_panel", "write_panel"]

IGNORE_COLOR = (255, 255, 255)  # label pixels without annotation
MIN_PANEL_WIDTH = 256  # smaller images are enlarged (pixel repetition) so the text stays legible


def _color_lut() -> np.ndarray:
    """(256, 3) uint8 RGB: class colours, IGNORE_COLOR for 255, grey elsewhere."""
    lut = np.full((256, 3), 128, np.uint8)
    colors = palette()
    lut[:len(colors)] = colors
    lut[IGNORE_INDEX] = IGNORE_COLOR
    return lut


def overlay_panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                  caption: str = "") -> np.ndarray:
    """RGB uint8 ``image | label | prediction`` with a legend of the classes that appear;
    ``caption`` follows the first title (e.g. the frame number)."""
    lut = _color_lut()
    if image.shape[1] < MIN_PANEL_WIDTH:
        factor = -(-MIN_PANEL_WIDTH // image.shape[1])
        image, label, prediction = (np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)
                                    for a in (image, label, prediction))
    h, w = image.shape[:2]
    gap = 4
    scale = max(0.35, min(1.0, w / 400.0))
    line = int(26 * scale) + 6
    panels = [image, lut[label], lut[prediction]]
    titles = ["image" + (" " + caption if caption else ""), "label", "prediction"]
    top = np.full((line, 3 * w + 2 * gap, 3), 255, np.uint8)
    row = np.full((h, 3 * w + 2 * gap, 3), 255, np.uint8)
    for i, (panel, name) in enumerate(zip(panels, titles)):
        x = i * (w + gap)
        row[:, x:x + w] = panel
        cv2.putText(top, name, (x + 4, line - 8),
                    cv2.FONT_HERSHEY_SIMPLEX, scale * 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    shown = sorted(set(np.unique(label).tolist()) | set(np.unique(prediction).tolist()))
    entries = [(lut[c], CLASS_NAMES[c] if c < len(CLASS_NAMES) else
                ("ignore" if c == IGNORE_INDEX else str(c))) for c in shown]
    legend = _legend(entries, row.shape[1], scale)
    return np.concatenate([top, row, legend], axis=0)


def _legend(entries: Sequence[Tuple[np.ndarray, str]], width: int, scale: float) -> np.ndarray:
    """Colour swatches with class names, wrapped over as many lines as needed."""
    font, text_scale = cv2.FONT_HERSHEY_SIMPLEX, scale * 0.5
    line = int(22 * scale) + 8
    box = line - 8
    items: List[Tuple[int, int, np.ndarray, str]] = []
    x, y = 6, 0
    for color, name in entries:
        text_w = cv2.getTextSize(name, font, text_scale, 1)[0][0]
        item_w = box + 6 + text_w + 16
        if x + item_w > width and x > 6:
            x, y = 6, y + 1
        items.append((x, y, color, name))
        x += item_w
    legend = np.full(((y + 1) * line + 4, width, 3), 255, np.uint8)
    for x, row, color, name in items:
        y0 = row * line + 4
        cv2.rectangle(legend, (x, y0), (x + box, y0 + box), tuple(int(c) for c in color), -1)
        cv2.rectangle(legend, (x, y0), (x + box, y0 + box), (0, 0, 0), 1)
        cv2.putText(legend, name, (x + box + 6, y0 + box - 2), font, text_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return legend


def write_panel(path: Union[str, Path], image: np.ndarray, label: np.ndarray,
                prediction: np.ndarray, caption: str = "") -> bool:
    """Write the panel as a PNG; False when OpenCV cannot write ``path``."""
    panel = overlay_panel(image, label, prediction, caption)
    return bool(cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)))
