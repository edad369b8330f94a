"""PyTorch eager vs ONNX Runtime on the CPU for each student variant at each input size.

For every arch in --archs and size in --sizes: parameters, GMACs (one 1x3xSxS forward
pass), the median latency of the forward pass in PyTorch eager (fp32) and in ONNX Runtime
(fp32, CPU provider), and their ratio; with --int8 also ONNX Runtime int8 (static QDQ,
calibrated on synthetic scenes) and its speed-up over fp32. Models are freshly built with
random weights (latency does not depend on the weight values), exported here with
``training.export`` (dynamo exporter, the same graph ``python -m training export`` writes).

Timing: both back ends get the same pre-processed input and the same thread count; each is
warmed up, then timed in block-interleaved rounds (``lpcv_segmentation.core.timing``), and the
median is reported. The machine is shared, so absolute figures drift; the ratios are what to
read.

    .venv/bin/python bench/backends.py                      # 3 students x (288, 512)
    .venv/bin/python bench/backends.py --archs mobilevit_xxs --sizes 288 --repeats 10 --int8
"""
import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
from common import load_average, set_threads  # noqa: E402
from lpcv_segmentation.core.timing import interleaved  # noqa: E402
import peer as peer_lib  # noqa: E402
from matmul_rate import matmul_runner  # noqa: E402
from report import Target, finish, fmt, markdown_table, ratio  # noqa: E402

DEFAULT_ARCHS = "mobilevit_s,mobilevit_xs,mobilevit_xxs"
DEFAULT_SIZES = "288,512"
TARGET_SPEEDUP = 4.0  # ONNX Runtime vs PyTorch eager, the default student at its default size
CALIBRATION_SCENES = 8
CALIBRATION_SEED = 9100
MATMUL_SIZE = 1024


