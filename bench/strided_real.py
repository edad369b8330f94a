"""Strided logits and input size on a labelled set: mIoU against latency beside the peer.

For every model (a checkpoint) at every input size asked for, three ONNX Runtime variants:
  full           ``export`` as shipped until now: the logits resized to the input size in the
                 graph; argmax, nearest resize of the labels
  strided/labels ``export --output-stride native``; argmax at the decoder's stride, nearest
                 resize of the label map (the runtime's ``upsample="labels"``)
  strided/logits the same file; bilinear resize of the logits, then argmax (``"logits"``)
Each is scored with ``training evaluate`` (the same ``Segmenter``) on the dataset's val split,
and timed as forward pass + post-processing to an OUTxOUT label map (default 512, the LPCV
frame size), interleaved in the same rounds with the LPCV 2023 2nd-place network (bench/peer.py),
whose own stride-8 logits get the same cheapest post-processing (argmax, nearest resize), at
each thread count asked for. ``--plot`` draws mIoU against the 1-thread latency ratio.

    .venv/bin/python bench/strided_real.py --data ../data/semantic_drone \\
        --model base1400=../data/runs/base1400/last.safetensors@256,224,192 \\
        --model ft192=../data/runs/stride/ft192/last.safetensors --plot docs/reports/fig.png

A model given as NAME=CKPT runs at its own input size; NAME=CKPT@S1,S2 at those sizes
(the encoder must be size-flexible). ONNX files are exported once into --work and reused.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench/backends_default.py

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
from common import load_average, set_threads  # noqa: E402
from lpcv_segmentation.core.timing import interleaved  # noqa: E402
import peer as peer_lib  # noqa: E402
from report import finish, fmt, markdown_table, ratio  # noqa: E402

VARIANTS: Tuple[Tuple[str, str, Optional[str]], ...] = (
    # (name, export output stride, upsample)
    ("full", "full", None),
    ("strided/labels", "native", "labels"),
    ("strided/logits", "native", "logits"),
)
DEFAULT_WORK = ROOT / "runs" / "strided_real"


def parse_model(text: str) -> Tuple[str, str, List[int]]:
    """NAME=CKPT[@S1,S2,...] -> (name, checkpoint, sizes; [] for the checkpoint's own)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError("--model takes NAME=CKPT[@S1,S2], got %r" % text)
    name, rest = text.split("=", 1)
    path, _, sizes = rest.partition("@")
    try:
        return name, path, [int(s) for s in sizes.split(",")] if sizes else []
    except ValueError:
        raise argparse.ArgumentTypeError("--model %s: sizes must be whole numbers" % text)


def export(checkpoint: str, size: int, stride: str, work: Path) -> str:
    """The ONNX file of ``checkpoint`` at ``size`` (exported into ``work`` once, named by the
    checkpoint's content: runs' checkpoints share their file and folder names)."""
    from lpcv_segmentation.core.fileio import file_sha256
    from training.export import OnnxGraph, export_onnx
    name = "%s_%s_%d_%s.onnx" % (Path(checkpoint).stem, file_sha256(checkpoint)[:12], size, stride)
    out = work / name
    if not out.is_file():
        work.mkdir(parents=True, exist_ok=True)
        print("exporting %s at %d px, logits %s ..." % (checkpoint, size, stride),
              file=sys.stderr, flush=True)
        export_onnx(checkpoint, str(out), input_size=size, verify_images=1,
                    graph=OnnxGraph(output_stride=stride))
    return str(out)


def score(path: str, data: str, upsample: Optional[str]) -> Dict[str, Any]:
    """``training evaluate`` on the val split (1 thread; its latency is not used here)."""
    from training.evaluate import Runtime, evaluate
    return evaluate(path, data, "val", Runtime(threads=1, warmup=0, upsample=upsample),
                    progress=False)


def runner(path: str, upsample: Optional[str], threads: int, out: int) -> Callable[[], Any]:
    """Forward pass on a fixed pre-processed input + post-processing to OUTxOUT labels."""
    from lpcv_segmentation.runtime.segmenter import Segmenter, postprocess
    segmenter = Segmenter(path, backend="onnxruntime", threads=threads, upsample=upsample)
    x = np.random.default_rng(0).standard_normal(
        (1, 3, segmenter.input_size, segmenter.input_size)).astype(np.float32)
    mode = upsample or "labels"
    return lambda: postprocess(segmenter.infer(x), (out, out), upsample=mode)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset root in the LPCV layout (val split)")
    parser.add_argument("--model", type=parse_model, action="append", required=True,
                        metavar="NAME=CKPT[@S1,S2]", help="a checkpoint and the sizes to run it at")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="where the ONNX exports are kept (default runs/strided_real)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=3)
    parser.add_argument("--out-size", type=int, default=512,
                        help="side of the label map every model's post-processing writes")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help="draw mIoU against the 1-thread latency ratio to the peer")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    parser.add_argument("--replot", type=Path, default=None, metavar="JSON",
                        help="only draw --plot again from the JSON of an earlier run")
    peer_lib.add_argument(parser)
    args = parser.parse_args(argv)
    if args.replot:
        import json
        if not args.plot:
            parser.error("--replot needs --plot PNG")
        record = json.loads(args.replot.read_text())
        rows = [dict(r, vs_peer={int(t): v for t, v in r["vs_peer"].items()})
                for r in record["rows"]]
        plot(rows, args.threads[0], args.plot)
        return 0
    peer = peer_lib.resolve(parser, args.peer)

    rows: List[Dict[str, Any]] = []
    for name, checkpoint, sizes in args.model:
        if not Path(checkpoint).is_file():
            parser.error("--model %s: %s does not exist" % (name, checkpoint))
        if not sizes:
            from lpcv_segmentation.model.checkpoint import read_metadata
            sizes = [int(read_metadata(checkpoint)["input_size"])]
        for size in sizes:
            for variant, stride, upsample in VARIANTS:
                path = export(checkpoint, size, stride, args.work)
                result = score(path, args.data, upsample)
                rows.append({"model": name, "checkpoint": checkpoint, "size": size,
                             "variant": variant, "onnx": path, "upsample": upsample,
                             "miou": result["miou"], "dice": result["dice"],
                             "per_class_iou": result["per_class_iou"]})
                print("%s %d %s: mIoU %.4f" % (name, size, variant, result["miou"]),
                      file=sys.stderr, flush=True)

    timings: Dict[int, Dict[str, float]] = {}
    loads = [load_average()]
    for threads in args.threads:
        set_threads(threads)
        runners = {"%d" % i: runner(r["onnx"], r["upsample"], threads, args.out_size)
                   for i, r in enumerate(rows)}
        if peer.path:
            runners["peer"] = peer_lib.labelled_runner(peer.path, threads, args.out_size)
        measured = interleaved(runners, args.rounds, args.block, warmup=1)
        timings[threads] = {k: t.median_ms for k, t in measured.items()}
        loads.append(load_average())
    for i, r in enumerate(rows):
        r["ms"] = {t: timings[t]["%d" % i] for t in args.threads}
        r["vs_peer"] = {t: ratio(timings[t]["%d" % i], timings[t].get("peer"))
                        for t in args.threads}

    header = (["model", "input", "logits / upsampling", "val mIoU"]
              + ["ms, %d thr" % t for t in args.threads]
              + ["x peer, %d thr" % t for t in args.threads])
    table = [[r["model"], r["size"], r["variant"], fmt(r["miou"], "%.3f")]
             + [fmt(r["ms"][t], "%.1f") for t in args.threads]
             + [fmt(r["vs_peer"][t], "%.2fx") for t in args.threads] for r in rows]
    if peer.path:
        table.append([peer_lib.LABEL, peer_lib.input_size(peer.path), "stride 8 / labels", "-"]
                     + [fmt(timings[t]["peer"], "%.1f") for t in args.threads]
                     + ["1.00x" for _ in args.threads])
    body = "\n".join([
        "## Strided logits and input size (%s, val split)" % args.data, "",
        markdown_table(header, table), "",
        "Latency: median of %d rounds x %d calls, interleaved; forward pass + argmax + the "
        "label map at %dx%d (bilinear logits first for strided/logits). Load average %s."
        % (args.rounds, args.block, args.out_size, args.out_size,
           " -> ".join(fmt(v, "%.2f") for v in loads)),
        peer.line()])
    if args.plot:
        plot(rows, args.threads[0], args.plot)
        body += "\n\nPlot: `%s`." % os.path.relpath(str(args.plot), str(ROOT))
    return finish("Strided logits and input size", body, [], args.json,
                  {"rows": rows, "peer_ms": {t: timings[t].get("peer") for t in args.threads}})


