"""Read the LPCV 2023 dataset (or a synthetic one in the same layout) for training.

Layout, as the organisers released it (the user passes DIR):
  DIR/IMG/<split>/<name>.png       RGB image
  DIR/GT_Updated/<split>/<name>.png  or  DIR/GT/<split>/<name>.png   label, same file name
DIR may also be a parent holding such folders one level down (for example a folder with
``LPCVC_Train_Updated/`` and ``LPCVC_Val/``): ``find_pairs`` looks for ``IMG/<split>``
under DIR and then in each of its sub-folders. When both ``GT_Updated`` and ``GT`` exist the
updated labels win.

A label PNG holds the class index per pixel (channel 0 when it has 3 channels; read through
``lpcv_segmentation.core.labels_io.read_label_png``). Before training, ``validate_pairs`` reads
every file once and stops at a missing label, an unreadable file, a size mismatch or a label
value that is not a class (0..13) or 255 (ignore), naming the file. Images are read lazily,
one per item, so a dataset of any size fits in memory.

Augmentation works on numpy arrays with OpenCV and draws every random number from a numpy
Generator it is given, so the same Generator state gives the same sample.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lpcv_segmentation.core.classes import IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.labels_io import LabelFileError, read_label_png
from lpcv_segmentation.runtime.segmenter import IMAGENET_MEAN, IMAGENET_STD, normalize, preprocess

IMAGE_DIR = "IMG"
LABEL_DIRS: Tuple[str, ...] = ("GT_Updated", "GT")  # first found wins: the corrected labels
IMAGE_SUFFIXES = (".png",)

PathLike = Union[str, Path]
Pair = Tuple[Path, Path]
# transform(rgb uint8 HxWx3, label uint8 HxW, rng) -> (float32 3xHxW, int64 HxW)
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Tuple[np.ndarray, np.ndarray]]


class DatasetError(ValueError):
    """The dataset on disk is not usable; the message names the file or folder."""

    def __init__(self, message: str, path: Optional[PathLike] = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


# --------------------------------------------------------------------------------------
# Finding and checking files
# --------------------------------------------------------------------------------------
def find_image_dir(root: PathLike, split: str) -> Path:
    """``IMG/<split>`` under ``root``, or under exactly one of its sub-folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("%s: no such dataset folder" % root, root)
    direct = root / IMAGE_DIR / split
    if direct.is_dir():
        return direct
    nested = sorted(d / IMAGE_DIR / split for d in root.iterdir()
                    if (d / IMAGE_DIR / split).is_dir())
    if len(nested) == 1:
        return nested[0]
    if not nested:
        raise DatasetError("%s: no %s/%s folder in it or in any of its sub-folders"
                           % (root, IMAGE_DIR, split), root)
    raise DatasetError("%s: several %s/%s folders (%s); pass the one to use"
                       % (root, IMAGE_DIR, split, ", ".join(str(p) for p in nested)), root)


def find_label_dir(image_dir: Path) -> Path:
    """The label folder beside ``.../IMG/<split>``: ``GT_Updated/<split>`` or ``GT/<split>``."""
    split, base = image_dir.name, image_dir.parent.parent
    for name in LABEL_DIRS:
        if (base / name / split).is_dir():
            return base / name / split
    raise DatasetError("%s: no label folder for it (looked for %s)"
                       % (image_dir, " and ".join(str(base / n / split) for n in LABEL_DIRS)),
                       image_dir)


