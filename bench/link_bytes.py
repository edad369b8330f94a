"""Bytes per frame over a radio link: the mask raw and as PNG, the confidence, and the JSON.

Masks: a synthetic disaster scene (``training.synth.render_scene``, seeds 0..N-1) labelled at
the model's resolution and resized (nearest) to the frame, which is what the node's mask is
(the prediction at the model's size, scaled back to the camera's), and the shipped model's own
prediction on that scene (noisier edges). For each frame size: ``sensor_msgs/Image`` mono8
(the pixels), the lossless PNG of ``<mask_topic>/compressed`` at zlib levels 1 (the default)
and 9 with its encoding time, the confidence (mono8 raw and PNG), the detections JSON with
ground positions and tracks, and the GeoJSON of the tracked objects. Medians over the seeds.

    .venv/bin/python bench/link_bytes.py
    .venv/bin/python bench/link_bytes.py --sizes 640x480 --scenes 2 --no-model
"""
import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import cv2
import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
from lpcv_segmentation.core.classes import DETECTION_CLASS_IDS  # noqa: E402
from lpcv_segmentation.core.detections import detection_report  # noqa: E402
from lpcv_segmentation.core.timing import timed  # noqa: E402
from lpcv_segmentation.node.config import PARAMETERS, ground_config  # noqa: E402
from lpcv_segmentation.node.ground import GroundSide  # noqa: E402
from lpcv_segmentation.node.link import confidence_mono8, encode_mask_png  # noqa: E402
from report import finish, markdown_table  # noqa: E402

DEFAULT_MODEL = BENCH.parent / "models" / "default.onnx"
SIZES = ("640x480", "1920x1080")
MODEL_SIZE = 512  # the synthetic labels' resolution, as the shipped model predicts


def ground_json(labels: np.ndarray, confidence: Optional[np.ndarray]) -> Dict[str, int]:
    """Bytes of the detections JSON (with ground positions and tracks) and of the GeoJSON,
    as the node builds them: a nadir camera at 50 m with a 70-degree horizontal view."""
    height, width = labels.shape
    values = {spec.name: spec.default for spec in PARAMETERS}
    side = GroundSide(ground_config(dict(values, track_min_frames=1)))
    stamp = SimpleNamespace(sec=100, nanosec=0)
    side.telemetry.add_fix(SimpleNamespace(header=SimpleNamespace(stamp=stamp), latitude=47.37,
                                           longitude=8.54, altitude=500.0,
                                           status=SimpleNamespace(status=0)))
    side.telemetry.add_rel_alt(50.0, 100 * 10 ** 9)
    side.telemetry.add_heading(0.0, 100 * 10 ** 9)
    fx = width / 2.0 / np.tan(np.radians(35.0))
    info = SimpleNamespace(k=[fx, 0, width / 2.0, 0, fx, height / 2.0, 0, 0, 1], width=width,
                           height=height)
    report = detection_report(labels, 100, 0, "camera", DETECTION_CLASS_IDS, 64, confidence,
                              max_side=MODEL_SIZE)
    side.locate(report, info)
    side.track(report)
    return {"detections_json": len(json.dumps(report)),
            "geojson": len(json.dumps(side.geojson(report))),
            "regions": len(report["detections"])}


def measure(labels: np.ndarray, confidence: Optional[np.ndarray]) -> Dict[str, float]:
    height, width = labels.shape
    row: Dict[str, float] = {"raw": labels.size}
    for level in (1, 9):
        row["png%d" % level] = len(encode_mask_png(labels, level))
        row["png%d_ms" % level] = timed(lambda: encode_mask_png(labels, level), 5, 1).median_ms
    if confidence is not None:
        mono8 = confidence_mono8(confidence, (width, height))
        row["confidence_raw"] = mono8.size
        row["confidence_png"] = len(encode_mask_png(mono8, 1))
    row.update(ground_json(labels, confidence))
    return row


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    from training.synth import render_scene
    segmenter = None
    if args.model and Path(args.model).is_file():
        from lpcv_segmentation.runtime.segmenter import Segmenter
        segmenter = Segmenter(args.model, backend="onnxruntime")
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        per_source: Dict[str, List[Dict[str, float]]] = {"synthetic label": [],
                                                         "model prediction": []}
        for seed in range(args.scenes):
            rgb, label = render_scene(seed, MODEL_SIZE)
            labels = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
            per_source["synthetic label"].append(measure(labels, None))
            if segmenter is not None:
                frame = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
                result = segmenter.segment(frame, with_confidence=True, confidence_at_logits=True)
                per_source["model prediction"].append(measure(result.labels, result.confidence))
        for source, measured in per_source.items():
            if not measured:
                continue
            keys = set.intersection(*(set(m) for m in measured))
            row = {k: statistics.median(m[k] for m in measured) for k in keys}
            rows.append(dict(row, size=size, source=source, scenes=len(measured)))
            print("%s %s: %s" % (size, source, row), file=sys.stderr, flush=True)
    return rows


def section(rows: List[Dict[str, object]], args: argparse.Namespace) -> str:
    def kb(row, key):
        return "-" if key not in row else "%.1f" % (row[key] / 1024.0)

    table = [[row["size"], row["source"], kb(row, "raw"), kb(row, "png1"),
              "%.1f" % row["png1_ms"], kb(row, "png9"), "%.1f" % row["png9_ms"],
              "%.0fx" % (row["raw"] / row["png1"]), kb(row, "confidence_raw"),
              kb(row, "confidence_png"), kb(row, "detections_json"), kb(row, "geojson"),
              "%.0f" % row["regions"]] for row in rows]
    return "\n\n".join([
        "KiB per frame, medians over %d synthetic scenes (`training.synth`, labels at %d px "
        "resized to the frame; the prediction is the shipped model's, %s). PNG: "
        "`<mask_topic>/compressed` (lossless, OpenCV), encoding time in ms on this machine. "
        "JSON: `seg/detections` with ground positions and tracks (a nadir camera at 50 m, "
        "70-degree view), and `seg/detections_geojson`." % (
            args.scenes, MODEL_SIZE, Path(args.model).name if args.model else "not run"),
        markdown_table(["frame", "mask", "raw mono8", "PNG level 1", "ms", "PNG level 9", "ms",
                        "raw / PNG 1", "confidence raw", "confidence PNG", "detections JSON",
                        "GeoJSON", "regions"], table)])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), metavar="WxH")
    parser.add_argument("--scenes", type=int, default=5, help="synthetic scenes per size")
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="model whose predictions are measured too")
    parser.add_argument("--no-model", dest="model", action="store_const", const="",
                        help="synthetic labels only")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    rows = run(args)
    return finish("Radio link: bytes per frame", section(rows, args), [], args.json,
                  {"rows": rows})


if __name__ == "__main__":
    sys.exit(main())
