"""Evaluate a model file on a dataset split: accuracy, cost, latency and the challenge score.

  python -m training evaluate --checkpoint MODEL --data DIR --split val --json OUT.json \\
      [--overlays N] [--backend auto] [--device cpu] [--precision fp32]

MODEL is anything ``lpcv_segmentation.runtime.Segmenter`` runs: a ``.safetensors``
checkpoint, an exported ``.onnx`` file or a TensorRT ``.engine``. Every image goes through
the same ``Segmenter.segment`` the drone uses (resize to the model input, back end, argmax,
nearest resize back to the image size), so the figures score what would fly.

The JSON holds:
  miou, per_class_iou, pixel_acc  dataset-level confusion matrix (the paper's figures)
  dice                            the challenge's accuracy: per-image mean Dice, averaged
  params, gmacs                   from the model (checkpoint) or the file's metadata (ONNX)
  latency_ms                      median forward time per image after warm-up (the back
                                  end's inference step; synchronised on CUDA)
  score                           dice / (latency_ms / 1000), the challenge's score
  plus latency_mean_ms, backend, device, precision, input_size, images, model, data, split.

With --overlays N the first N images are also written as PNGs ``image | label |
prediction`` in the class colours, with a legend of the classes shown.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from lpcv_segmentation.classes import CLASS_NAMES, IGNORE_INDEX, palette
from lpcv_segmentation.fileio import write_json_atomic
from lpcv_segmentation.metrics import SegmentationMetrics

IGNORE_COLOR = (255, 255, 255)  # label pixels without annotation, in overlays
WARMUP_DEFAULT = 3
MIN_PANEL_WIDTH = 256  # overlays of smaller images are enlarged (pixel repetition)


class EvaluateError(RuntimeError):
    """Nothing to evaluate or an output that cannot be written; the message names it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="MODEL",
                        help="model file: .safetensors checkpoint, .onnx or TensorRT .engine")
    parser.add_argument("--data", required=True, help="dataset root in the LPCV layout")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--json", required=True, metavar="OUT.json", help="where to write results")
    parser.add_argument("--overlays", type=int, default=0, metavar="N",
                        help="write image | label | prediction PNGs for the first N images")
    parser.add_argument("--overlay-dir", metavar="DIR",
                        help="folder for the overlays (default: OUT_overlays beside the JSON)")
    parser.add_argument("--backend", default="auto",
                        help="auto (from the file ending), pytorch, onnxruntime or tensorrt")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16 or int8")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the back end (default: its own)")
    parser.add_argument("--warmup", type=int, default=WARMUP_DEFAULT,
                        help="forward passes before timing starts (default: %d)" % WARMUP_DEFAULT)
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N images of the split")


