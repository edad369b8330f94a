"""Scoring a replay: paired (prediction, ground truth) frames -> accuracy, latency figures,
overlay panels and dumps; and the offline replay (the ``Segmenter`` on every frame, here).
Shared by both modes of ``python -m lpcv_segmentation.replay.bag_eval``."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from lpcv_segmentation.replay.bagio import CAMERA_TOPIC, GT_TOPIC, FrameReader
from lpcv_segmentation.core.classes import IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.metrics import SegmentationMetrics
from lpcv_segmentation.replay.panels import write_panel

__all__ = ["EvalError", "resolve_model", "latency_stats", "spread_indices", "FrameScorer",
           "evaluate_offline"]


class EvalError(RuntimeError):
    """The replay cannot run or finish (no model, the node did not start or died, ...)."""


def resolve_model(model: Optional[str]) -> str:
    """``model`` (a file or ``zoo:NAME``) or the shipped default model; EvalError naming the
    file when it is missing."""
    from lpcv_segmentation.node.config import default_model_path
    from lpcv_segmentation.zoo.cache import ZooError, resolve_model_path
    try:
        path = Path(resolve_model_path(model)) if model else default_model_path()
    except ZooError as error:
        raise EvalError(str(error))
    if not path.is_file():
        hint = ("" if model else "; build it with `python -m training default-model` "
                "or pass --model")
        raise EvalError("no model file at %s%s" % (path, hint))
    return str(path)


def latency_stats(values_ms: Sequence[float]) -> Optional[Dict[str, float]]:
    """{"p50", "p95", "max", "mean"} in ms, or None for no values."""
    if not len(values_ms):
        return None
    values = np.asarray(values_ms, dtype=np.float64)
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "max": round(float(values.max()), 3), "mean": round(float(values.mean()), 3)}


def spread_indices(total: int, count: int) -> List[int]:
    """``count`` frame indices spread evenly over ``total`` frames (first and last included)."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted(set(int(round(i)) for i in np.linspace(0, total - 1, count)))


class FrameScorer:
    """Accumulates accuracy over paired (prediction, ground truth) frames and writes the
    optional per-frame outputs: overlay panels, and prediction/label PNGs for the scorer."""

    def __init__(self, overlays_dir: Optional[Path] = None, overlay_indices: Sequence[int] = (),
                 dump_dir: Optional[Path] = None) -> None:
        self.metrics = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
        self.scored = 0
        self.without_gt = 0
        self.size_mismatch = 0
        self.overlays_dir = overlays_dir
        self.overlay_indices = set(overlay_indices)
        self.overlays: List[str] = []
        self.dump_dir = dump_dir
        if dump_dir is not None:
            (dump_dir / "pred").mkdir(parents=True, exist_ok=True)
            (dump_dir / "gt").mkdir(parents=True, exist_ok=True)
        if overlays_dir is not None:
            overlays_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def frame_name(index: int) -> str:
        return "frame_%06d.png" % index

    def add(self, index: int, pred: np.ndarray, gt: Optional[np.ndarray],
            rgb: Optional[np.ndarray] = None) -> bool:
        """Score one frame; False (counted, not scored) when it has no usable ground truth."""
        if gt is None:
            self.without_gt += 1
            return False
        if pred.shape != gt.shape:
            self.size_mismatch += 1
            return False
        self.metrics.update(pred, gt)
        self.scored += 1
        name = self.frame_name(index)
        if self.dump_dir is not None:
            cv2.imwrite(str(self.dump_dir / "pred" / name), pred)
            cv2.imwrite(str(self.dump_dir / "gt" / name), gt)
        if self.overlays_dir is not None and index in self.overlay_indices and rgb is not None:
            path = self.overlays_dir / name
            if not write_panel(path, rgb, gt, pred, "#%d" % index):
                raise EvalError("cannot write overlay %s" % path)
            self.overlays.append(str(path))
        return True

    def summary(self) -> Dict[str, object]:
        result = self.metrics.summary()
        return {"miou": result["miou"], "dice": result["dice"], "pixel_acc": result["pixel_acc"],
                "per_class_iou": result["per_class_iou"], "scored_frames": self.scored,
                "frames_without_gt": self.without_gt,
                "frames_size_mismatch": self.size_mismatch,
                "overlays": sorted(self.overlays)}


def evaluate_offline(bag: Path, model: Optional[str] = None, backend: str = "auto",
                     device: str = "cpu", precision: str = "fp32",
                     threads: Optional[int] = None, camera_topic: str = CAMERA_TOPIC,
                     gt_topic: str = GT_TOPIC, overlays_dir: Optional[Path] = None,
                     overlay_count: int = 4, dump_dir: Optional[Path] = None,
                     progress: bool = True, upsample: Optional[str] = None) -> Dict[str, object]:
    """Accuracy and model latency of ``model`` on every frame of ``bag`` (``upsample``: how a
    strided model's logits are upsampled, ``Segmenter``'s setting)."""
    from tqdm import tqdm

    from lpcv_segmentation.runtime.segmenter import RuntimeConfigError, Segmenter

    reader = FrameReader(bag, camera_topic, gt_topic)
    model_path = resolve_model(model)
    try:
        segmenter = Segmenter(model_path, backend=backend, device=device, precision=precision,
                              threads=threads, upsample=upsample)
    except RuntimeConfigError as error:
        raise EvalError("cannot load model %s: %s" % (model_path, error)) from None
    segmenter.warmup()
    scorer = FrameScorer(overlays_dir, spread_indices(len(reader), overlay_count), dump_dir)
    total_ms: List[float] = []
    inference_ms: List[float] = []
    frames = 0
    for frame in tqdm(reader, total=len(reader), desc="bag_eval offline", unit="frame",
                      disable=not progress):
        result = segmenter.segment(frame.rgb)
        frames += 1
        total_ms.append(sum(result.timings_ms.values()))
        inference_ms.append(result.timings_ms["inference"])
        scorer.add(frame.index, result.labels, frame.gt, frame.rgb)
    report: Dict[str, object] = {
        "mode": "offline", "bag": str(bag), "model": model_path,
        "backend": segmenter.backend_name, "device": segmenter.device,
        "precision": segmenter.precision, "input_size": segmenter.input_size,
        "frames": frames, "frames_out": frames, "dropped": 0, "rejected": 0, "lost": 0,
        "unpaired_gt": reader.unpaired_gt,
        "latency_ms": latency_stats(total_ms), "inference_ms": latency_stats(inference_ms),
        "latency_note": "model only: pre-processing + inference + post-processing per frame",
    }
    report.update(scorer.summary())
    return report
