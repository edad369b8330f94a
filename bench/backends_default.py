"""Back ends for the default student and its unpruned and undistilled versions.

For each model: PyTorch eager (fp32), ONNX Runtime fp32 and ONNX Runtime int8 latency of the
forward pass on a pre-processed 1x3xSxS input (S = the model's own input size), and the
GMAC/s each achieves against the machine's fp32 matrix-multiply rate measured in the same
run (bench/matmul_rate.py), i.e. how close the model comes to the hardware limit. Everything
is timed in interleaved rounds: per round, the matrix product and every model/back end in turn
run one untimed call and a short block of timed calls (``lpcv_segmentation.core.timing``).

PyTorch's OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE, set before torch is
imported), so that the bench measures the model rather than contention for the CPU (measured:
docs/reports/benchmarks.md, "How the benches time").

ONNX files: ``<checkpoint stem>.onnx`` / ``<stem>_int8.onnx`` beside the checkpoint when they
exist (models/default.onnx), else exported here into runs/bench_cache/ (fp32 with
``training.export.export_onnx``; int8 with its ``quantize_int8``, calibrated on synthetic
scenes from ``training.synth``). A model whose checkpoint is missing gets a row saying so.

The LPCV 2023 2nd-place network (``--peer``, bench/peer.py) is timed in the same rounds, at its
own input size, and gets a row in every table. Since both may leave their logits at a stride
(the peer at 8; a model exported with ``--output-stride native``), the first model and the peer
are also timed with the runtime's post-processing (argmax, the label map resized to
POST_SIZE x POST_SIZE, the LPCV frame size), the ratio the target is set on.

    .venv/bin/python bench/backends_default.py
    .venv/bin/python bench/backends_default.py --model default=models/default.safetensors \\
        --model unpruned=runs/default_model/student/best.safetensors --rounds 10
"""
import argparse
import contextlib
import hashlib
import os
import sys

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

# Before torch is imported (libgomp reads it once): see the module docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
from lpcv_segmentation.core.fileio import atomic_path  # noqa: E402
from common import load_average, set_threads  # noqa: E402
from lpcv_segmentation.core.timing import interleaved  # noqa: E402
import peer as peer_lib  # noqa: E402
from matmul_rate import matmul_runner  # noqa: E402
from report import Target, finish, fmt, markdown_table, ratio  # noqa: E402

DEFAULT_MODELS: List[Tuple[str, str]] = [
    # pruned + distilled (python -m training default-model)
    ("default", "models/default.safetensors"),
    ("unpruned", "runs/default_model/student/best.safetensors"),  # distilled, before pruning
    ("undistilled", "runs/ablation_cpu/student/best.safetensors"),  # no teacher, no pruning
]
CACHE = ROOT / "runs" / "bench_cache"
BACKENDS = ("eager", "ort_fp32", "ort_int8")
CALIBRATION_SCENES = 16
TARGET_VS_PEER = 1.25  # the default model at most 1.25x the peer's latency, 1 thread
POST_SIZE = 512  # side of the label map both sides' post-processing writes
CALIBRATION_SEED = 7000


def _cache_name(checkpoint: str, size: int, suffix: str) -> Path:
    """A cache file tied to the checkpoint (path, size on disk, modification time), the input
    size and the export code (training/export.py), so a change to any of them re-exports."""
    stat = os.stat(checkpoint)
    exporter = hashlib.sha1((ROOT / "training" / "export.py").read_bytes()).hexdigest()
    key = "%s:%d:%d:%d:%s" % (os.path.abspath(checkpoint), stat.st_size, stat.st_mtime_ns, size,
                              exporter)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return CACHE / ("%s_%d_%s%s" % (Path(checkpoint).stem, size, digest, suffix))


def _onnx_input_size(path: Path) -> Optional[int]:
    from lpcv_segmentation.runtime.segmenter import RuntimeConfigError, Segmenter
    try:
        return Segmenter(str(path), backend="onnxruntime").input_size
    except RuntimeConfigError:
        return None


def fp32_onnx(checkpoint: str, size: int) -> Tuple[str, str]:
    """(fp32 ONNX file of ``checkpoint`` at ``size``, how it was obtained): the file beside the
    checkpoint when it has that input size, else an export cached in runs/bench_cache/."""
    from training.export import export_onnx
    beside = Path(checkpoint).with_suffix(".onnx")
    if beside.is_file() and _onnx_input_size(beside) == size:
        return str(beside), "beside the checkpoint"
    cached = _cache_name(checkpoint, size, ".onnx")
    if not cached.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        print("exporting %s at %d px ..." % (checkpoint, size), file=sys.stderr, flush=True)
        export_onnx(checkpoint, str(cached), input_size=size, verify_images=1)
    return str(cached), "exported here (fp32, %d px)" % size