def main(args: argparse.Namespace) -> int:
    from lpcv_segmentation.runtime import RuntimeConfigError
    from training.data import DatasetError

    try:
        result = evaluate(args.checkpoint, args.data, args.split, backend=args.backend,
                          device=args.device, precision=args.precision, threads=args.threads,
                          warmup=args.warmup, limit=args.limit, overlays=args.overlays,
                          overlay_dir=args.overlay_dir or _default_overlay_dir(args.json))
        write_json(result, args.json)
    except (RuntimeConfigError, DatasetError, EvaluateError, ValueError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    print(format_summary(result))
    print("wrote %s" % args.json)
    return 0


def _default_overlay_dir(json_path: str) -> str:
    return os.path.splitext(json_path)[0] + "_overlays"


# --------------------------------------------------------------------------------------
# Cost of a model
# --------------------------------------------------------------------------------------
def model_cost(segmenter: Any) -> Tuple[Optional[int], Optional[float]]:
    """(parameters, GMACs at the model's input size). The PyTorch back end holds the model
    and counts them; exported files carry them in their metadata (written by the export)."""
    model = getattr(segmenter.backend, "model", None)
    if model is not None:
        from lpcv_segmentation.cost import count_macs, count_params
        return count_params(model), round(count_macs(model, segmenter.input_size), 4)
    meta = segmenter.metadata
    params = meta.get("params")
    gmacs = meta.get("gmacs")
    return (None if params is None else int(params)), (None if gmacs is None else float(gmacs))


# --------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------
def _color_lut() -> np.ndarray:
    """(256, 3) uint8 RGB: class colours, IGNORE_COLOR for 255, grey elsewhere."""
    lut = np.full((256, 3), 128, np.uint8)
    colors = palette()
    lut[:len(colors)] = colors
    lut[IGNORE_INDEX] = IGNORE_COLOR
    return lut


def overlay_panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB uint8 ``image | label | prediction`` with a legend of the classes that appear."""
    lut = _color_lut()
    if image.shape[1] < MIN_PANEL_WIDTH:  # enlarge small images so the legend stays legible
        factor = -(-MIN_PANEL_WIDTH // image.shape[1])
        image, label, prediction = (np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)
                                    for a in (image, label, prediction))
    h, w = image.shape[:2]
    gap = 4
    scale = max(0.35, min(1.0, w / 400.0))
    line = int(26 * scale) + 6
    panels = [image, lut[label], lut[prediction]]
    top = np.full((line, 3 * w + 2 * gap, 3), 255, np.uint8)
    row = np.full((h, 3 * w + 2 * gap, 3), 255, np.uint8)
    for i, (panel, name) in enumerate(zip(panels, ("image", "label", "prediction"))):
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


def write_overlay(path: Path, image: np.ndarray, label: np.ndarray,
                  prediction: np.ndarray) -> None:
    panel = overlay_panel(image, label, prediction)
    if not cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
        raise EvaluateError("cannot write overlay %s" % path)


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------
def evaluate(model_path: str, data: str, split: str = "val", backend: str = "auto",
             device: str = "cpu", precision: str = "fp32", threads: Optional[int] = None,
             warmup: int = WARMUP_DEFAULT, limit: Optional[int] = None, overlays: int = 0,
             overlay_dir: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Run ``model_path`` over a split with ``Segmenter`` and return the JSON-ready results."""
    from tqdm import tqdm

    from lpcv_segmentation.runtime import Segmenter
    from training.data import find_pairs, read_image, read_label, validate_pairs

    pairs = find_pairs(data, split)
    if limit is not None:
        if limit < 1:
            raise EvaluateError("--limit must be >= 1, got %d" % limit)
        pairs = pairs[:limit]
    validate_pairs(pairs, progress=progress)
    segmenter = Segmenter(model_path, backend=backend, device=device, precision=precision,
                          threads=threads)
    if overlays and overlay_dir:
        os.makedirs(overlay_dir, exist_ok=True)
    segmenter.warmup(warmup)
    metrics = SegmentationMetrics(segmenter.num_classes, IGNORE_INDEX)
    inference_ms: List[float] = []
    for index, (image_path, label_path) in enumerate(tqdm(pairs, desc="evaluate", unit="img",
                                                          disable=not progress)):
        image = read_image(image_path)
        label = read_label(label_path)
        result = segmenter.segment(image)
        metrics.update(result.labels, label)
        inference_ms.append(result.timings_ms["inference"])
        if index < overlays and overlay_dir:
            write_overlay(Path(overlay_dir) / Path(image_path).name, image, label, result.labels)
    params, gmacs = model_cost(segmenter)
    summary = metrics.summary()
    latency = statistics.median(inference_ms)
    dice = summary["dice"]
    out: Dict[str, Any] = {
        "miou": summary["miou"],
        "dice": dice,
        "pixel_acc": summary["pixel_acc"],
        "per_class_iou": summary["per_class_iou"],
        "params": params,
        "gmacs": gmacs,
        "latency_ms": latency,
        "latency_mean_ms": statistics.fmean(inference_ms),
        "score": None if dice is None or latency <= 0 else dice / (latency / 1000.0),
        "images": summary["images"],
        "backend": segmenter.backend_name,
        "device": segmenter.device,
        "precision": segmenter.precision,
        "input_size": segmenter.input_size,
        "warmup": warmup,
        "model": os.path.abspath(model_path),
        "data": os.path.abspath(data),
        "split": split,
    }
    if overlays and overlay_dir:
        out["overlays"] = os.path.abspath(overlay_dir)
    return out


def write_json(result: Dict[str, Any], path: str) -> None:
    """Write atomically (temporary file, then rename)."""
    try:
        write_json_atomic(path, result)
    except OSError as exc:
        raise EvaluateError("cannot write %s: %s" % (path, exc))


def _fmt(value: Any, pattern: str) -> str:
    return "n/a" if value is None else pattern % value


def format_summary(result: Dict[str, Any]) -> str:
    return ("%s (%s, %s): %d images | mIoU %s | Dice %s | pixel acc %s | %s params | %s GMACs | "
            "latency %s ms (median) | score %s"
            % (os.path.basename(result["model"]), result["backend"], result["device"],
               result["images"], _fmt(result["miou"], "%.4f"), _fmt(result["dice"], "%.4f"),
               _fmt(result["pixel_acc"], "%.4f"),
               _fmt(None if result["params"] is None else result["params"] / 1e6, "%.2fM"),
               _fmt(result["gmacs"], "%.3f"), _fmt(result["latency_ms"], "%.2f"),
               _fmt(result["score"], "%.2f")))
