"""Convert a public UAV dataset (colour- or index-coded label images) into the LPCV layout.

  python -m training import-dataset --images DIR --labels DIR --mapping MAP.yaml --out DIR \\
      [--val-fraction F] [--size S] [--seed N] [--unknown error|background] \\
      [--image-suffix S] [--label-suffix S] [--prefix P]

The mapping file names, for every value a label image may hold, the LPCV class it becomes
(or ``ignore``, written as 255 and left out of losses and metrics):

  encoding: rgb            # or index
  label_suffix: _lab       # optional: label file stem = image stem + this (CLI overrides)
  classes:
    - {value: [28, 42, 168], class: flood/water/river/sea}
    - {value: [128, 64, 128], class: road/railway/bridge}

Images and labels are found recursively and paired by file stem (``6651.jpg`` with
``6651_lab.png`` when the label suffix is ``_lab``). A label value the mapping does not name
stops the import with the file and the value (``--unknown background`` maps it to background
instead). Everything is written to a temporary folder beside ``--out`` and renamed into place
at the end, so an error leaves nothing behind. The result:

  OUT/IMG/{train,val}/<prefix><stem>.png     RGB images (PNG)
  OUT/GT/{train,val}/<prefix><stem>.png      class-index labels (0..13, 255 = ignore)

``--size S`` resizes each pair so that its shorter side is S (images with area
interpolation, labels nearest-neighbour); the model squashes frames to its square input the
same way for every source. ``--val-fraction`` of the pairs (drawn with ``--seed``) go to val.
Mappings for FloodNet, RescueNet, the Semantic Drone Dataset and UAVid are in
training/mappings/; docs/data.md explains how to combine them with the LPCV data.
"""
import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX
from training.config import load_yaml_mapping

