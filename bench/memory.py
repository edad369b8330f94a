"""Peak resident memory of the node process with each back end, and whether it loaded torch.

The node runs the default model with config/drone.yaml: once with ONNX Runtime on the ONNX
file, once with PyTorch on the checkpoint. The camera (test/ros_helpers.py) sends ``--frames``
512x512 frames; the node's peak resident set (VmHWM in /proc/<pid>/status) is read after the
last has been handled, and /proc/<pid>/maps says whether any libtorch library was mapped
(that is, whether torch was imported). The paper's node needed 3.7 GB of RAM plus 1 GB of swap
on a Jetson Nano; the target here is at most 400 MB with ONNX Runtime, torch not imported.

    .venv/bin/python bench/memory.py
    .venv/bin/python bench/memory.py --onnx MODEL.onnx --checkpoint MODEL.safetensors
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
    onnx = results.get("onnxruntime")
    if onnx is None:
        targets.append(Target("memory: node peak RSS with ONNX Runtime", "<= %.0f MB"
                              % ONNX_TARGET_MB, "not available: %s missing"
                              % missing.get("onnxruntime"), None))
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
    parser.add_argument("--checkpoint", default=str(MODELS / "default.safetensors"),
                        help="model for the pytorch back end")
    parser.add_argument("--frames", type=int, default=30, help="camera frames (512x512)")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate (Hz)")
    parser.add_argument("--work", default=None, help="folder for logs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    models = {"onnxruntime": args.onnx, "pytorch": args.checkpoint}
    results: Dict[str, Optional[Dict[str, object]]] = {}
    missing: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        for backend, model in models.items():
            if not Path(model).is_file():
                results[backend], missing[backend] = None, model
                continue
            results[backend] = measure(Path(args.work or tmp) / backend, model, backend,
                                       args.frames, args.rate)
    body, targets = section(results, missing)
    return finish("Memory", body, targets, args.json, {"results": results})


if __name__ == "__main__":
    sys.exit(main())