def plot(rows: List[Dict[str, Any]], threads: int, path: Path) -> None:
    """mIoU against the latency ratio to the peer, one marker per variant, labelled by size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    markers = {"full": "s", "strided/labels": "o", "strided/logits": "^"}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for number, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        colour = "C%d" % (number % 10)  # one colour per model, one marker per variant
        for variant, marker in markers.items():
            points = [r for r in rows if r["model"] == model and r["variant"] == variant]
            if not points or points[0]["vs_peer"][threads] is None:
                continue
            xs = [r["vs_peer"][threads] for r in points]
            axes.plot(xs, [r["miou"] for r in points], marker=marker, linestyle="",
                      color=colour, label="%s, %s" % (model, variant))
            for r, x in zip(points, xs):
                axes.annotate(str(r["size"]), (x, r["miou"]), fontsize=7,
                              textcoords="offset points", xytext=(3, 3))
    axes.axvline(1.25, color="grey", linestyle="--", linewidth=1, label="1.25x the peer")
    axes.set_xlabel("latency / peer's latency (ONNX Runtime, %d thread)" % threads)
    axes.set_ylabel("val mIoU")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    from lpcv_segmentation.core.fileio import atomic_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(str(tmp), dpi=120)


if __name__ == "__main__":
    sys.exit(main())