__all__ = ["DatasetImportError", "Mapping", "read_mapping", "pair_files", "convert_label",
           "import_dataset"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IGNORE = "ignore"
BACKGROUND = 0


class DatasetImportError(ValueError):
    """An import that cannot go on; the message names the file (and value) at fault."""


class Mapping:
    """Source label value -> LPCV class index, for ``rgb`` or ``index`` encoded labels."""

    def __init__(self, encoding: str, table: Dict[Tuple[int, ...], int],
                 label_suffix: str = "", image_suffix: str = "", source: str = "") -> None:
        self.encoding = encoding
        self.table = table
        self.label_suffix = label_suffix
        self.image_suffix = image_suffix
        self.source = source


def _class_index(name: str, where: str) -> int:
    if name == IGNORE:
        return IGNORE_INDEX
    if name not in CLASS_NAMES:
        raise DatasetImportError("%s: unknown class %r; use one of: %s, or %s"
                                 % (where, name, ", ".join(CLASS_NAMES), IGNORE))
    return CLASS_NAMES.index(name)


def read_mapping(path: str) -> Mapping:
    """Parse and check a mapping YAML; errors name the file and the entry."""
    data = load_yaml_mapping(path, DatasetImportError, "mapping file")
    if not isinstance(data.get("classes"), list):
        raise DatasetImportError("mapping file %s needs 'encoding' and a 'classes' list" % path)
    encoding = data.get("encoding")
    if encoding not in ("rgb", "index"):
        raise DatasetImportError("mapping file %s: encoding must be rgb or index, not %r"
                                 % (path, encoding))
    table: Dict[Tuple[int, ...], int] = {}
    for i, entry in enumerate(data["classes"]):
        where = "mapping file %s, classes[%d]" % (path, i)
        if not isinstance(entry, dict) or "value" not in entry or "class" not in entry:
            raise DatasetImportError("%s: each entry needs value and class" % where)
        value = entry["value"]
        if encoding == "rgb":
            ok = (isinstance(value, list) and len(value) == 3
                  and all(isinstance(v, int) and 0 <= v <= 255 for v in value))
            key = tuple(value) if ok else None
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535
            key = (value,) if ok else None
        if key is None:
            raise DatasetImportError("%s: value %r is not %s" % (
                where, value, "[r, g, b] with 0..255" if encoding == "rgb" else "an index >= 0"))
        if key in table:
            raise DatasetImportError("%s: value %r is mapped twice" % (where, value))
        table[key] = _class_index(str(entry["class"]), where)
    return Mapping(encoding, table, str(data.get("label_suffix") or ""),
                   str(data.get("image_suffix") or ""), path)


def _files_by_stem(root: Path, suffix: str, what: str,
                   extensions: Sequence[str]) -> Dict[str, Path]:
    if not root.is_dir():
        raise DatasetImportError("--%s %s is not a folder" % (what, root))
    found: Dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        stem = path.stem
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[:-len(suffix)]
        if stem in found:
            raise DatasetImportError("two %s files with the stem %r: %s and %s (import each "
                                     "sequence separately with --prefix)"
                                     % (what, stem, found[stem], path))
        found[stem] = path
    return found


def pair_files(images: Path, labels: Path, image_suffix: str = "",
               label_suffix: str = "") -> List[Tuple[str, Path, Path]]:
    """(stem, image, label) for every image; an image without a label is an error naming it."""
    image_files = _files_by_stem(images, image_suffix, "images", IMAGE_SUFFIXES)
    label_files = _files_by_stem(labels, label_suffix, "labels", (".png", ".bmp", ".tif",
                                                                  ".tiff"))
    if not image_files:
        ending = " ending in %r" % image_suffix if image_suffix else ""
        raise DatasetImportError("--images %s: no image files (%s)%s"
                                 % (images, ", ".join(IMAGE_SUFFIXES), ending))
    missing = [p for stem, p in image_files.items() if stem not in label_files]
    if missing:
        stem = missing[0].stem[:len(missing[0].stem) - len(image_suffix)]
        raise DatasetImportError("%s: no label for it in %s (looked for the stem %r + %r; "
                                 "%d image(s) lack one)"
                                 % (missing[0], labels, stem, label_suffix, len(missing)))
    return [(stem, image_files[stem], label_files[stem]) for stem in sorted(image_files)]


def convert_label(raw: np.ndarray, mapping: Mapping, unknown: str, path: Path) -> np.ndarray:
    """Source label array (as cv2 reads it) -> uint8 LPCV class indices."""
    if mapping.encoding == "rgb":
        if raw.ndim != 3 or raw.shape[2] < 3:
            raise DatasetImportError("%s: the mapping is rgb but the label has %s channel(s)"
                                     % (path, 1 if raw.ndim == 2 else raw.shape[2]))
        rgb = raw[:, :, 2::-1].astype(np.uint32)  # cv2 reads BGR(A)
        codes = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
        keys = {(k[0] << 16) | (k[1] << 8) | k[2]: v for k, v in mapping.table.items()}
    else:
        codes = (raw if raw.ndim == 2 else raw[:, :, 0]).astype(np.uint32)
        keys = {k[0]: v for k, v in mapping.table.items()}
    values, inverse = np.unique(codes, return_inverse=True)
    out_values = np.empty(len(values), np.uint8)
    for i, code in enumerate(values.tolist()):
        if code in keys:
            out_values[i] = keys[code]
        elif unknown == "background":
            out_values[i] = BACKGROUND
        else:
            shown = ([code >> 16, (code >> 8) & 255, code & 255] if mapping.encoding == "rgb"
                     else code)
            count = int((codes == code).sum())
            raise DatasetImportError("%s: label value %s (%d pixels) is not in the mapping %s; add "
                                     "it there or pass --unknown background"
                                     % (path, shown, count, mapping.source))
    return out_values[inverse.reshape(codes.shape)]


def _resize_pair(image: np.ndarray, label: np.ndarray,
                 size: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    if not size:
        return image, label
    h, w = image.shape[:2]
    scale = float(size) / min(h, w)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if (new_w, new_h) == (w, h):
        return image, label
    image = cv2.resize(image, (new_w, new_h),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, label


def split_stems(stems: Sequence[str], val_fraction: float, seed: int) -> Dict[str, str]:
    """stem -> "train" or "val"; round(F * n) stems to val (at least one when F > 0, n > 1)."""
    order = list(stems)
    np.random.default_rng(seed).shuffle(order)
    n_val = int(round(val_fraction * len(order)))
    if val_fraction > 0 and n_val == 0 and len(order) > 1:
        n_val = 1
    return {stem: ("val" if i < n_val else "train") for i, stem in enumerate(order)}


@dataclass(frozen=True)
class ImportOptions:
    """The command's options: the val share and the seed of its draw, the shorter side to
    resize to (None: keep), what an unmapped label colour becomes (error or background), the
    file stem suffixes (None: the mapping's) and the prefix of the written names."""
    val_fraction: float = 0.2
    size: Optional[int] = None
    seed: int = 0
    unknown: str = "error"
    image_suffix: Optional[str] = None
    label_suffix: Optional[str] = None
    prefix: str = ""


def import_dataset(images: str, labels: str, mapping_path: str, out: str,
                   options: ImportOptions = ImportOptions(), progress: bool = True
                   ) -> Dict[str, int]:
    """Convert and write the dataset; returns the number of pairs per split. On any error
    nothing is left under ``out``."""
    val_fraction, size, unknown, prefix = (options.val_fraction, options.size, options.unknown,
                                           options.prefix)
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetImportError("--val-fraction must be in [0, 1), got %r" % val_fraction)
    if size is not None and size < 1:
        raise DatasetImportError("--size must be positive, got %r" % size)
    if unknown not in ("error", "background"):
        raise DatasetImportError("--unknown must be error or background, not %r" % unknown)
    mapping = read_mapping(mapping_path)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetImportError("--out %s exists and is not empty; choose a new folder" % out_dir)
    pairs = pair_files(Path(images), Path(labels),
                       mapping.image_suffix if options.image_suffix is None else options.image_suffix,
                       mapping.label_suffix if options.label_suffix is None else options.label_suffix)
    splits = split_stems([stem for stem, _, _ in pairs], val_fraction, options.seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".%s.tmp-" % out_dir.name, dir=str(out_dir.parent)))
    counts = {"train": 0, "val": 0}
    try:
        for split in counts:
            (staging / "IMG" / split).mkdir(parents=True)
            (staging / "GT" / split).mkdir(parents=True)
        from tqdm import tqdm
        for stem, image_path, label_path in tqdm(pairs, desc="import", unit="img",
                                                 disable=not progress):
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetImportError("%s: cannot be read as an image" % image_path)
            raw = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise DatasetImportError("%s: cannot be read as a label image" % label_path)
            if raw.shape[:2] != image.shape[:2]:
                raise DatasetImportError("%s: label is %dx%d but its image %s is %dx%d"
                                         % (label_path, raw.shape[1], raw.shape[0],
                                            image_path, image.shape[1], image.shape[0]))
            label = convert_label(raw, mapping, unknown, label_path)
            image, label = _resize_pair(image, label, size)
            split = splits[stem]
            name = "%s%s.png" % (prefix, stem)
            for folder, array in (("IMG", image), ("GT", label)):
                target = staging / folder / split / name
                if not cv2.imwrite(str(target), array):
                    raise DatasetImportError("%s: cannot be written" % target)
            counts[split] += 1
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="folder of images (searched recursively)")
    parser.add_argument("--labels", required=True, metavar="DIR",
                        help="folder of label images (searched recursively; may equal --images "
                        "when --label-suffix tells them apart)")
    parser.add_argument("--mapping", required=True, metavar="MAP.yaml",
                        help="source value -> LPCV class, e.g. training/mappings/floodnet.yaml")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="new dataset root (IMG/<split>, GT/<split>); must not hold files")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="fraction of pairs written to val (default 0.2; 0 = all train)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize so the shorter side is SIZE pixels (default: keep)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val draw")
    parser.add_argument("--unknown", choices=("error", "background"), default="error",
                        help="a label value the mapping does not name: stop (default) or "
                        "map it to background")
    parser.add_argument("--image-suffix", default=None,
                        help="end of image file stems before the shared stem (default: the "
                        "mapping's image_suffix, else none)")
    parser.add_argument("--label-suffix", default=None,
                        help="end of label file stems, e.g. _lab (default: the mapping's "
                        "label_suffix, else none)")
    parser.add_argument("--prefix", default="",
                        help="prefix of the written file names (keeps sources apart)")


def main(args: argparse.Namespace) -> int:
    try:
        counts = import_dataset(args.images, args.labels, args.mapping, args.out, ImportOptions(
            args.val_fraction, args.size, args.seed, args.unknown, args.image_suffix,
            args.label_suffix, args.prefix))
    except DatasetImportError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    print("wrote %s: %d train, %d val pairs" % (args.out, counts["train"], counts["val"]))
    return 0
