"""The exported graph: timm's MobileViT blocks vs the export-friendly rewrite vs the LPCV 2023
2nd-place network (the peer), in ONNX Runtime on the CPU, 1 and 2 threads, interleaved.

Models, all timed on their own input size (pre-processed input, forward pass only):
  default, timm graph      the checkpoint (models/default.safetensors) exported with
                           ``python -m training export --timm-mobilevit`` (the graph before)
  default, rewrite         the same checkpoint exported as ``training export`` now does
                           (training/mobilevit_export.py swapped in)
  default, rewrite + ORT   that file with ONNX Runtime's graph optimisations (extended level)
                           saved into it: whether saving them helps (and that it still loads)
  encoder, timm / rewrite  the MobileViT encoder alone at the checkpoint's input size (timm
                           features_only, random weights, a 1x1 classifier on its last stage):
                           the encoder's own share of the gap to the peer
  peer                     the peer's file as published (logits at stride 8: no upsampling)
  peer, imported           ``python -m training import-onnx`` of it (bilinear upsampling of
                           the logits to 288 px appended, as every model here gives logits)

Each model gets an ONNX Runtime session set up as ``lpcv_segmentation.runtime.segmenter`` sets it up
(all graph optimisations, N intra-op threads, 1 inter-op thread); every round times each model
once, in turn (bench/common.py), so the machine's load touches all alike. Medians of wall
clock and of the process's CPU time per call; ratios to the peer are the figures to read.
With --profile, ONNX Runtime's profiler (1 thread, the models taking turns run by run) gives
each operator type's time: the sum over the graph's nodes of each node's median kernel time
over the profiled runs (medians, so that a run the scheduler interrupted does not count).

    .venv/bin/python bench/export_graph.py \
        --peer ../shared/peers/lpcv2023_2nd_topformer_tiny_288.onnx --profile
    .venv/bin/python bench/export_graph.py --threads 1 --rounds 20 --profile --markdown out.md

Without a peer file the peer rows are left out (and the ratios with them).
"""
import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
from common import load_average, set_threads  # noqa: E402
from lpcv_segmentation.core.timing import interleaved  # noqa: E402
from report import Target, finish, fmt, markdown_table, ratio  # noqa: E402

PEER_FILE = "lpcv2023_2nd_topformer_tiny_288.onnx"
DEFAULT_PEER = ROOT.parent / "shared" / "peers" / PEER_FILE
PEER_SIZE = 288
PEER_MEAN_255 = (123.675, 116.28, 103.53)
PEER_STD_255 = (58.395, 57.12, 57.375)
TARGET_RATIO = 2.0  # the default model at most 2x the peer's latency, 1 thread
ENCODER_CLASSES = 14


def ort_session(path: str, threads: int, profile_prefix: str = "") -> Any:
    """An ONNX Runtime CPU session configured like ``OnnxRuntimeBackend``."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _input(session: Any) -> Tuple[str, np.ndarray]:
    info = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in info.shape]
    return info.name, np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def encoder_onnx(arch: str, size: int, path: str, timm_graph: bool) -> None:
    """The encoder-alone model: timm features, a 1x1 classifier on the last stage."""
    import onnx
    import timm
    import torch

    from training.export import model_to_onnx

    class EncoderOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = timm.create_model(arch, pretrained=False, features_only=True,
                                             out_indices=(1, 2, 3, 4))
            self.classifier = torch.nn.Conv2d(self.encoder.feature_info.channels()[-1],
                                              ENCODER_CLASSES, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.encoder(x)[-1])

    torch.manual_seed(0)
    onnx.save(model_to_onnx(EncoderOnly().eval(), size, timm_mobilevit=timm_graph), path)


def save_ort_optimised(src: str, dst: str) -> None:
    """``src`` with ONNX Runtime's extended-level optimisations saved (no layout/NCHWc ones,
    which are specific to the CPU they ran on), checked to load in a plain CPU session."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = dst
    ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def prepare(args: argparse.Namespace, work: str) -> Dict[str, str]:
    """{row name: ONNX file} of every model compared."""
    from lpcv_segmentation.model.checkpoint import read_metadata
    from training.export import OnnxGraph, export_onnx
    files: Dict[str, str] = {}
    meta = read_metadata(args.checkpoint)
    size = int(args.input_size or meta["input_size"])
    for name, timm_graph in (("default, timm graph", True), ("default, rewrite", False)):
        path = os.path.join(work, "default_%s.onnx" % ("timm" if timm_graph else "rewrite"))
        print("exporting %s (%s) ..." % (args.checkpoint, name), file=sys.stderr, flush=True)
        export_onnx(args.checkpoint, path, input_size=size, verify_images=1,
                    graph=OnnxGraph(timm_mobilevit=timm_graph))
        files[name] = path
    files["default, rewrite + ORT"] = os.path.join(work, "default_rewrite_ort.onnx")
    save_ort_optimised(files["default, rewrite"], files["default, rewrite + ORT"])
    for name, timm_graph in (("encoder, timm graph", True), ("encoder, rewrite", False)):
        path = os.path.join(work, "encoder_%s.onnx" % ("timm" if timm_graph else "rewrite"))
        print("exporting the %s encoder alone (%s) ..." % (meta["arch"], name), file=sys.stderr,
              flush=True)
        encoder_onnx(meta["arch"], size, path, timm_graph)
        files[name] = path
    if args.peer:
        from training.import_onnx import import_onnx
        files["peer"] = args.peer
        files["peer, imported"] = os.path.join(work, "peer_imported.onnx")
        import_onnx(args.peer, files["peer, imported"], PEER_SIZE, PEER_MEAN_255, PEER_STD_255,
                    "lpcv", 255.0, 8)
    return files


