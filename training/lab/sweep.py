"""Sparsity sweep: for each method and amount, prune, fine-tune briefly, export, evaluate.

  python -m training sweep --checkpoint CKPT --data DIR --out DIR \\
      [--methods filter channel neuron head all unstructured] [--amounts 0.2 0.4 0.6] \\
      [--finetune-iters N] [--teacher CKPT] [--importance taylor] [--allocation local] \\
      [--threads T] [--eval-limit N] [key=value ...]

Each point is ``python -m training prune`` (OUT/<method>_<amount>/) followed by an fp32 ONNX
export and ``training.evaluate`` of that ONNX file on the val split with ONNX Runtime on the
CPU, so accuracy and latency are measured on the same file. The reference point (amount 0) is
the unpruned model fine-tuned for the same number of iterations, so no pruned point gains from
training the reference did not get. Writes:

  OUT/sweep.csv                 one row per point (method, amount, params, GMACs, sparsity,
                                mIoU, Dice, latency, speed-up, score)
  OUT/miou_vs_sparsity.png      the paper's figures 3 and 5: mean IoU against sparsity
  OUT/latency_vs_sparsity.png   ... with ONNX Runtime latency added
  OUT/miou_vs_latency.png       accuracy against latency (the trade-off the challenge scores)

Sparsity on the x axis is the amount: the fraction of each method's units removed (channels,
neurons, heads) or, for unstructured, of the weights zeroed. The CSV also gives the share of
parameters removed. Unstructured points keep every shape: their latency shows that zeros alone
buy no speed in dense inference. --resume reuses the points OUT already holds.
"""
import argparse
import csv
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from lpcv_segmentation.core import timing
from lpcv_segmentation.core.fileio import atomic_path, write_csv_atomic, write_json_atomic
from training import prune as prune_lib

CSV_NAME = "sweep.csv"
POINT_JSON = "point.json"  # the CSV row of a point
EVAL_JSON = "eval.json"  # its full evaluation (training.evaluate + latency + export report)
BASE_NAME = "none"  # the reference point: no pruning, same fine-tuning
CSV_COLUMNS = ("method", "amount", "target", "importance", "allocation", "finetune_iters",
               "params", "gmacs", "param_sparsity", "weight_sparsity", "miou", "dice",
               "latency_ms", "speedup", "score", "images", "onnx")
PLOTS = ("miou_vs_sparsity.png", "latency_vs_sparsity.png", "miou_vs_latency.png")
METHOD_STYLE = {  # colour and marker per method, the same in every plot
    BASE_NAME: ("black", "s"), "filter": ("tab:blue", "o"), "channel": ("tab:orange", "o"),
    "neuron": ("tab:green", "^"), "head": ("tab:red", "v"), "all": ("tab:purple", "D"),
    "unstructured": ("tab:gray", "x"),
}


class SweepError(ValueError):
    """A sweep request that cannot run; the message names the option."""


