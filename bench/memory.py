"""Peak resident memory of the node process with each back end, and whether it loaded torch.

The node runs the default model with config/drone.yaml: with ONNX Runtime on the fp32 ONNX
file, with ONNX Runtime on its int8 version (``--int8 FILE``, or quantised here from the fp32
file on synthetic scenes: calibration quality does not change memory), and with PyTorch on the
checkpoint. The camera (test/ros_helpers.py) sends ``--frames``
512x512 frames; the node's peak resident set (VmHWM in /proc/<pid>/status) is read after the
last has been handled, and /proc/<pid>/maps says whether any libtorch library was mapped
(that is, whether torch was imported). The paper's node needed 3.7 GB of RAM plus 1 GB of swap
on a Jetson Nano; the target here is at most 400 MB with ONNX Runtime, torch not imported.

    .venv/bin/python bench/memory.py
    .venv/bin/python bench/memory.py --onnx MODEL.onnx --checkpoint MODEL.safetensors
    .venv/bin/python bench/memory.py --backends onnxruntime   # what the Jetson image runs

On a Jetson, docs/jetson.md says how to read the same figure with tegrastats.
"""
import argparse
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from node_graph import (TORCH_LIBRARY, MemorySampler, NodeGraph, mapped_libraries,  # noqa: E402
                        proc_memory_mb)
from report import Target, finish, fmt, markdown_table  # noqa: E402

MODELS = BENCH.parent / "models"
ONNX_TARGET_MB = 400.0
PAPER = "3.7 GB RAM + 1 GB swap (paper, PyTorch on a Jetson Nano)"


# row -> back end; the row names the model variant too
ROWS = {"onnxruntime fp32": "onnxruntime", "onnxruntime int8": "onnxruntime",
        "pytorch fp32": "pytorch"}
CALIBRATION_SCENES = 8


def quantized_copy(fp32_path: str, out_path: str) -> str:
    """An int8 (QDQ) version of ``fp32_path`` calibrated on synthetic scenes, for the memory
    row only (needs the training package and onnxruntime's quantiser)."""
    from lpcv_segmentation.runtime.segmenter import Segmenter, preprocess
    from training.export import check_scenes, quantize_int8
    fp32 = Segmenter(fp32_path)
    size, mean, std = fp32.input_size, fp32.metadata["mean"], fp32.metadata["std"]
    del fp32
    quantize_int8(fp32_path, out_path, [preprocess(rgb, size, mean, std)
                                        for rgb in check_scenes(CALIBRATION_SCENES, size)])
    return out_path


def measure(work: Path, model: str, backend: str, frames: int = 30, rate: float = 10.0,
            size: int = 512) -> Dict[str, object]:
    """Start the node on ``model``, send frames, read its memory and mapped libraries."""
    graph = NodeGraph(work, model, backend)
    with graph:
        started = proc_memory_mb(graph.node.pid)
        with MemorySampler(graph.node.pid) as sampler:
            graph.camera(frames, rate, width=size, height=size, frame_id="memory")
            counts = graph.settled_counts(timeout=60)
        after = proc_memory_mb(graph.node.pid)
        torch_libraries = mapped_libraries(graph.node.pid, TORCH_LIBRARY)
        values = graph.diagnostics() or {}
    return {"model": model, "backend": values.get("backend", backend),
            "rss_started_mb": started.get("rss"), "rss_after_mb": after.get("rss"),
            "peak_mb": max(after.get("hwm", 0.0), sampler.peak_mb),
            "torch_loaded": bool(torch_libraries), "torch_libraries": torch_libraries,
            "processed": counts["processed"], "node_exit_code": graph.node_exit_code}


def section(results: Dict[str, Optional[Dict[str, object]]], missing: Dict[str, str]
            ) -> Tuple[str, List[Target]]:
    rows, targets = [], []
    for backend, result in results.items():
        if result is None:
            rows.append([backend, "not available: %s missing" % missing[backend]] + ["-"] * 5)
            continue
        rows.append([backend, result["model"], fmt(result["rss_started_mb"], "%.0f"),
                     fmt(result["rss_after_mb"], "%.0f"), "**%.0f**" % result["peak_mb"],
                     "yes" if result["torch_loaded"] else "no", result["processed"]])
    onnx = results.get("onnxruntime fp32")
    if onnx is None:
        targets.append(Target("memory: node peak RSS with ONNX Runtime", "<= %.0f MB"
                              % ONNX_TARGET_MB, "not available: %s missing"
                              % missing.get("onnxruntime fp32"), None))
    else:
        targets.append(Target("memory: node peak RSS with ONNX Runtime",
                              "<= %.0f MB" % ONNX_TARGET_MB, "%.0f MB" % onnx["peak_mb"],
                              onnx["peak_mb"] <= ONNX_TARGET_MB))
        targets.append(Target("memory: torch imported by the ONNX Runtime node", "no",
                              "yes (%s)" % ", ".join(onnx["torch_libraries"])
                              if onnx["torch_loaded"] else "no", not onnx["torch_loaded"]))
    body = "\n\n".join([
        "MB = 10^6 bytes, from /proc/<pid>/status of the node process: RSS once started, RSS "
        "after the frames, peak (VmHWM). torch loaded = a libtorch library in /proc/<pid>/maps. "
        "For comparison: %s." % PAPER,
        markdown_table(["back end", "model", "RSS started (MB)", "RSS after frames (MB)",
                        "peak (MB)", "torch loaded", "frames processed"], rows),
    ])
    return body, targets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", default=str(MODELS / "default.onnx"),
                        help="model for the onnxruntime back end")
    parser.add_argument("--int8", default=None, metavar="FILE",
                        help="int8 ONNX model (default: quantise --onnx on synthetic scenes)")
    parser.add_argument("--checkpoint", default=str(MODELS / "default.safetensors"),
                        help="model for the pytorch back end")
    parser.add_argument("--backends", default=",".join(ROWS), metavar="ROWS",
                        help="comma-separated rows to measure, from: %s (default all)"
                             % ", ".join(ROWS))
    parser.add_argument("--frames", type=int, default=30, help="camera frames (512x512)")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate (Hz)")
    parser.add_argument("--work", default=None, help="folder for logs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.backends.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS and r not in set(ROWS.values())]
    if unknown:
        parser.error("--backends: unknown %s; choose from %s"
                     % (", ".join(unknown), ", ".join(ROWS)))
    rows = [r for r in ROWS if r in rows or ROWS[r] in rows]  # "onnxruntime" means both rows
    results: Dict[str, Optional[Dict[str, object]]] = {}
    missing: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        models = {"onnxruntime fp32": args.onnx, "pytorch fp32": args.checkpoint,
                  "onnxruntime int8": args.int8}
        if "onnxruntime int8" in rows and not args.int8 and Path(args.onnx).is_file():
            models["onnxruntime int8"] = quantized_copy(args.onnx, str(Path(tmp) / "int8.onnx"))
        for row in rows:
            model = models[row]
            if not model or not Path(model).is_file():
                results[row], missing[row] = None, model or "an int8 model"
                continue
            results[row] = measure(Path(args.work or tmp) / row.replace(" ", "_"), model,
                                   ROWS[row], args.frames, args.rate)
    body, targets = section(results, missing)
    return finish("Memory", body, targets, args.json, {"results": results})


if __name__ == "__main__":
    sys.exit(main())
