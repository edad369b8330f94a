"""Time ``python -m training score`` on N synthetic prediction/label PNG pairs.

Writes N 512x512 pairs to a temporary directory (blocky label maps like real annotations,
predictions that disagree on a fraction of blocks), runs the score command once in a fresh
process and prints its wall time. Usage:

  .venv/bin/python bench/score_speed.py --images 1000 --workers 2
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lpcv_segmentation.core.labels_io import read_label_png  # noqa: E402
from lpcv_segmentation.core.metrics import confusion_matrix  # noqa: E402


def blocky_labels(rng: np.random.Generator, size: int, num_classes: int = 14) -> np.ndarray:
    """A label map made of 32x32-pixel regions of random classes."""
    coarse = rng.integers(0, num_classes, (size // 32, size // 32), dtype=np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_NEAREST)


def write_pairs(root: str, images: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("pred", "gt"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(images):
        gt = blocky_labels(rng, size)
        pred = np.where(rng.random(gt.shape) < 0.9, gt, blocky_labels(rng, size)).astype(np.uint8)
        name = "img_%04d.png" % i
        cv2.imwrite(os.path.join(root, "gt", name), gt)
        cv2.imwrite(os.path.join(root, "pred", name), pred)


def per_step_ms(root: str, images: int):
    """Mean milliseconds per pair, in this process, of reading both PNGs and of the
    confusion matrix."""
    read_s = conf_s = 0.0
    for i in range(images):
        name = "img_%04d.png" % i
        start = time.perf_counter()
        pred = read_label_png(os.path.join(root, "pred", name), ignore_index=None)
        gt = read_label_png(os.path.join(root, "gt", name))
        read_s += time.perf_counter() - start
        start = time.perf_counter()
        confusion_matrix(pred, gt)
        conf_s += time.perf_counter() - start
    return 1000.0 * read_s / images, 1000.0 * conf_s / images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_pairs(root, args.images, args.size)
        cmd = [sys.executable, "-m", "training", "score", "--pred", os.path.join(root, "pred"),
               "--gt", os.path.join(root, "gt"), "--json", os.path.join(root, "score.json"),
               "--workers", str(args.workers)]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        read_ms, conf_ms = per_step_ms(root, min(args.images, 200))
    print("score: %d pairs of %dx%d in %.1f s (%.1f ms/pair, %d workers, process start included)"
          % (args.images, args.size, args.size, seconds, 1000.0 * seconds / args.images,
             args.workers))
    print("one thread, per pair: reading 2 PNGs %.2f ms, confusion matrix %.2f ms"
          % (read_ms, conf_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