def find_pairs(root: PathLike, split: str) -> List[Pair]:
    """(image, label) paths of a split, sorted by file name.

    Label paths are where the label should be; ``validate_pairs`` checks that it is there.
    """
    image_dir = find_image_dir(root, split)
    label_dir = find_label_dir(image_dir)
    images = sorted(p for p in image_dir.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DatasetError("%s: no PNG images in it" % image_dir, image_dir)
    return [(image, label_dir / image.name) for image in images]


def _check_pair(pair: Pair, num_classes: int) -> Optional[Tuple[Path, str]]:
    """The problem with one (image, label) pair as (bad file, message naming it), or None."""
    image_path, label_path = pair
    if not label_path.is_file():
        return label_path, "%s: label missing for image %s" % (label_path, image_path)
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        return image_path, "%s: cannot be read as an image (corrupt or not a PNG?)" % image_path
    try:
        label = read_label_png(str(label_path), num_classes, IGNORE_INDEX)
    except LabelFileError as err:
        return label_path, str(err)
    if label.shape != image.shape[:2]:
        return label_path, ("%s: label is %dx%d but its image %s is %dx%d (width x height)"
                            % (label_path, label.shape[1], label.shape[0], image_path,
                               image.shape[1], image.shape[0]))
    return None


def validate_pairs(pairs: Sequence[Pair], num_classes: int = NUM_CLASSES,
                   workers: Optional[int] = None, progress: bool = True) -> None:
    """Read every image and label once; raise DatasetError naming the first bad file.

    Checks: the label exists, both files decode, they have the same size, and every label
    value is a class index below ``num_classes`` or 255 (ignore). Files are read in a thread
    pool (OpenCV decodes without holding the GIL). The error lists up to 5 further problems.
    """
    from tqdm import tqdm

    if not pairs:
        raise DatasetError("no images to validate")
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    problems: List[Tuple[Path, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: _check_pair(p, num_classes), pairs)
        for problem in tqdm(results, total=len(pairs), desc="checking dataset", unit="img",
                            disable=not progress, leave=False):
            if problem is not None:
                problems.append(problem)
    if problems:
        bad_path, message = problems[0]
        if len(problems) > 1:
            more = [m for _, m in problems[1:6]]
            message += "\n(and %d more problem%s in this split, e.g.:\n  %s)" % (
                len(problems) - 1, "s" if len(problems) > 2 else "", "\n  ".join(more))
        raise DatasetError(message, bad_path)


def read_image(path: PathLike) -> np.ndarray:
    """An image file as RGB uint8 HxWx3; DatasetError naming it if it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError("%s: cannot be read as an image" % path, path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: PathLike, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """A label file as uint8 HxW class indices; DatasetError naming it when it is bad."""
    try:
        return read_label_png(str(path), num_classes, IGNORE_INDEX)
    except LabelFileError as err:
        raise DatasetError(str(err), path) from None


# --------------------------------------------------------------------------------------
# Transforms: numpy in (RGB uint8 HxWx3, label uint8 HxW), numpy out (normalised float32
# 3xHxW, int64 HxW).
# --------------------------------------------------------------------------------------
def _label_out(label: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(label, dtype=np.int64)


def resize_pair(image: np.ndarray, label: Optional[np.ndarray], width: int,
                height: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Bilinear for the image, nearest for the label, on the same pixel grid.

    INTER_NEAREST_EXACT samples at pixel centres as INTER_LINEAR does; plain INTER_NEAREST
    would shift the label by up to half a pixel against the image.
    """
    size = (int(width), int(height))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT)
    return image, label


def color_jitter(image: np.ndarray, draws: Sequence[float], strength: Sequence[float]
                 ) -> np.ndarray:
    """Brightness, contrast, saturation and hue changes (torchvision's ColorJitter meaning).

    ``strength`` = (brightness, contrast, saturation, hue): the first three scale by a factor
    in [1 - s, 1 + s]; hue turns by up to h of a full circle (h <= 0.5). ``draws`` are four
    uniform numbers in [-1, 1] choosing where in those ranges this image falls.
    """
    b, c, s, h = (float(d) * float(k) for d, k in zip(draws, strength))
    img = image.astype(np.float32) * (1.0 + b)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    mean = float((img @ luma).mean())
    img = (img - mean) * (1.0 + c) + mean
    gray = (img @ luma)[..., None]
    img = gray + (img - gray) * (1.0 + s)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    shift = int(round(h * 256)) % 256
    if shift:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)
        hsv[..., 0] += np.uint8(shift)  # wraps around modulo 256: a rotation of the hue circle
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return out