def _int_list(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got %r" % text)


def _name_list(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def export_model(model: Any, size: int, path: str, int8_path: str = "") -> None:
    """fp32 ONNX file of ``model`` at ``size`` (with the runtime's metadata); optionally its
    int8 version calibrated on synthetic scenes."""
    import onnx

    from lpcv_segmentation.model.checkpoint import model_metadata
    from lpcv_segmentation.runtime.segmenter import preprocess
    from training.export import model_to_onnx, onnx_metadata, quantize_int8, set_metadata
    from training.synth import render_scene
    meta = onnx_metadata(model, model_metadata(model), size, "fp32")
    onnx.save(set_metadata(model_to_onnx(model, size), meta), path)
    if int8_path:
        scenes = [preprocess(render_scene(CALIBRATION_SEED + i, size)[0], size, meta["mean"],
                             meta["std"]) for i in range(CALIBRATION_SCENES)]
        quantize_int8(path, int8_path, scenes)


def measure_one(arch: str, size: int, threads: int, args: argparse.Namespace, work: str,
                peer_path: Optional[str] = None) -> Dict[str, Any]:
    import torch

    from lpcv_segmentation.model.cost import count_macs, count_params
    from lpcv_segmentation.model.segmodel import build_model
    from lpcv_segmentation.runtime.segmenter import Segmenter
    torch.manual_seed(0)
    model = build_model(arch, decoder_channels=args.decoder_channels, input_size=size).eval()
    onnx_path = os.path.join(work, "%s_%d.onnx" % (arch, size))
    int8_path = os.path.join(work, "%s_%d_int8.onnx" % (arch, size)) if args.int8 else ""
    if not os.path.isfile(onnx_path):  # exported once, timed at every thread count
        print("exporting %s at %d px ..." % (arch, size), file=sys.stderr, flush=True)
        export_model(model, size, onnx_path, int8_path)

    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    tensor = torch.from_numpy(x)

    def eager() -> None:
        with torch.inference_mode():
            model(tensor)

    fp32 = Segmenter(onnx_path, backend="onnxruntime", threads=threads)
    matmul, matmul_flops = matmul_runner(MATMUL_SIZE)  # the hardware ceiling, timed alongside
    runners: Dict[str, Callable[[], Any]] = {"eager": eager, "ort": lambda: fp32.infer(x),
                                             "matmul": matmul}
    if int8_path:
        int8 = Segmenter(int8_path, backend="onnxruntime", threads=threads)
        runners["int8"] = lambda: int8.infer(x)
    if peer_path:
        runners["peer"] = peer_lib.runner(peer_path, threads)
    with torch.inference_mode():
        reference = model(tensor).numpy()
    max_diff = float(np.abs(fp32.infer(x) - reference).max())
    print("timing %s at %d px, %d thread(s) (%d rounds) ..."
          % (arch, size, threads, args.repeats), file=sys.stderr, flush=True)
    timings = interleaved(runners, args.repeats, args.block, args.warmup)
    row: Dict[str, Any] = {"arch": arch, "size": size, "threads": threads,
                           "params": count_params(model),
                           "gmacs": count_macs(model, size), "max_abs_diff": max_diff,
                           "load": load_average()}
    for name, timing in timings.items():
        row["%s_ms" % name] = timing.median_ms
        row["%s_min_ms" % name] = timing.min_ms
        row["%s_cpu_ms" % name] = timing.cpu_median_ms
    # GMACs per CPU-second: per-thread efficiency, comparable across thread counts and load
    row["matmul_gmac_per_cpu_s"] = matmul_flops / 2e9 / (row["matmul_cpu_ms"] / 1e3)
    for name in ("eager", "ort", "int8"):
        if "%s_cpu_ms" % name in row:
            row["%s_gmac_per_cpu_s" % name] = row["gmacs"] / (row["%s_cpu_ms" % name] / 1e3)
    return row


def render(rows: List[Dict[str, Any]], args: argparse.Namespace, peer: peer_lib.Peer) -> str:
    headers = ["threads", "model", "input", "params", "GMACs", "eager ms", "ORT ms", "eager / ORT",
               "eager CPU ms", "ORT CPU ms", "eager / ORT (CPU)", "ORT % of matmul rate",
               "max logit diff"]
    if args.int8:
        headers += ["ORT int8 ms", "int8 CPU ms", "fp32 / int8 (CPU)"]
    table = []
    for index, r in enumerate(rows):
        line = [r["threads"], "UPerNet-%s" % r["arch"], r["size"], "%.2fM" % (r["params"] / 1e6),
                "%.2f" % r["gmacs"], fmt(r["eager_ms"]), fmt(r["ort_ms"]),
                fmt(ratio(r["eager_ms"], r["ort_ms"]), "%.1fx"), fmt(r["eager_cpu_ms"]),
                fmt(r["ort_cpu_ms"]), fmt(ratio(r["eager_cpu_ms"], r["ort_cpu_ms"]), "%.1fx"),
                fmt(100 * ratio(r["ort_gmac_per_cpu_s"], r["matmul_gmac_per_cpu_s"]), "%.0f%%"),
                "%.1e" % r["max_abs_diff"]]
        if args.int8:
            line += [fmt(r.get("int8_ms")), fmt(r.get("int8_cpu_ms")),
                     fmt(ratio(r["ort_cpu_ms"], r.get("int8_cpu_ms")), "%.2fx")]
        table.append(line)
        last_of_threads = index + 1 == len(rows) or rows[index + 1]["threads"] != r["threads"]
        same = [p for p in rows if p["threads"] == r["threads"] and "peer_ms" in p]
        if last_of_threads and same:  # the peer's median over every model's rounds
            peer_ms = [p["peer_ms"] for p in same]
            peer_cpu = [p["peer_cpu_ms"] for p in same]
            table.append([r["threads"], peer_lib.LABEL, peer_lib.input_size(peer.path), "-",
                          "-", "-", fmt(statistics.median(peer_ms)), "-", "-",
                          fmt(statistics.median(peer_cpu)), "-", "-", "-"]
                         + ["-"] * (3 if args.int8 else 0))
    loads = [r["load"] for r in rows if r.get("load") is not None]
    note = ("%d-channel decoder, random weights, batch 1, forward pass only (pre-processed "
            "input). Median of %d interleaved rounds of %d calls after %d warm-up calls, "
            "%s thread(s) for both back ends%s; the peer is timed in the rounds of every "
            "model (its row: the median over them). ms: wall clock; CPU ms: CPU time of the "
            "process per call (all threads). ORT %% of matmul rate: the model's GMACs per "
            "CPU-second in ONNX Runtime over those of a %dx%d fp32 matrix product (torch.mm, "
            "bench/matmul_rate.py) timed in the same rounds: how close to the hardware limit "
            "it runs. Load average (1 min) while timing: %s on %d cores."
            % (args.decoder_channels, args.repeats, args.block, args.warmup,
               " and ".join(map(str, args.threads)),
               ", OMP_WAIT_POLICY=PASSIVE" if args.omp_passive else "", MATMUL_SIZE, MATMUL_SIZE,
               "%.1f-%.1f" % (min(loads), max(loads)) if loads else "n/a", os.cpu_count() or 0))
    return markdown_table(headers, table) + "\n\n" + note + " " + peer.line()


def targets(rows: List[Dict[str, Any]], args: argparse.Namespace) -> List[Target]:
    from lpcv_segmentation.model.segmodel import DEFAULT_ARCH
    out = []
    for default in [r for r in rows if r["arch"] == DEFAULT_ARCH and r["size"] == 288]:
        threads = default["threads"]
        speedup = ratio(default["eager_ms"], default["ort_ms"])
        out.append(Target("ONNX Runtime vs PyTorch eager (wall clock, %d thread%s), %s at 288"
                          % (threads, "" if threads == 1 else "s", DEFAULT_ARCH),
                          ">= %.0fx" % TARGET_SPEEDUP, fmt(speedup, "%.1fx"),
                          speedup is not None and speedup >= TARGET_SPEEDUP))
        if args.int8:
            gain = ratio(default["ort_cpu_ms"], default.get("int8_cpu_ms"))
            out.append(Target("ONNX Runtime int8 vs fp32 (CPU time), %s at 288, %d thread(s)"
                              % (DEFAULT_ARCH, threads),
                              "> 1x (faster)", fmt(gain, "%.2fx"), gain is not None and gain > 1))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=_name_list, default=_name_list(DEFAULT_ARCHS),
                        help="comma-separated student archs (default %s)" % DEFAULT_ARCHS)
    parser.add_argument("--sizes", type=_int_list, default=_int_list(DEFAULT_SIZES),
                        help="comma-separated input sizes (default %s)" % DEFAULT_SIZES)
    parser.add_argument("--decoder-channels", type=int, default=64,
                        help="UPerNet decoder width (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds per model (default %(default)s)")
    parser.add_argument("--block", type=int, default=3,
                        help="timed calls per back end per round (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls per back end first (default %(default)s)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="intra-op thread counts for both back ends, each timed in its "
                             "own rounds (default: 1 2)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE for PyTorch: its OpenMP threads sleep "
                             "instead of spinning between operators (fairer on a busy machine)")
    parser.add_argument("--int8", action="store_true",
                        help="also time an int8 ONNX model (static QDQ, synthetic calibration)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    peer_lib.add_argument(parser)
    args = parser.parse_args()
    peer = peer_lib.resolve(parser, args.peer)
    if args.repeats < 1 or min(args.threads) < 1 or not args.archs or not args.sizes:
        parser.error("--repeats and --threads must be >= 1; --archs and --sizes not empty")
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when torch's OpenMP library loads
    set_threads(args.threads[0])
    from lpcv_segmentation.model.segmodel import ARCHS, check_input_size
    for arch in args.archs:
        if arch not in ARCHS:
            parser.error("unknown arch %r; known: %s" % (arch, ", ".join(sorted(ARCHS))))
        for size in args.sizes:
            try:
                check_input_size(arch, size)
            except ValueError as error:
                parser.error(str(error))

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as work:
        for threads in args.threads:
            set_threads(threads)
            for arch in args.archs:
                for size in args.sizes:
                    rows.append(measure_one(arch, size, threads, args, work, peer.path))
    body = render(rows, args, peer)
    if args.markdown:
        Path(args.markdown).write_text(body + "\n")
    return finish("Back ends per student variant: PyTorch eager vs ONNX Runtime", body,
                  targets(rows, args), args.json, {"rows": rows})


if __name__ == "__main__":
    sys.exit(main())
