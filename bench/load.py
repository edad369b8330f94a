"""Sustained load: a camera publishing 512x512 frames at 30 Hz for 60 s to a slower model.

The node runs with config/drone.yaml (best-effort input, colour and overlay published) in a
ROS domain of its own; the camera and a listener (test/ros_helpers.py) are separate
processes. Measured, with the large-frame Fast DDS profile and without it:
- end-to-end latency (frame stamp to the mask's arrival at the listener), p95 over the frames
  stamped in the first and in the last ``--window`` seconds, and their ratio;
- the node's resident memory (VmRSS, sampled every 0.25 s from /proc): mean over the last
  window minus mean over the first, and the peak (VmHWM);
- the node's counters: every frame that reached it must end processed, dropped (replaced by
  a newer one before the model was free) or rejected;
- the share of published frames that reached the node at all.

    .venv/bin/python bench/load.py                      # 60 s with the profile, 30 s without
    .venv/bin/python bench/load.py --checkpoint models/default.safetensors --input-size 512
    .venv/bin/python bench/load.py --duration 10 --no-profile-duration 0 --model MODEL.onnx
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from node_graph import (MemorySampler, NodeGraph, NodeGraphError,  # noqa: E402
                        counters, is_balanced, percentile, proc_memory_mb)
from report import Target, finish, fmt, markdown_table, ratio  # noqa: E402

DEFAULT_MODEL = BENCH.parent / "models" / "default.onnx"
P95_RATIO_TARGET = 1.2
MEMORY_GROWTH_TARGET_MB = 20.0


def run_load(work: Path, model: str, backend: str = "onnxruntime", size: int = 512,
             rate: float = 30.0, duration: float = 60.0, window: float = 10.0,
             profile: bool = True, params: Optional[Dict[str, object]] = None
             ) -> Dict[str, object]:
    """One sustained run; the figures described in the module docstring."""
    count = max(1, int(round(rate * duration)))
    graph = NodeGraph(work, model, backend, params=params, profile=profile)
    with graph:
        with MemorySampler(graph.node.pid) as memory:
            sent = graph.camera(count, rate, width=size, height=size, frame_id="load",
                                timeout=duration * 2 + 120)
            try:
                counts = graph.settled_counts(timeout=30)
                balanced = True
            except NodeGraphError:  # a counter that never balances is a finding, not a crash
                values = graph.diagnostics()
                counts = counters(values) if values else None
                balanced = False
        alive = graph.node_alive()
        peak_mb = max(memory.peak_mb, proc_memory_mb(graph.node.pid).get("hwm", 0.0))
        masks = [e for e in graph.events("mask") if e.get("frame_id") == "load"]
        diagnostics = graph.diagnostics() or {}
    stamps = [s + ns * 1e-9 for s, ns in sent["stamps"]]
    first_begin, last_end = stamps[0], stamps[-1]

    def latencies(begin: float, end: float) -> List[float]:
        return [1000.0 * (e["received"] - (e["stamp"][0] + e["stamp"][1] * 1e-9)) for e in masks
                if begin <= e["stamp"][0] + e["stamp"][1] * 1e-9 <= end]

    first = latencies(first_begin, first_begin + window)
    last = latencies(last_end - window, last_end)
    rss_first = memory.between(first_begin, first_begin + window)
    rss_last = memory.between(last_end - window, last_end)
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    span = max(last_end - first_begin, 1e-3)
    return {
        "profile": profile, "size": size, "rate_hz": rate, "duration_s": duration,
        "window_s": window, "sent": sent["sent"], "counters": counts, "balanced": balanced,
        "node_alive_after": alive, "node_exit_code": graph.node_exit_code,
        "node_exit_log": graph.exit_log_tail,
        "masks_received": len(masks),
        "output_rate_hz": (counts["processed"] / span) if counts else None,
        "p95_first_ms": percentile(first, 95), "p95_last_ms": percentile(last, 95),
        "frames_first": len(first), "frames_last": len(last),
        "rss_first_mb": mean(rss_first), "rss_last_mb": mean(rss_last), "peak_rss_mb": peak_mb,
        "node_inference_p50_ms": _float(diagnostics.get("latency_inference_p50_ms")),
        "backend": diagnostics.get("backend", backend),
    }


def _float(text: Optional[str]) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def targets_of(result: Dict[str, object]) -> List[Target]:
    """The issue's targets for one run."""
    counts = result["counters"]
    p95_ratio = ratio(result["p95_last_ms"], result["p95_first_ms"])
    growth = (None if result["rss_last_mb"] is None or result["rss_first_mb"] is None
              else result["rss_last_mb"] - result["rss_first_mb"])
    tag = "profile" if result["profile"] else "no profile"
    slower = result["output_rate_hz"] is not None and result["output_rate_hz"] < result["rate_hz"]
    return [
        Target("load (%s): model slower than the camera" % tag, "< %g Hz" % result["rate_hz"],
               "%s Hz processed" % fmt(result["output_rate_hz"]), slower if counts else None),
        Target("load (%s): end-to-end p95, last %gs / first %gs" % (tag, result["window_s"],
                                                                    result["window_s"]),
               "<= %.2fx" % P95_RATIO_TARGET,
               "%s (%s / %s ms)" % (fmt(p95_ratio, "%.2fx"), fmt(result["p95_last_ms"], "%.0f"),
                                    fmt(result["p95_first_ms"], "%.0f")),
               None if p95_ratio is None else p95_ratio <= P95_RATIO_TARGET),
        Target("load (%s): resident memory growth" % tag, "< %g MB" % MEMORY_GROWTH_TARGET_MB,
               "%s MB (%s -> %s)" % (fmt(growth, "%+.1f"), fmt(result["rss_first_mb"], "%.0f"),
                                     fmt(result["rss_last_mb"], "%.0f")),
               None if growth is None else growth < MEMORY_GROWTH_TARGET_MB),
        Target("load (%s): every frame that reached the node processed, dropped or rejected"
               % tag, "received == processed + dropped + rejected",
               "-" if not counts else "%(received)d = %(processed)d + %(dropped)d + %(rejected)d"
               % counts, bool(counts) and result["balanced"] and is_balanced(counts)),
        Target("load (%s): node up throughout" % tag, "alive",
               "alive" if result["node_alive_after"] else "exited",
               bool(result["node_alive_after"])),
        Target("load (%s): clean exit on SIGINT afterwards" % tag, "exit code 0",
               "exit code %s" % result["node_exit_code"], result["node_exit_code"] == 0),
    ]