def check_outputs(files: Dict[str, str]) -> Dict[str, float]:
    """Largest |logit difference| of each rewritten file against its timm-graph twin."""
    out = {}
    pairs = [("default, rewrite", "default, timm graph"),
             ("default, rewrite + ORT", "default, timm graph"),
             ("encoder, rewrite", "encoder, timm graph")]
    for new, old in pairs:
        a, b = ort_session(files[new], 1), ort_session(files[old], 1)
        name, x = _input(b)
        out[new] = float(np.abs(a.run(None, {a.get_inputs()[0].name: x})[0]
                                - b.run(None, {name: x})[0]).max())
    return out


def time_all(files: Dict[str, str], threads: int, rounds: int, warmup: int) -> Dict[str, Any]:
    runners: Dict[str, Callable[[], Any]] = {}
    for name, path in files.items():
        session = ort_session(path, threads)
        input_name, x = _input(session)
        runners[name] = (lambda s=session, n=input_name, v=x: s.run(None, {n: v}))
    print("timing %d models, %d thread(s), %d rounds ..." % (len(runners), threads, rounds),
          file=sys.stderr, flush=True)
    load = load_average()
    timings = interleaved(runners, rounds, warmup)
    return {"threads": threads, "load_before": load, "load_after": load_average(),
            "ms": {k: t.median_ms for k, t in timings.items()},
            "cpu_ms": {k: t.cpu_median_ms for k, t in timings.items()}}


def profile(files: Dict[str, str], runs: int, work: str) -> Dict[str, Dict[str, Any]]:
    """Per model and operator type: sum over its nodes of each node's median kernel time (us),
    one thread. The models take turns run by run, as in the timing, so that a busy spell of
    the machine touches all of them alike."""
    sessions = {}
    for i, (model, path) in enumerate(files.items()):
        session = ort_session(path, 1, profile_prefix=os.path.join(work, "profile%d" % i))
        sessions[model] = (session,) + _input(session)
    for _ in range(runs):
        for session, name, x in sessions.values():
            session.run(None, {name: x})
    return {model: _kernel_times(session.end_profiling())
            for model, (session, _, _) in sessions.items()}


def _kernel_times(trace: str) -> Dict[str, Any]:
    with open(trace) as f:
        events = json.load(f)
    os.remove(trace)
    per_node: Dict[str, List[float]] = collections.defaultdict(list)
    op_of: Dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"]].append(float(event["dur"]))
            op_of[event["name"]] = event["args"]["op_name"]
    by_op: Dict[str, float] = collections.Counter()
    nodes: Dict[str, int] = collections.Counter()
    for node, durations in per_node.items():
        by_op[op_of[node]] += statistics.median(durations[min(3, len(durations) - 1):])
        nodes[op_of[node]] += 1
    return {"total_us": sum(by_op.values()), "by_op_us": dict(by_op), "nodes": dict(nodes)}