# --------------------------------------------------------------------------------------------
# Measuring one model file (shared with the ablation)
# --------------------------------------------------------------------------------------------
def onnx_latency_ms(onnx_paths: Dict[Any, str], threads: Optional[int] = None,
                    runs: int = 20, warmup: int = 3) -> Dict[Any, float]:
    """Median ONNX Runtime (CPU) milliseconds of each file's forward pass on a 1x3xSxS input
    (the challenge's latency: the model only), over about ``runs`` timed runs per file taken
    in block-interleaved rounds (``lpcv_segmentation.core.timing``), so that the files compare."""
    import numpy as np

    from lpcv_segmentation.runtime.segmenter import Segmenter
    runners = {}
    for key, path in onnx_paths.items():
        segmenter = Segmenter(path, backend="onnxruntime", device="cpu", threads=threads)
        size = segmenter.input_size
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        runners[key] = (lambda s=segmenter, x=x: s.infer(x))
    rounds = max(1, -(-int(runs) // timing.BLOCK))
    return {key: t.median_ms
            for key, t in timing.interleaved(runners, rounds, warmup=warmup).items()}


def set_latency(row: Dict[str, Any], latency_ms: float) -> None:
    """Replace a row's latency (and the score that depends on it)."""
    row["latency_ms"] = latency_ms
    dice = row.get("dice")
    row["score"] = None if dice in (None, "") else float(dice) / (latency_ms / 1000.0)


def export_and_evaluate(checkpoint: str, data: str, onnx_path: str, precision: str = "fp32",
                        calib_dir: Optional[str] = None, threads: Optional[int] = None,
                        eval_limit: Optional[int] = None, latency_runs: int = 20,
                        calib_images: int = 32) -> Dict[str, Any]:
    """Export ``checkpoint`` to ONNX (``precision``; int8 calibrated on ``calib_dir``) with
    training.export, evaluate that file on the val split with ONNX Runtime on the CPU
    (training.evaluate), and time it (``onnx_latency_ms``). Returns the evaluation with
    ``latency_ms`` and ``score`` from that timing (the evaluation's own per-image median is
    kept as ``eval_latency_ms``) plus ``export``, the export's report."""
    from training.evaluate import evaluate
    from training.export import export_onnx
    report = export_onnx(checkpoint, onnx_path, precision=precision, calib_dir=calib_dir,
                         verify_images=1, calib_images=calib_images)
    result = evaluate(onnx_path, data, "val", backend="onnxruntime", device="cpu",
                      precision=precision, threads=threads, limit=eval_limit, progress=False)
    result["eval_latency_ms"] = result["latency_ms"]
    result["latency_ms"] = onnx_latency_ms({"model": onnx_path}, threads, latency_runs)["model"]
    result["score"] = (None if result["dice"] is None
                       else result["dice"] / (result["latency_ms"] / 1000.0))
    result["export"] = report
    return result


def finetune_only(checkpoint: str, data: str, out_dir: str, iters: int, teacher: Optional[str],
                  config_path: Optional[str], overrides: Sequence[str]) -> str:
    """Fine-tune the unpruned model as a pruned one would be (the sweep's reference); returns
    the checkpoint to measure (the checkpoint itself when ``iters`` is 0)."""
    if iters <= 0:
        return checkpoint
    from lpcv_segmentation.model.checkpoint import read_metadata
    prune_lib._finetune(os.path.abspath(checkpoint), read_metadata(checkpoint), data, out_dir,
                        iters, teacher, config_path, overrides)
    return os.path.join(out_dir, "best.safetensors")


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
def point_name(method: str, amount: float) -> str:
    return "%s_%g" % (method, amount)


def run_sweep(checkpoint: str, data: str, out: str, methods: Sequence[str],
              amounts: Sequence[float], target: str = "sparsity",
              importance: str = prune_lib.DEFAULT_IMPORTANCE,
              allocation: str = "local", finetune_iters: int = 0, teacher: Optional[str] = None,
              config_path: Optional[str] = None, overrides: Sequence[str] = (),
              threads: Optional[int] = None, eval_limit: Optional[int] = None,
              latency_runs: int = 20, resume: bool = False, progress: bool = True,
              round_to: int = prune_lib.DEFAULT_ROUND_TO, eval_data: Optional[str] = None
              ) -> List[Dict[str, Any]]:
    """Every (method, amount) point plus the reference, fine-tuned on ``data`` and evaluated
    on the val split of ``eval_data`` (default ``data``); writes the CSV and the plots."""
    # Check the whole request before the first (slow) point.
    if not methods or not amounts:
        raise SweepError("--methods and --amounts must each name at least one value")
    settings = [prune_lib.PruneSettings(method=m, amount=a, target=target,
                                        importance=prune_lib.importance_for(m, importance),
                                        allocation=allocation,
                                        finetune_iters=finetune_iters, round_to=round_to)
                for m in methods for a in amounts]
    try:
        for s in settings:
            s.validate()
        prune_lib.check_inputs(checkpoint, data, teacher)
        if eval_data is not None:
            from training.data import find_pairs
            find_pairs(eval_data, "val")  # DatasetError names the folder
        from lpcv_segmentation.model.checkpoint import load_checkpoint
        model, _ = load_checkpoint(checkpoint)
        for method in methods:
            prune_lib.check_method_applies(model, method)
    except prune_lib.PruneError as e:
        raise SweepError(str(e))
    del model
    os.makedirs(out, exist_ok=True)

    rows: List[Dict[str, Any]] = []
    started = time.time()
    total = len(settings) + 1
    for index, s in enumerate([None] + settings):
        name = BASE_NAME + "_0" if s is None else point_name(s.method, s.amount)
        point_dir = os.path.join(out, name)
        point_json = os.path.join(point_dir, POINT_JSON)
        if resume and os.path.isfile(point_json):
            with open(point_json, "r", encoding="utf-8") as handle:
                rows.append(json.load(handle))
            continue
        if progress:
            print("[%d/%d] %s (%.0f s so far)" % (index + 1, total, name, time.time() - started),
                  file=sys.stderr, flush=True)
        os.makedirs(point_dir, exist_ok=True)
        if s is None:
            measured = finetune_only(checkpoint, data, point_dir, finetune_iters, teacher,
                                     config_path, overrides)
            pruning: Dict[str, Any] = {}
        else:
            prune_lib.run_prune(checkpoint, data, point_dir, s, teacher=teacher,
                                config_path=config_path, overrides=overrides, progress=False)
            measured = os.path.join(point_dir, "best.safetensors")
            with open(os.path.join(point_dir, "prune.json"), "r", encoding="utf-8") as handle:
                pruning = json.load(handle)["pruning"]
        result = export_and_evaluate(measured, eval_data or data,
                                     os.path.join(point_dir, "model.onnx"),
                                     threads=threads, eval_limit=eval_limit,
                                     latency_runs=latency_runs)
        result["checkpoint"] = os.path.abspath(measured)
        write_json_atomic(os.path.join(point_dir, EVAL_JSON), result)
        row = {
            "method": BASE_NAME if s is None else s.method,
            "amount": 0.0 if s is None else s.amount,
            "target": target, "importance": importance, "allocation": allocation,
            "finetune_iters": finetune_iters,
            "params": result["params"], "gmacs": result["gmacs"],
            "weight_sparsity": pruning.get("weight_sparsity", 0.0),
            "miou": result["miou"], "dice": result["dice"], "latency_ms": result["latency_ms"],
            "score": result["score"], "images": result["images"],
            "onnx": os.path.relpath(os.path.join(point_dir, "model.onnx"), out),
        }
        write_json_atomic(point_json, row)
        rows.append(row)
    retime(rows, out, threads, latency_runs)
    finish_rows(rows)
    write_csv(rows, os.path.join(out, CSV_NAME))
    plot(rows, out)
    return rows


def retime(rows: List[Dict[str, Any]], out: str, threads: Optional[int], rounds: int) -> None:
    """Time every point's ONNX file again in one interleaved pass (``onnx_latency_ms``) so
    that the latencies of the sweep compare with each other."""
    paths = {i: os.path.join(out, str(r["onnx"])) for i, r in enumerate(rows)}
    for i, latency in onnx_latency_ms(paths, threads, rounds).items():
        set_latency(rows[i], latency)


def finish_rows(rows: List[Dict[str, Any]]) -> None:
    """Columns relative to the reference point: parameter sparsity and speed-up."""
    base = next(r for r in rows if r["method"] == BASE_NAME)
    for row in rows:
        row["param_sparsity"] = 1.0 - float(row["params"]) / float(base["params"])
        row["speedup"] = float(base["latency_ms"]) / float(row["latency_ms"])


def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> None:
    write_csv_atomic(path, rows, CSV_COLUMNS, float_format="%.6g")


def read_csv(path: str) -> List[Dict[str, Any]]:
    """Rows of a sweep CSV with numbers as numbers."""
    with open(path, "r", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                pass
    return rows


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def _series(rows: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """{method: its points sorted by amount, each starting at the reference point}."""
    base = [r for r in rows if r["method"] == BASE_NAME]
    out: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if row["method"] != BASE_NAME:
            out.setdefault(str(row["method"]), []).append(row)
    return {m: base + sorted(points, key=lambda r: float(r["amount"]))
            for m, points in out.items()}


def plot(rows: Sequence[Dict[str, Any]], out: str, title: str = "") -> List[str]:
    """Write the three PNGs into ``out``; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(rows)
    figures = [
        (PLOTS[0], "amount", "miou", "sparsity (fraction of each method's units removed)",
         "mean IoU (val)"),
        (PLOTS[1], "amount", "latency_ms", "sparsity (fraction of each method's units removed)",
         "ONNX Runtime latency, CPU (ms)"),
        (PLOTS[2], "latency_ms", "miou", "ONNX Runtime latency, CPU (ms)", "mean IoU (val)"),
    ]
    paths = []
    for filename, x_key, y_key, x_label, y_label in figures:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
        for method, points in series.items():
            color, marker = METHOD_STYLE.get(method, ("tab:brown", "o"))
            xs = [float(p[x_key]) for p in points]
            ys = [float(p[y_key]) if p[y_key] not in (None, "") else float("nan") for p in points]
            linestyle = ":" if method == prune_lib.UNSTRUCTURED else "-"
            ax.plot(xs, ys, marker=marker, color=color, linestyle=linestyle, label=method)
        base = [r for r in rows if r["method"] == BASE_NAME]
        if base and x_key == "amount":
            ax.axhline(float(base[0][y_key]), color="black", linewidth=0.8, linestyle="--",
                       label="unpruned (same fine-tuning)")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path = os.path.join(out, filename)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model to prune")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset (LPCV layout)")
    parser.add_argument("--out", required=True, metavar="DIR", help="sweep folder")
    parser.add_argument("--methods", nargs="+", default=["filter", "channel", "neuron", "head",
                                                         "all", "unstructured"],
                        metavar="METHOD",
                        help="methods to sweep (default: all six); kinds joined by %s "
                             "(filter%shead) make one more" % (prune_lib.KIND_JOINER,
                                                               prune_lib.KIND_JOINER))
    parser.add_argument("--amounts", nargs="+", type=prune_lib._amount,
                        default=[0.2, 0.4, 0.6], metavar="A", help="amounts in (0, 1)")
    parser.add_argument("--target", choices=prune_lib.TARGETS, default="sparsity")
    parser.add_argument("--importance", choices=prune_lib.IMPORTANCES,
                        default=prune_lib.DEFAULT_IMPORTANCE)
    parser.add_argument("--allocation", choices=prune_lib.ALLOCATIONS, default="local")
    parser.add_argument("--round-to", type=int, default=prune_lib.DEFAULT_ROUND_TO, metavar="N",
                        help="round layer widths to a multiple of N, at least N (default %d)"
                             % prune_lib.DEFAULT_ROUND_TO)
    parser.add_argument("--finetune-iters", type=int, default=0, metavar="N",
                        help="fine-tuning iterations per point (and for the reference)")
    parser.add_argument("--teacher", metavar="CKPT", help="distil while fine-tuning")
    parser.add_argument("--config", metavar="CFG", help="fine-tuning config YAML")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime threads for evaluation (default: its own)")
    parser.add_argument("--eval-data", metavar="DIR",
                        help="evaluate every point on this dataset's val split (a test set "
                             "that fine-tuning does not see; default: --data's val split)")
    parser.add_argument("--eval-limit", type=int, default=None, metavar="N",
                        help="evaluate on the first N val images only")
    parser.add_argument("--latency-runs", type=int, default=20, metavar="N",
                        help="timed ONNX Runtime runs per point (median; default 20)")
    parser.add_argument("--resume", action="store_true", help="reuse points OUT already holds")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="fine-tuning config overrides")


def main(args: argparse.Namespace) -> int:
    from lpcv_segmentation.model.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.data import DatasetError
    from training.export import ExportError
    try:
        rows = run_sweep(args.checkpoint, args.data, args.out, args.methods, args.amounts,
                         args.target, args.importance, args.allocation, args.finetune_iters,
                         args.teacher, args.config, args.overrides, args.threads,
                         args.eval_limit, args.latency_runs, args.resume,
                         round_to=args.round_to, eval_data=args.eval_data)
    except (SweepError, prune_lib.PruneError, ConfigError, DatasetError, CheckpointError,
            ExportError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("%-14s %7s %9s %8s %8s %8s %10s %8s" % ("method", "amount", "params", "GMACs",
                                                  "mIoU", "Dice", "ORT ms", "speed-up"))
    for r in rows:
        print("%-14s %7.2f %8.3fM %8.3f %8.4f %8.4f %10.1f %7.2fx"
              % (r["method"], r["amount"], r["params"] / 1e6, r["gmacs"], r["miou"] or 0,
                 r["dice"] or 0, r["latency_ms"], r["speedup"]))
    print("wrote %s and %s" % (os.path.join(args.out, CSV_NAME),
                               ", ".join(os.path.join(args.out, p) for p in PLOTS)))
    return 0