def int8_onnx(checkpoint: str, fp32_path: str, size: int) -> Tuple[str, str]:
    """(int8 ONNX file, how it was obtained): ``<stem>_int8.onnx`` beside the checkpoint when
    it has that input size, else ``fp32_path`` quantised and cached in runs/bench_cache/."""
    from training.export import quantize_int8
    beside = Path(str(Path(checkpoint).with_suffix("")) + "_int8.onnx")
    if beside.is_file() and _onnx_input_size(beside) == size:
        return str(beside), "beside the checkpoint"
    cached = _cache_name(checkpoint, size, "_int8.onnx")
    if not cached.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        print("quantising %s to int8 ..." % fp32_path, file=sys.stderr, flush=True)
        with atomic_path(cached, suffix=".onnx") as tmp, \
                contextlib.redirect_stdout(sys.stderr):  # the calibrator prints its progress
            quantize_int8(fp32_path, tmp, calibration_inputs(fp32_path))
    return str(cached), "quantised here (static QDQ, %d synthetic scenes)" % CALIBRATION_SCENES


def onnx_files(checkpoint: str, size: int) -> Dict[str, Tuple[str, str]]:
    """{"fp32": (path, how it was obtained), "int8": (path, how)} for ``checkpoint``."""
    fp32 = fp32_onnx(checkpoint, size)
    return {"fp32": fp32, "int8": int8_onnx(checkpoint, fp32[0], size)}


def calibration_inputs(onnx_path: str) -> List[np.ndarray]:
    """Pre-processed synthetic scenes at the model's size and normalisation."""
    from lpcv_segmentation.runtime.segmenter import Segmenter
    from training.synth import render_scene
    segmenter = Segmenter(onnx_path, backend="onnxruntime")
    return [segmenter.preprocess(render_scene(CALIBRATION_SEED + i, segmenter.input_size)[0])
            for i in range(CALIBRATION_SCENES)]


def prepare(name: str, checkpoint: str, size: Optional[int], threads: int
            ) -> Dict[str, Any]:
    """The model in PyTorch and ONNX Runtime (fp32, int8), its cost, and a runner per back end."""
    import torch
    from lpcv_segmentation.model.checkpoint import load_checkpoint
    from lpcv_segmentation.model.cost import count_macs, count_params
    from lpcv_segmentation.runtime.segmenter import Segmenter, postprocess
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    size = int(size or meta["input_size"])
    files = onnx_files(checkpoint, size)
    sessions = {p: Segmenter(files[p][0], backend="onnxruntime", threads=threads)
                for p in ("fp32", "int8")}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    tensor = torch.from_numpy(x)

    def eager() -> None:
        with torch.inference_mode():
            model(tensor)

    runners: Dict[str, Callable[[], Any]] = {
        "eager": eager,
        "ort_fp32": lambda: sessions["fp32"].infer(x),
        "ort_int8": lambda: sessions["int8"].infer(x),
    }
    fp32 = sessions["fp32"]
    return {"name": name, "checkpoint": checkpoint, "arch": meta.get("arch"), "size": size,
            "params": count_params(model), "gmacs": count_macs(model, size),
            "output_stride": fp32.output_stride,
            "onnx": {p: f[0] for p, f in files.items()},
            "onnx_origin": {p: f[1] for p, f in files.items()}, "runners": runners,
            "post_runner": lambda: postprocess(fp32.infer(x), (POST_SIZE, POST_SIZE),
                                               upsample=fp32.upsample)}


