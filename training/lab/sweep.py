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

  OUT/sweep.md                  the dated report: machine, command, model, the table, the plots
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
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lpcv_segmentation.core import timing
from lpcv_segmentation.core.fileio import (atomic_path, write_csv_atomic, write_json_atomic,
                                           write_text_atomic)
from lpcv_segmentation.core.formatting import markdown_table
from training.lab import report as report_lib
from training.lab.settings import EvaluationSettings
from training.pruning.settings import (ALLOCATIONS, DEFAULT_IMPORTANCE, DEFAULT_ROUND_TO,
                                       IMPORTANCES, KIND_JOINER, TARGETS, UNSTRUCTURED,
                                       FinetuneSettings, PruneError, PruneSettings, check_inputs,
                                       importance_for)

CSV_NAME = "sweep.csv"
MD_NAME = "sweep.md"  # the dated report (python -m training sweep)
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


# EvaluationSettings' fields as this command's options
CLI_NAMES = {"threads": "--threads", "eval_limit": "--eval-limit", "latency_runs": "--latency-runs",
             "data": "--eval-data"}


class SweepError(ValueError):
    """A sweep request that cannot run; the message names the option."""


@dataclass(frozen=True)
class SweepSettings:
    """The points of a sweep: every method at every amount, each pruned in one step with the
    same target, importance (``importance_for`` each method), allocation, rounding and
    fine-tuning length."""
    methods: Tuple[str, ...]
    amounts: Tuple[float, ...]
    target: str = "sparsity"
    importance: Optional[str] = DEFAULT_IMPORTANCE
    allocation: str = "local"
    round_to: int = DEFAULT_ROUND_TO
    finetune_iters: int = 0

    def points(self) -> List[PruneSettings]:
        """Each point's pruning request, checked (PruneError names the first bad option)."""
        if not self.methods or not self.amounts:
            raise PruneError("--methods and --amounts must each name at least one value")
        return [PruneSettings(method=m, amount=a, target=self.target,
                              importance=importance_for(m, self.importance),
                              allocation=self.allocation, finetune_iters=self.finetune_iters,
                              round_to=self.round_to).validate()
                for m in self.methods for a in self.amounts]


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


def export_and_evaluate(checkpoint: str, data: str, onnx_path: str,
                        evaluation: EvaluationSettings, precision: str = "fp32",
                        calib_images: int = 32) -> Dict[str, Any]:
    """Export ``checkpoint`` to ONNX (``precision``; int8 calibrated on ``calib_images`` of
    ``data``'s train split) with training.export, evaluate that file with ONNX Runtime on the
    CPU (training.evaluate) on the val split of ``evaluation.dataset(data)`` as
    ``evaluation`` says, and time it (``onnx_latency_ms``). Returns the evaluation with
    ``latency_ms`` and ``score`` from that timing (the evaluation's own per-image median is
    kept as ``eval_latency_ms``) plus ``export``, the export's report."""
    from training.evaluate import Runtime, evaluate
    from training.export import Calibration, export_onnx
    report = export_onnx(checkpoint, onnx_path, precision=precision,
                         calibration=Calibration(data, calib_images) if precision == "int8"
                         else None, verify_images=1)
    result = evaluate(onnx_path, evaluation.dataset(data), "val",
                      Runtime("onnxruntime", "cpu", precision, evaluation.threads),
                      limit=evaluation.eval_limit, progress=False)
    result["eval_latency_ms"] = result["latency_ms"]
    result["latency_ms"] = onnx_latency_ms({"model": onnx_path}, evaluation.threads,
                                           evaluation.latency_runs)["model"]
    result["score"] = (None if result["dice"] is None
                       else result["dice"] / (result["latency_ms"] / 1000.0))
    result["export"] = report
    return result


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
def point_name(method: str, amount: float) -> str:
    return "%s_%g" % (method, amount)


