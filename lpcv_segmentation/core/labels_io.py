"""Read label (and prediction) PNGs: one HxW uint8 array of class indices per file.

The LPCV 2023 label PNGs hold the class index in each pixel; a label PNG with 3 or 4
channels holds it in channel 0 as stored in the file (red). OpenCV decodes colour PNGs in
BGR(A) order, so that is OpenCV's channel 2. The training data reader, ``bag_eval`` and
``python -m training score`` all read labels through ``read_label_png``.
"""
import os
from typing import Optional

import cv2
import numpy as np

from lpcv_segmentation.core.classes import IGNORE_INDEX, NUM_CLASSES

__all__ = ["LabelFileError", "read_label_png"]

# OpenCV channel that holds PNG channel 0 (red), by number of channels decoded.
_PNG_CHANNEL0_IN_CV2 = {3: 2, 4: 2}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE_PALETTE = 3  # IHDR colour type byte, at offset 25 of the file


class LabelFileError(ValueError):
    """A label or prediction file is missing, unreadable, or holds values that are not classes.
    The message names the file."""


def _values_out_of_range(labels: np.ndarray, num_classes: int,
                         ignore_index: Optional[int]) -> np.ndarray:
    """Sorted distinct values that are neither a class index nor ``ignore_index``."""
    if labels.size == 0 or int(labels.max()) < num_classes:
        return np.empty(0, dtype=labels.dtype)
    bad = np.unique(labels[labels >= num_classes])
    if ignore_index is not None:
        bad = bad[bad != ignore_index]
    return bad


def _is_palette_png(path: str) -> bool:
    """True for an indexed-colour PNG, which OpenCV would expand to the palette's colours."""
    with open(path, "rb") as f:
        head = f.read(26)
    return (len(head) == 26 and head.startswith(_PNG_SIGNATURE)
            and head[25] == _PNG_COLOR_TYPE_PALETTE)


def read_label_png(path: str, num_classes: int = NUM_CLASSES,
                   ignore_index: Optional[int] = IGNORE_INDEX) -> np.ndarray:
    """Read a label map from an image file (PNG) as an HxW uint8 array.

    Single-channel files are taken as they are; 3/4-channel files give channel 0 (red).
    Palette PNGs are refused (OpenCV decodes them to colours).
    Every value must be a class index (< ``num_classes``) or ``ignore_index``; pass
    ``ignore_index=None`` for predictions, which must not hold it. Raises LabelFileError
    naming ``path`` when the file is missing or cannot be decoded, has an unexpected
    layout, or holds any other value.
    """
    if not os.path.isfile(path):
        raise LabelFileError("%s: no such file" % path)
    try:
        palette = _is_palette_png(path)
    except OSError as e:
        raise LabelFileError("%s: cannot be read (%s)" % (path, e.strerror or e))
    if palette:
        raise LabelFileError("%s: an indexed-colour (palette) PNG; OpenCV would read its colours, "
                             "not its indices. Save labels as 8-bit greyscale (or RGB with the "
                             "index in red)." % path)
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise LabelFileError("%s: cannot be decoded as an image (corrupt or not a PNG?)" % path)
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        elif image.shape[2] in _PNG_CHANNEL0_IN_CV2:
            image = image[:, :, _PNG_CHANNEL0_IN_CV2[image.shape[2]]]
        else:
            raise LabelFileError("%s: %d channels; a label file has 1, 3 or 4"
                                 % (path, image.shape[2]))
    elif image.ndim != 2:
        raise LabelFileError("%s: unexpected image shape %s" % (path, image.shape))
    if image.dtype not in (np.uint8, np.uint16):
        raise LabelFileError("%s: pixel type %s; a label file holds 8- or 16-bit integers"
                             % (path, image.dtype))
    bad = _values_out_of_range(image, num_classes, ignore_index)
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        allowed = "0..%d" % (num_classes - 1)
        if ignore_index is not None:
            allowed += " or %d (ignore)" % ignore_index
        raise LabelFileError("%s: values out of range (%s); allowed: %s" % (path, shown, allowed))
    return np.ascontiguousarray(image, dtype=np.uint8)