def run(models: List[Tuple[str, str]], size: Optional[int], threads: int, rounds: int,
        matmul_size: int, block: int = 3, peer_path: Optional[str] = None) -> Dict[str, Any]:
    """Every model and back end (and the peer, when given) timed at ``threads`` threads."""
    set_threads(threads)
    prepared, missing = [], []
    for name, checkpoint in models:
        path = checkpoint if os.path.isabs(checkpoint) else str(ROOT / checkpoint)
        if not Path(path).is_file():
            missing.append((name, checkpoint))
            continue
        prepared.append(prepare(name, path, size, threads))
        prepared[-1]["checkpoint"] = checkpoint  # as given, for the report
    matmul, matmul_flops = matmul_runner(matmul_size)
    runners: Dict[str, Callable[[], Any]] = {"matmul": matmul}
    for p in prepared:
        for backend, runner in p["runners"].items():
            runners["%s/%s" % (p["name"], backend)] = runner
    if peer_path:
        runners["peer"] = peer_lib.runner(peer_path, threads)
        if prepared:
            runners["post/reference"] = prepared[0]["post_runner"]
            runners["post/peer"] = peer_lib.labelled_runner(peer_path, threads, POST_SIZE)
    print("timing %d runners x %d rounds of %d ..." % (len(runners), rounds, block),
          file=sys.stderr, flush=True)
    loads = [load_average()]
    timings = {name: t._asdict()
               for name, t in interleaved(runners, rounds, block, warmup=0).items()}
    loads.append(load_average())
    # Rates from each runner's fastest round: the least disturbed by other work on the machine,
    # so the model's rate and the matrix product's peak are compared like for like.
    matmul_gmacs = matmul_flops / 2.0 / (timings["matmul"]["min_ms"] / 1000.0) / 1e9
    results = []
    for p in prepared:
        ms = {b: timings["%s/%s" % (p["name"], b)]["median_ms"] for b in BACKENDS}
        best = {b: timings["%s/%s" % (p["name"], b)]["min_ms"] for b in BACKENDS}
        record = {k: v for k, v in p.items() if k not in ("runners", "post_runner")}
        record.update(ms=ms, best_ms=best,
                      gmacs_per_s={b: p["gmacs"] / (best[b] / 1000.0) for b in BACKENDS})
        results.append(record)
    return {"threads": threads, "rounds": rounds, "block": block, "matmul_size": matmul_size,
            "matmul_ms": timings["matmul"]["median_ms"],
            "matmul_best_ms": timings["matmul"]["min_ms"],
            "matmul_gmacs_per_s": matmul_gmacs, "matmul_gflops": 2.0 * matmul_gmacs,
            "models": results, "missing": missing, "load_average": loads,
            "peer": None if not peer_path else {
                "path": peer_path, "size": peer_lib.input_size(peer_path),
                "ms": timings["peer"]["median_ms"], "best_ms": timings["peer"]["min_ms"],
                "post_ms": timings.get("post/peer", {}).get("median_ms"),
                "reference_post_ms": timings.get("post/reference", {}).get("median_ms")}}


def section(results: List[Dict[str, Any]], peer: peer_lib.Peer) -> Tuple[str, List[Target]]:
    """One table per thread count (the peer's row in each), then the models measured."""
    parts, targets = [], []
    for result in results:
        part, target = thread_table(result)
        parts.append(part)
        targets += target
    parts.append(peer.line())
    parts.append("Models measured:\n\n" + markdown_table(
        ["model", "arch", "checkpoint", "input", "params", "GMACs", "ONNX files"],
        [[m["name"], m["arch"], m["checkpoint"], m["size"], "%.2fM" % (m["params"] / 1e6),
          "%.3f" % m["gmacs"],
          "fp32 %s; int8 %s" % (m["onnx_origin"]["fp32"], m["onnx_origin"]["int8"])]
         for m in results[0]["models"]]))
    return "\n\n".join(parts), targets