def render(result: Dict[str, Any], args: argparse.Namespace) -> str:
    parts = []
    names = list(result["files"])
    for timing in result["timings"]:
        ms, cpu = timing["ms"], timing["cpu_ms"]
        rows = []
        for name in names:
            rows.append([name, fmt(ms[name], "%.2f"), fmt(cpu[name], "%.2f"),
                         fmt(ratio(ms[name], ms.get("peer")), "%.2fx"),
                         fmt(ratio(cpu[name], cpu.get("peer")), "%.2fx"),
                         fmt(ratio(cpu[name], cpu.get("peer, imported")), "%.2fx")])
        parts.append("**%d thread%s** (load average %s -> %s)\n\n" % (
            timing["threads"], "" if timing["threads"] == 1 else "s",
            fmt(timing["load_before"]), fmt(timing["load_after"])) + markdown_table(
            ["model", "ms", "CPU ms", "/ peer (ms)", "/ peer (CPU)", "/ peer imported (CPU)"],
            rows))
    if result.get("profiles"):
        lines = []
        for name, prof in result["profiles"].items():
            top = sorted(prof["by_op_us"].items(), key=lambda kv: -kv[1])[:args.top]
            lines.append([name, "%.2f" % (prof["total_us"] / 1e3), "; ".join(
                "%s %.2f (%d)" % (op, us / 1e3, prof["nodes"][op]) for op, us in top)])
        parts.append("**ONNX Runtime profile, 1 thread** (sum of per-node median kernel times, "
                     "ms; per operator type: ms (nodes))\n\n"
                     + markdown_table(["model", "kernels ms", "top operators"], lines))
    one = [t for t in result["timings"] if t["threads"] == 1]
    if one and "peer" in one[0]["cpu_ms"]:
        cpu = one[0]["cpu_ms"]
        parts.append("Encoder alone vs the peer, 1 thread, CPU time: timm graph %s, rewrite %s."
                     % (fmt(ratio(cpu["encoder, timm graph"], cpu["peer"]), "%.2fx"),
                        fmt(ratio(cpu["encoder, rewrite"], cpu["peer"]), "%.2fx")))
    diffs = ", ".join("%s %.1e" % kv for kv in result["max_abs_diff"].items())
    parts.append("Median of %d interleaved rounds after %d warm-up calls per model; ms: wall "
                 "clock, CPU ms: the process's CPU time per call (closest to the work done on a "
                 "busy machine). Largest |logit difference| against the timm graph: %s. %d cores."
                 % (args.rounds, args.warmup, diffs, os.cpu_count() or 0))
    return "\n\n".join(parts)


def targets(result: Dict[str, Any]) -> List[Target]:
    one = [t for t in result["timings"] if t["threads"] == 1]
    if not one or "peer" not in one[0]["cpu_ms"]:
        return [Target("default model vs the peer, 1 thread", "<= %.1fx" % TARGET_RATIO,
                       "no peer file given", None)]
    cpu = one[0]["cpu_ms"]
    value = ratio(cpu["default, rewrite"], cpu["peer"])
    return [Target("default model (rewrite) vs the peer, ONNX Runtime CPU time, 1 thread",
                   "<= %.1fx" % TARGET_RATIO, fmt(value, "%.2fx"), value <= TARGET_RATIO)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "default.safetensors"),
                        help="the model to export both ways (default models/default.safetensors)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side (default: the checkpoint's)")
    parser.add_argument("--peer", default=str(DEFAULT_PEER) if DEFAULT_PEER.is_file() else None,
                        help="the peer's ONNX file (default ../shared/peers/%s when present)"
                             % PEER_FILE)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts "
                        "(default %(default)s)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per model first")
    parser.add_argument("--profile", action="store_true",
                        help="also profile each model with ONNX Runtime's profiler (1 thread)")
    parser.add_argument("--profile-runs", type=int, default=40, help="profiled runs per model")
    parser.add_argument("--top", type=int, default=8, help="operator types listed per profile")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the section to FILE")
    args = parser.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        parser.error("--threads: comma-separated integers, got %r" % args.threads)
    if not threads or min(threads) < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be >= 1")
    if args.peer and not os.path.isfile(args.peer):
        parser.error("--peer %s: no such file" % args.peer)
    if not os.path.isfile(args.checkpoint):
        parser.error("--checkpoint %s: no such file" % args.checkpoint)
    set_threads(1)  # the exports' PyTorch work; ONNX Runtime takes its count per session

    with tempfile.TemporaryDirectory(prefix="bench_export_graph_") as work:
        files = prepare(args, work)
        result: Dict[str, Any] = {"files": {k: os.path.basename(v) for k, v in files.items()},
                                  "max_abs_diff": check_outputs(files),
                                  "timings": [time_all(files, t, args.rounds, args.warmup)
                                              for t in threads]}
        if args.profile:
            print("profiling ...", file=sys.stderr, flush=True)
            result["profiles"] = profile({k: v for k, v in files.items()
                                          if k != "default, rewrite + ORT"},
                                         args.profile_runs, work)
    body = render(result, args)
    if args.markdown:
        Path(args.markdown).write_text(body + "\n")
    return finish("Exported graph: timm vs rewrite vs the peer", body, targets(result), args.json,
                  extra={"result": result})


if __name__ == "__main__":
    sys.exit(main())