class EvalTransform:
    """Plain resize to the model input (as the drone's runtime does), then normalise.

    With ``resize_label=False`` the label keeps its own size (to score at full resolution).
    """

    def __init__(self, input_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, resize_label: bool = True) -> None:
        self.input_size = int(input_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize_label = resize_label

    def __call__(self, image: np.ndarray, label: Optional[np.ndarray],
                 rng: Optional[np.random.Generator] = None
                 ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        x = preprocess(image, self.input_size, self.mean, self.std)[0]  # the runtime's own
        if label is not None and self.resize_label:
            size = (self.input_size, self.input_size)
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT)
        return x, None if label is None else _label_out(label)

    def __repr__(self) -> str:
        return "EvalTransform(input_size=%d)" % self.input_size


class TrainTransform:
    """Random scale, random crop (padding labelled 255), horizontal flip, colour jitter.

    The image is resized to ``base_size * s`` pixels square (``s`` uniform in ``scale``;
    ``base_size`` defaults to ``crop_size``), so at ``s = 1`` objects have the size
    ``EvalTransform(crop_size)`` gives them. A ``crop_size`` window is then cut at a random
    place; where it overhangs the image it is filled with the mean colour (0 after
    normalisation) and labelled ``IGNORE_INDEX``. Random numbers come from ``rng`` in a
    fixed order (scale, crop y, crop x, 4 jitter draws, flip), the same with or without
    jitter, so a seed gives the same geometry whatever the colour settings.
    """

    def __init__(self, crop_size: int, scale: Tuple[float, float] = (0.5, 2.0),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 hflip: float = 0.5,
                 jitter: Optional[Sequence[float]] = (0.25, 0.25, 0.25, 0.02),
                 base_size: Optional[int] = None) -> None:
        if not (0 < scale[0] <= scale[1]):
            raise ValueError("scale must be (low, high) with 0 < low <= high, got %r" % (scale,))
        if jitter is not None and len(jitter) != 4:
            raise ValueError("jitter must be (brightness, contrast, saturation, hue), got %r"
                             % (jitter,))
        self.crop_size = int(crop_size)
        self.base_size = int(base_size or crop_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.mean, self.std = tuple(mean), tuple(std)
        self.hflip = float(hflip)
        self.jitter = None if jitter is None or not any(jitter) else tuple(jitter)
        self.fill = tuple(int(round(255 * m)) for m in self.mean)

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
        rng = rng if rng is not None else np.random.default_rng()
        crop = self.crop_size
        side = max(1, int(round(self.base_size * rng.uniform(*self.scale))))
        image, label = resize_pair(image, label, side, side)
        # Crop window over the image padded (bottom/right) up to the crop size.
        y0 = int(rng.integers(0, max(side, crop) - crop + 1))
        x0 = int(rng.integers(0, max(side, crop) - crop + 1))
        region = image[y0:y0 + crop, x0:x0 + crop]
        h, w = region.shape[:2]
        draws = rng.uniform(-1.0, 1.0, 4)  # drawn even without jitter: same geometry either way
        if self.jitter is not None:
            region = color_jitter(region, draws, self.jitter)
        out_image = np.empty((crop, crop, 3), np.uint8)
        out_image[...] = self.fill
        out_image[:h, :w] = region
        out_label = np.full((crop, crop), IGNORE_INDEX, np.uint8)
        out_label[:h, :w] = label[y0:y0 + crop, x0:x0 + crop]
        if rng.random() < self.hflip:
            out_image, out_label = out_image[:, ::-1], out_label[:, ::-1]
        return normalize(out_image, self.mean, self.std), _label_out(out_label)

    def __repr__(self) -> str:
        return ("TrainTransform(crop_size=%d, base_size=%d, scale=%s, hflip=%s, jitter=%s)"
                % (self.crop_size, self.base_size, self.scale, self.hflip, self.jitter))


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------
class SegmentationDataset(Dataset):
    """A split of an LPCV-layout dataset as ``(image float32 3xHxW, label int64 HxW)``.

    Files are found (and, with ``validate=True``, checked) when the dataset is built and
    read one at a time in ``__getitem__``. ``transform(image, label, rng)`` receives RGB
    uint8 and uint8 labels and returns normalised arrays; without one the image is only
    normalised with ``mean``/``std``.

    Augmentation randomness: each process draws from a numpy Generator seeded from
    ``torch.initial_seed()``, which DataLoader sets differently in every worker from the
    main process's torch seed; so ``torch.manual_seed`` makes a run repeatable, and workers
    never repeat each other's augmentations.
    """

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None,
                 validate: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 num_classes: int = NUM_CLASSES, progress: bool = True) -> None:
        self.root, self.split = Path(root), split
        self.transform = transform
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_classes = num_classes
        self.pairs: List[Pair] = find_pairs(self.root, split)
        if validate:
            validate_pairs(self.pairs, num_classes, progress=progress)
        self._rng_seed: Optional[int] = None
        self._rng: Optional[np.random.Generator] = None

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> List[str]:
        """Image file names, in item order (to name prediction files)."""
        return [image.name for image, _ in self.pairs]

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as stored: RGB uint8 HxWx3 and uint8 HxW labels."""
        image_path, label_path = self.pairs[index]
        return read_image(image_path), read_label(label_path, self.num_classes)

    def generator(self) -> np.random.Generator:
        """This process's augmentation Generator (re-seeded when torch's seed changes)."""
        seed = torch.initial_seed()
        if self._rng is None or self._rng_seed != seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def get(self, index: int, rng: Optional[np.random.Generator] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as numpy arrays, transformed with ``rng`` (for repeatable checks)."""
        image, label = self.load(index)
        if self.transform is None:
            return normalize(image, self.mean, self.std), _label_out(label)
        return self.transform(image, label, rng if rng is not None else self.generator())

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = self.get(index)
        return torch.from_numpy(image), torch.from_numpy(label)

    def __repr__(self) -> str:
        return "SegmentationDataset(%s, split=%r, %d images, transform=%r)" % (
            self.root, self.split, len(self), self.transform)
