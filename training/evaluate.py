"""Evaluate a model file on a dataset split: accuracy, cost, latency and the challenge score.

  python -m training evaluate --checkpoint MODEL --data DIR --split val --json OUT.json \\
      [--overlays N] [--backend auto] [--device cpu] [--precision fp32] [--upsample labels|logits]

MODEL is anything ``lpcv_segmentation.runtime.segmenter.Segmenter`` runs: a ``.safetensors``
checkpoint, an exported ``.onnx`` file or a TensorRT ``.engine``. Every image goes through
the same ``Segmenter.segment`` the drone uses (resize to the model input, back end, argmax,
nearest resize back to the image size), so the figures score what would fly. A model whose
logits are at a stride (metadata ``output_stride``) is upsampled as ``--upsample`` says
(labels: argmax then nearest; logits: bilinear logits then argmax; default: the model's own
setting, else labels; docs/runtime.md).

The JSON holds:
  miou, per_class_iou, pixel_acc  dataset-level confusion matrix (the paper's figures)
  class_images                    per class, the images whose labels hold it: how many
                                  images its IoU rests on
  dice                            the challenge's accuracy: per-image mean Dice, averaged
  params, gmacs                   from the model (checkpoint) or the file's metadata (ONNX)
  latency_ms                      median forward time per image after warm-up (the back
                                  end's inference step; synchronised on CUDA)
  score                           dice / (latency_ms / 1000), the challenge's score
  postprocess_ms                  median post-processing time per image (argmax and the resize
                                  to the image size; upsampling the logits costs here)
  plus latency_mean_ms, backend, device, precision, input_size, output_stride, upsample,
  images, model, data, split.

With --overlays N the first N images are also written as PNGs ``image | label |
prediction`` in the class colours, with a legend of the classes shown.
"""
import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lpcv_segmentation.core.classes import IGNORE_INDEX
from lpcv_segmentation.core.fileio import write_json_atomic
from lpcv_segmentation.core.formatting import fmt
from lpcv_segmentation.core.metrics import SegmentationMetrics
from lpcv_segmentation.runtime.segmenter import UPSAMPLING
from lpcv_segmentation.replay.panels import MIN_PANEL_WIDTH, overlay_panel, write_panel  # noqa: F401

WARMUP_DEFAULT = 3


@dataclass(frozen=True)
class Runtime:
    """How ``evaluate`` runs the model: the Segmenter's back end, device, precision and
    threads (None: the back end's own), the untimed warm-up passes before timing, and how a
    strided model's logits are upsampled (``Segmenter``'s ``upsample``)."""
    backend: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    threads: Optional[int] = None
    warmup: int = WARMUP_DEFAULT
    upsample: Optional[str] = None  # strided logits: "labels" or "logits" (None: the model's)


class EvaluateError(RuntimeError):
    """Nothing to evaluate or an output that cannot be written; the message names it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="MODEL",
                        help="model file: .safetensors checkpoint, .onnx or TensorRT .engine, or "
                        "zoo:NAME (python -m lpcv_segmentation.zoo)")
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
    parser.add_argument("--upsample", choices=UPSAMPLING, default=None,
                        help="for a model with strided logits (metadata output_stride): labels "
                             "(argmax at the stride, nearest resize) or logits (bilinear resize "
                             "of the logits, then argmax); default: the model's own, else labels")


def main(args: argparse.Namespace) -> int:
    from lpcv_segmentation.runtime.segmenter import RuntimeConfigError
    from training.data import DatasetError

    try:
        runtime = Runtime(args.backend, args.device, args.precision, args.threads, args.warmup,
                          args.upsample)
        result = evaluate(args.checkpoint, args.data, args.split, runtime, limit=args.limit,
                          overlays=args.overlays,
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
    model = getattr(segmenter.runner, "model", None)
    if model is not None:
        from lpcv_segmentation.model.cost import count_macs, count_params
        return count_params(model), round(count_macs(model, segmenter.input_size), 4)
    meta = segmenter.metadata
    params = meta.get("params")
    gmacs = meta.get("gmacs")
    return (None if params is None else int(params)), (None if gmacs is None else float(gmacs))


# --------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------
def write_overlay(path: Path, image: np.ndarray, label: np.ndarray,
                  prediction: np.ndarray) -> None:
    if not write_panel(path, image, label, prediction):
        raise EvaluateError("cannot write overlay %s" % path)


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------
def evaluate(model_path: str, data: str, split: str = "val", runtime: Runtime = Runtime(),
             limit: Optional[int] = None, overlays: int = 0, overlay_dir: Optional[str] = None,
             progress: bool = True) -> Dict[str, Any]:
    """Run ``model_path`` over a split with ``Segmenter`` as ``runtime`` says and return the
    JSON-ready results."""
    from tqdm import tqdm

    from lpcv_segmentation.runtime.segmenter import Segmenter
    from lpcv_segmentation.zoo import ZooError, resolve_model_path
    from training.data import find_pairs, read_image, read_label, validate_pairs

    try:
        model_path = resolve_model_path(model_path)  # zoo:NAME -> the cached file
    except ZooError as error:
        raise EvaluateError(str(error))
    pairs = find_pairs(data, split)
    if limit is not None:
        if limit < 1:
            raise EvaluateError("--limit must be >= 1, got %d" % limit)
        pairs = pairs[:limit]
    validate_pairs(pairs, progress=progress)
    segmenter = Segmenter(model_path, backend=runtime.backend, device=runtime.device,
                          precision=runtime.precision, threads=runtime.threads,
                          upsample=runtime.upsample)
    if overlays and overlay_dir:
        os.makedirs(overlay_dir, exist_ok=True)
    segmenter.warmup(runtime.warmup)
    metrics = SegmentationMetrics(segmenter.num_classes, IGNORE_INDEX)
    inference_ms: List[float] = []
    postprocess_ms: List[float] = []
    for index, (image_path, label_path) in enumerate(tqdm(pairs, desc="evaluate", unit="img",
                                                          disable=not progress)):
        image = read_image(image_path)
        label = read_label(label_path)
        result = segmenter.segment(image)
        metrics.update(result.labels, label)
        inference_ms.append(result.timings_ms["inference"])
        postprocess_ms.append(result.timings_ms["postprocess"])
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
        "postprocess_ms": statistics.median(postprocess_ms),
        "score": None if dice is None or latency <= 0 else dice / (latency / 1000.0),
        "images": summary["images"],
        "class_images": summary["class_images"],
        "backend": segmenter.backend_name,
        "device": segmenter.device,
        "precision": segmenter.precision,
        "input_size": segmenter.input_size,
        "output_stride": segmenter.output_stride,
        "upsample": segmenter.upsample if segmenter.output_stride > 1 else None,
        "warmup": runtime.warmup,
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


def format_summary(result: Dict[str, Any]) -> str:
    return ("%s (%s, %s): %d images | mIoU %s | Dice %s | pixel acc %s | %s params | %s GMACs | "
            "latency %s ms (median) | score %s"
            % (os.path.basename(result["model"]), result["backend"], result["device"],
               result["images"], fmt(result["miou"], "%.4f"), fmt(result["dice"], "%.4f"),
               fmt(result["pixel_acc"], "%.4f"),
               fmt(None if result["params"] is None else result["params"] / 1e6, "%.2fM"),
               fmt(result["gmacs"], "%.3f"), fmt(result["latency_ms"], "%.2f"),
               fmt(result["score"], "%.2f")))