def run_sweep(checkpoint: str, data: str, out: str, sweep: SweepSettings,
              recipe: FinetuneSettings = FinetuneSettings(),
              evaluation: EvaluationSettings = EvaluationSettings(), resume: bool = False,
              progress: bool = True) -> List[Dict[str, Any]]:
    """Every point of ``sweep`` plus the reference, fine-tuned on ``data`` as ``recipe`` says
    and measured as ``evaluation`` says (``export_and_evaluate``); writes the CSV and the
    plots into ``out``. ``resume`` reuses the points ``out`` holds."""
    from training.pruning.finetune import finetune_unpruned
    from training.pruning.request import prune_and_finetune
    # Check the whole request before the first (slow) point.
    try:
        points = sweep.points()
        check_inputs(checkpoint, data)
        recipe.validate()
        evaluation.validate(SweepError, CLI_NAMES.get)
        from lpcv_segmentation.model.checkpoint import load_checkpoint
        from training.pruning.units import check_method_applies
        model, _ = load_checkpoint(checkpoint)
        for method in sweep.methods:
            check_method_applies(model, method)
    except PruneError as e:
        raise SweepError(str(e))
    del model
    os.makedirs(out, exist_ok=True)

    rows: List[Dict[str, Any]] = []
    started = time.time()
    total = len(points) + 1
    for index, point in enumerate([None] + points):
        name = BASE_NAME + "_0" if point is None else point_name(point.method, point.amount)
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
        if point is None:
            measured = finetune_unpruned(checkpoint, data, point_dir, sweep.finetune_iters, recipe)
            pruning: Dict[str, Any] = {}
        else:
            pruning = prune_and_finetune(checkpoint, data, point_dir, point, recipe,
                                         progress=False)["pruning"]
            measured = os.path.join(point_dir, "best.safetensors")
        result = export_and_evaluate(measured, data, os.path.join(point_dir, "model.onnx"),
                                     evaluation)
        result["checkpoint"] = os.path.abspath(measured)
        write_json_atomic(os.path.join(point_dir, EVAL_JSON), result)
        row = {
            "method": BASE_NAME if point is None else point.method,
            "amount": 0.0 if point is None else point.amount,
            "target": sweep.target, "importance": sweep.importance,
            "allocation": sweep.allocation, "finetune_iters": sweep.finetune_iters,
            "params": result["params"], "gmacs": result["gmacs"],
            "weight_sparsity": pruning.get("weight_sparsity", 0.0),
            "miou": result["miou"], "dice": result["dice"], "latency_ms": result["latency_ms"],
            "score": result["score"], "images": result["images"],
            "onnx": os.path.relpath(os.path.join(point_dir, "model.onnx"), out),
        }
        write_json_atomic(point_json, row)
        rows.append(row)
    retime(rows, out, evaluation.threads, evaluation.latency_runs)
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


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """The sweep's table (finished rows: ``finish_rows``)."""
    return markdown_table(
        ["method", "amount", "params", "param. sparsity", "GMACs", "mIoU", "Dice", "ORT ms",
         "speed-up"],
        [[r["method"], "%.2f" % r["amount"], "%.2fM" % (r["params"] / 1e6),
          "%.2f" % r["param_sparsity"], "%.3f" % r["gmacs"], "%.4f" % (r["miou"] or 0.0),
          "%.4f" % (r["dice"] or 0.0), "%.1f" % r["latency_ms"], "%.2fx" % r["speedup"]]
         for r in rows])


def report_markdown(rows: Sequence[Dict[str, Any]], command: str, checkpoint: str,
                    eval_data: str, evaluation: EvaluationSettings) -> str:
    """OUT/sweep.md: the dated report (``training.lab.report``), the table and the plots."""
    return "\n".join([
        report_lib.header("Sparsity sweep", command, ["pruned `%s`" % checkpoint],
                          report_lib.stamp()),
        "Every point exported to fp32 ONNX and evaluated on the val split of %s with ONNX "
        "Runtime on the CPU (%s thread(s)); latency: median of %d timed runs per file, all "
        "files interleaved." % (eval_data, evaluation.threads or "default",
                                evaluation.latency_runs),
        "", markdown(rows), ""] + ["![%s](%s)" % (os.path.splitext(p)[0], p) for p in PLOTS]
        + [""])


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
            linestyle = ":" if method == UNSTRUCTURED else "-"
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
                             "(filter%shead) make one more" % (KIND_JOINER, KIND_JOINER))
    parser.add_argument("--amounts", nargs="+", type=float,
                        default=[0.2, 0.4, 0.6], metavar="A", help="amounts in (0, 1)")
    parser.add_argument("--target", choices=TARGETS, default="sparsity")
    parser.add_argument("--importance", choices=IMPORTANCES, default=DEFAULT_IMPORTANCE)
    parser.add_argument("--allocation", choices=ALLOCATIONS, default="local")
    parser.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, metavar="N",
                        help="round layer widths to a multiple of N, at least N (default %d)"
                             % DEFAULT_ROUND_TO)
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
    sweep = SweepSettings(tuple(args.methods), tuple(args.amounts), args.target, args.importance,
                          args.allocation, args.round_to, args.finetune_iters)
    recipe = FinetuneSettings.of(args.teacher, args.config, args.overrides)
    evaluation = EvaluationSettings(args.threads, args.eval_limit, args.latency_runs,
                                    args.eval_data)
    try:
        rows = run_sweep(args.checkpoint, args.data, args.out, sweep, recipe, evaluation,
                         args.resume)
    except (SweepError, PruneError, ConfigError, DatasetError, CheckpointError,
            ExportError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("%-14s %7s %9s %8s %8s %8s %10s %8s" % ("method", "amount", "params", "GMACs",
                                                  "mIoU", "Dice", "ORT ms", "speed-up"))
    for r in rows:
        print("%-14s %7.2f %8.3fM %8.3f %8.4f %8.4f %10.1f %7.2fx"
              % (r["method"], r["amount"], r["params"] / 1e6, r["gmacs"], r["miou"] or 0,
                 r["dice"] or 0, r["latency_ms"], r["speedup"]))
    report = os.path.join(args.out, MD_NAME)
    write_text_atomic(report, report_markdown(
        rows, getattr(args, "command_line", "python -m training sweep"), args.checkpoint,
        evaluation.dataset(args.data), evaluation))
    print("wrote %s, %s and %s" % (os.path.join(args.out, CSV_NAME), report,
                                   ", ".join(os.path.join(args.out, p) for p in PLOTS)))
    return 0
