"""The shipped model files are what their card says: models/default.onnx and default_fp16.onnx
agree with models/default.safetensors pixel by pixel on the synthetic val split the card was
measured on, and the mIoU in models/default_model.json and in the card models/README.md is
recomputed here from the files.

The val split is re-rendered in memory with the generator and the settings that the report
records (``python -m training synth --count 480 --size 256 --seed 0 --val-fraction 0.2``:
scene ``i`` of the val split is scene ``train + i`` of the dataset); each model runs through the
one Segmenter and the one metric, as ``python -m training evaluate`` does. Bounds are the
requirement's, set here. About 20 s on 2 busy cores (96 scenes, three models).
"""
import json
import re
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from lpcv_segmentation.core.classes import IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.metrics import SegmentationMetrics
from lpcv_segmentation.runtime.segmenter import Segmenter

MODELS = Path(__file__).resolve().parent.parent / "models"
FP32_AGREEMENT = 0.999  # default.onnx vs default.safetensors, share of pixels with one label
FP16_AGREEMENT = 0.99  # default_fp16.onnx vs default.safetensors
MIOU_TOLERANCE = 0.005  # a figure in the report or the card vs the one recomputed here
# file -> (the report's evaluation, the card's row whose first cell contains this)
FILES = {"default.onnx": ("onnx_fp32", "**default.onnx**"),
         "default_fp16.onnx": ("onnx_fp16", "default_fp16.onnx"),
         "default.safetensors": ("pruned", "pruned")}

pytestmark = pytest.mark.slow


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that two label maps (same shape) give the same class."""
    assert a.shape == b.shape
    return float(np.count_nonzero(a == b)) / a.size


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((MODELS / "default_model.json").read_text())


@pytest.fixture(scope="module")
def val_split(report):
    """[(rgb, label)] of the synthetic val split the report's evaluations used."""
    from training.synth import render_scene, scene_seed, split_counts
    data = report["settings"]["data"]
    counts = split_counts(data["count"], data["val_fraction"])
    return [render_scene(scene_seed(data["seed"], counts["train"] + i), data["size"])
            for i in range(counts["val"])]


@pytest.fixture(scope="module")
def predictions(val_split) -> Dict[str, list]:
    """Each shipped file's label maps of the val split (one thread: on a busy 2-core machine
    two threads ran PyTorch 20x slower, spin-waiting for each other)."""
    import torch
    threads = torch.get_num_threads()
    out = {}
    try:
        for name in FILES:
            segmenter = Segmenter(str(MODELS / name), threads=1)
            out[name] = [segmenter.segment(rgb).labels for rgb, _ in val_split]
    finally:
        torch.set_num_threads(threads)
    return out


def card_miou(row_key: str) -> float:
    """The mIoU column of the card's results row whose first cell contains ``row_key``."""
    lines = (MODELS / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |") and "mIoU" in line)
    column = [c.strip() for c in lines[start].strip("|").split("|")].index("mIoU")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]
            if row_key in line.split("|")[1]]  # the results table's rows only
    assert len(rows) == 1, "one card row for %r expected, found %d" % (row_key, len(rows))
    return float(re.sub(r"[^0-9.]", "", rows[0][column]))


def test_the_onnx_files_agree_with_the_checkpoint(predictions):
    reference = np.stack(predictions["default.safetensors"])
    fp32 = agreement(np.stack(predictions["default.onnx"]), reference)
    fp16 = agreement(np.stack(predictions["default_fp16.onnx"]), reference)
    print("pixel agreement with default.safetensors: fp32 %.5f, fp16 %.5f" % (fp32, fp16))
    assert fp32 >= FP32_AGREEMENT
    assert fp16 >= FP16_AGREEMENT


def test_the_reported_and_carded_miou_is_the_files(report, val_split, predictions):
    for name, (evaluation, row_key) in FILES.items():
        metrics = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
        for labels, (_, truth) in zip(predictions[name], val_split):
            metrics.update(labels, truth)
        recomputed = metrics.miou()
        reported = report["evaluations"][evaluation]
        assert reported["images"] == len(val_split)
        print("%s: mIoU recomputed %.4f, report %.4f, card %.3f"
              % (name, recomputed, reported["miou"], card_miou(row_key)))
        assert abs(reported["miou"] - recomputed) <= MIOU_TOLERANCE, name
        assert abs(card_miou(row_key) - recomputed) <= MIOU_TOLERANCE, name