def section(results: List[Dict[str, object]], model: str) -> Tuple[str, List[Target]]:
    rows, targets = [], []
    for r in results:
        counts = r["counters"] or {}
        received = counts.get("received")
        rows.append([
            "with" if r["profile"] else "without", "%gs" % r["duration_s"], r["sent"],
            fmt(received, "%d"), fmt(ratio(100.0 * (received or 0), r["sent"]), "%.1f%%")
            if received is not None else "-",
            fmt(counts.get("processed"), "%d"), fmt(counts.get("dropped"), "%d"),
            fmt(counts.get("rejected"), "%d"), fmt(r["output_rate_hz"], "%.1f"),
            fmt(r["p95_first_ms"], "%.0f"), fmt(r["p95_last_ms"], "%.0f"),
            fmt(ratio(r["p95_last_ms"], r["p95_first_ms"]), "%.2fx"),
            fmt(r["rss_first_mb"], "%.0f"), fmt(r["rss_last_mb"], "%.0f"),
            fmt(r["peak_rss_mb"], "%.0f")])
        # Without the profile few frames arrive, so only the accounting is a target there.
        targets += targets_of(r) if r["profile"] else targets_of(r)[3:]
    exits = ["The node (%s the profile) exited with code %s after SIGINT; its log ends:\n\n"
             "```\n%s\n```" % ("with" if r["profile"] else "without", r["node_exit_code"],
                               r["node_exit_log"]) for r in results if r.get("node_exit_log")]
    first = results[0]
    body = "\n\n".join([
        "Model %s (%s back end), camera %dx%d rgb8 at %g Hz, best-effort QoS, drone.yaml "
        "outputs; latency = frame stamp to the mask's arrival at a listener process; p95 over "
        "the frames stamped in the first and last %gs." % (
            model, first["backend"], first["size"], first["size"], first["rate_hz"],
            first["window_s"]),
        markdown_table(["DDS profile", "run", "published", "reached node", "share", "processed",
                        "dropped", "rejected", "output Hz", "p95 first (ms)", "p95 last (ms)",
                        "p95 last/first", "RSS first (MB)", "RSS last (MB)", "peak RSS (MB)"],
                       rows),
    ] + (["Without the profile only the accounting and the share are targets: many frames "
          "never reach the node, so its latency and memory say little there."]
         if any(not r["profile"] for r in results) else []) + exits)
    return body, targets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model file for the node")
    parser.add_argument("--checkpoint", default=str(BENCH.parent / "models" /
                                                    "default.safetensors"),
                        help="with --input-size: the checkpoint to export at that size")
    parser.add_argument("--input-size", type=int, default=None,
                        help="run the model at this input size: --checkpoint exported to "
                             "ONNX (cached in runs/bench_cache/) instead of --model")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--size", type=int, default=512, help="camera frame width and height")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of camera frames with the DDS profile")
    parser.add_argument("--no-profile-duration", type=float, default=30.0,
                        help="seconds without the DDS profile (0: skip that run)")
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds at the start and end compared")
    parser.add_argument("--work", default=None, help="folder for logs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    model = args.model
    if args.input_size:
        if not Path(args.checkpoint).is_file():
            print("not available: %s missing" % args.checkpoint)
            return 2
        from backends_default import fp32_onnx
        model, _ = fp32_onnx(args.checkpoint, args.input_size)
    elif not Path(model).is_file():
        print("not available: %s missing" % model)
        return 2
    runs = [(True, args.duration)]
    if args.no_profile_duration > 0:
        runs.append((False, args.no_profile_duration))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        work = Path(args.work or tmp)
        for profile, duration in runs:
            started = time.monotonic()
            print("load: %s the DDS profile, %gs ..." % ("with" if profile else "without",
                                                         duration), file=sys.stderr, flush=True)
            results.append(run_load(work / ("profile" if profile else "no_profile"), model,
                                    args.backend, args.size, args.rate, duration, args.window,
                                    profile))
            results[-1]["wall_s"] = time.monotonic() - started
    body, targets = section(results, model if not args.input_size else "%s exported at %d px (%s)"
                            % (args.checkpoint, args.input_size, model))
    return finish("Load", body, targets, args.json, {"results": results})


if __name__ == "__main__":
    sys.exit(main())