def thread_table(result: Dict[str, Any]) -> Tuple[str, List[Target]]:
    peak = result["matmul_gmacs_per_s"]
    rows = []
    reference = result["models"][0] if result["models"] else None
    for m in result["models"]:
        ms, rate = m["ms"], m["gmacs_per_s"]
        rows.append([m["name"], m["size"]] + [fmt(ms[b], "%.1f") for b in BACKENDS] + [
            fmt(ratio(ms["eager"], ms["ort_fp32"]), "%.2fx"),
            fmt(ratio(ms["ort_fp32"], ms["ort_int8"]), "%.2fx"),
            fmt(ratio(ms["ort_fp32"], reference["ms"]["ort_fp32"]), "%.2fx")]
            + ["%.1f (%.0f%%)" % (rate[b], 100.0 * rate[b] / peak) for b in BACKENDS])
    for name, checkpoint in result["missing"]:
        rows.append([name, "not available: %s missing" % checkpoint] + ["-"] * 9)
    peer, targets, vs_peer_line = result.get("peer"), [], []
    if peer and reference:
        # Both thread counts, in every run: the target is set at 1 thread, 2 is the Nano's
        # other realistic setting (it has 4 cores, shared with the camera and ROS).
        plural = "" if result["threads"] == 1 else "s"
        vs_peer_line = ["%s vs the peer, ONNX Runtime fp32, %d thread%s, forward pass only: %s "
                        "the peer's latency (%s ms / %s ms, timed in the same rounds; %s's logits "
                        "at stride %d, the peer's at 8)."
                        % (reference["name"], result["threads"], plural,
                           fmt(ratio(reference["ms"]["ort_fp32"], peer["ms"]), "%.2fx"),
                           fmt(reference["ms"]["ort_fp32"], "%.1f"), fmt(peer["ms"], "%.1f"),
                           reference["name"], reference.get("output_stride", 1)),
                        "**%s vs the peer, ONNX Runtime fp32, %d thread%s, forward pass + argmax "
                        "+ the %dx%d label map on both sides: %s the peer's latency** (%s ms / %s "
                        "ms, same rounds)."
                        % (reference["name"], result["threads"], plural, POST_SIZE, POST_SIZE,
                           fmt(ratio(peer.get("reference_post_ms"), peer.get("post_ms")), "%.2fx"),
                           fmt(peer.get("reference_post_ms"), "%.1f"),
                           fmt(peer.get("post_ms"), "%.1f"))]
    if peer:
        rows.append([peer_lib.LABEL, peer["size"], "-", fmt(peer["ms"], "%.1f"), "-", "-", "-",
                     fmt(ratio(peer["ms"], reference["ms"]["ort_fp32"]) if reference else None,
                         "%.2fx"), "-", "-", "-"])
        if reference and result["threads"] == 1:
            vs_peer = ratio(peer.get("reference_post_ms"), peer.get("post_ms"))
            targets.append(Target("%s vs the peer, ONNX Runtime fp32, 1 thread, with "
                                  "post-processing" % reference["name"],
                                  "<= %.2fx the peer's latency" % TARGET_VS_PEER,
                                  fmt(vs_peer, "%.2fx"),
                                  None if vs_peer is None else vs_peer <= TARGET_VS_PEER))
    body = "\n\n".join([
        "### %d thread%s" % (result["threads"], "" if result["threads"] == 1 else "s"),
        "%d thread(s) for every back end (PyTorch's OpenMP threads passive when idle); "
        "latencies are medians over %d interleaved rounds of %d timed calls each; forward "
        "pass only on a pre-processed input. Machine fp32 matrix-multiply peak, timed in the "
        "same rounds (%dx%d torch.mm, fastest call): **%.1f GFLOP/s = %.1f GMAC/s**. A model's "
        "GMAC/s is its MACs over its fastest call, with its share of that peak (int8 too, "
        "against the fp32 peak); fastest calls on both sides, because they are the least "
        "disturbed by other work on a shared machine. Load average (1 min) before and after "
        "the timing: %s."
        % (result["threads"], result["rounds"], result["block"], result["matmul_size"],
           result["matmul_size"], result["matmul_gflops"], peak,
           " / ".join(fmt(v, "%.1f") for v in result["load_average"])),
        markdown_table(["model", "input", "eager ms", "ORT fp32 ms", "ORT int8 ms",
                        "ORT fp32 vs eager", "int8 vs fp32", "ORT fp32 ms vs %s"
                        % (reference["name"] if reference else "first"),
                        "eager GMAC/s", "ORT fp32 GMAC/s", "ORT int8 GMAC/s"], rows),
    ] + vs_peer_line)
    return body, targets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", metavar="NAME=CHECKPOINT",
                        help="a model to measure (repeatable; default: %s)"
                        % ", ".join("%s=%s" % m for m in DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=None,
                        help="input size (default: each model's own)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts, one table each (default: 1 2)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=3, help="timed calls per runner per round")
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--json", help="also write the results here")
    peer_lib.add_argument(parser)
    args = parser.parse_args(argv)
    peer = peer_lib.resolve(parser, args.peer)
    models = DEFAULT_MODELS
    if args.model:
        try:
            models = [tuple(item.split("=", 1)) for item in args.model]  # type: ignore[misc]
        except ValueError:
            parser.error("--model takes NAME=CHECKPOINT")
        if any(len(m) != 2 for m in models):
            parser.error("--model takes NAME=CHECKPOINT, got %s" % args.model)
    results = [run(models, args.size, threads, args.rounds, args.matmul_size, args.block,
                   peer.path) for threads in args.threads]
    body, targets = section(results, peer)
    return finish("Back ends", body, targets, args.json, {"results": results,
                                                          "peer": peer._asdict()})


if __name__ == "__main__":
    sys.exit(main())
