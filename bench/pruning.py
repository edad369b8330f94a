"""Pruning bench: what structured pruning buys in latency, and what unstructured pruning does not.

For the student (default: the default arch, MobileViT-XXS with a 64-channel UPerNet decoder)
at 288 and 512 input, side by side in one run: the unpruned model, the structured-pruned model
(training.prune ``--method all --amount 0.5`` unless ``--pruned CKPT``), and the same
unpruned model with 50 % of its weights zeroed by unstructured magnitude pruning. For each:
parameters, GMACs, PyTorch eager latency and ONNX Runtime (CPU) latency, and each as a ratio
to the unpruned model. Latency is the median over interleaved rounds (every model in turn runs
a short block of timed calls per round), so drift on a shared machine touches all of them
alike; only the model's forward pass on a pre-processed 1x3xSxS input is timed, after warm-up.

Without checkpoints the models have random weights: speed does not depend on the values
(accuracy is measured by ``python -m training ablation``). Target: the structured-pruned
student runs at least 1.5x faster on ONNX Runtime than the unpruned one.

    .venv/bin/python bench/pruning.py
    .venv/bin/python bench/pruning.py --checkpoint runs/student/best.safetensors \\
        --pruned runs/pruned/best.safetensors --sizes 288 512 --threads 2 --rounds 6
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from common import load_average, set_threads  # noqa: E402
from report import Target, finish, fmt, markdown_table, ratio  # noqa: E402

TARGET_SPEEDUP = 1.5
VARIANTS = ("unpruned", "structured", "unstructured")


def make_models(checkpoint: Optional[str], pruned: Optional[str], arch: str, method: str,
                amount: float, seed: int) -> Dict[str, Any]:
    """{variant: model}: the unpruned student, its structured-pruned and unstructured-pruned
    versions (pruned here unless ``pruned`` names a checkpoint)."""
    import torch
    from lpcv_segmentation.model import build_model, load_checkpoint
    from training import prune
    if checkpoint:
        base, _ = load_checkpoint(checkpoint)
    else:
        torch.manual_seed(seed)
        base = build_model(arch).eval()
    if pruned:
        structured, _ = load_checkpoint(pruned)
    else:
        structured = prune.prune_step(copy.deepcopy(base), method, amount, importance="l2",
                                      round_to=prune.DEFAULT_ROUND_TO)
    unstructured = copy.deepcopy(base)
    prune.prune_unstructured(unstructured, amount)
    return {"unpruned": base.eval(), "structured": structured.eval(),
            "unstructured": unstructured.eval()}


def export_all(models: Dict[str, Any], sizes: Sequence[int], work: str
               ) -> Dict[str, Dict[int, str]]:
    """fp32 ONNX file of every model at every size (checked against PyTorch by the export)."""
    from lpcv_segmentation.model import save_checkpoint
    from training.export import export_onnx
    paths: Dict[str, Dict[int, str]] = {}
    for name, model in models.items():
        checkpoint = os.path.join(work, name + ".safetensors")
        save_checkpoint(checkpoint, model)
        paths[name] = {}
        for size in sizes:
            out = os.path.join(work, "%s_%d.onnx" % (name, size))
            export_onnx(checkpoint, out, input_size=size, verify_images=1)
            paths[name][size] = out
            print("exported %s at %d px" % (name, size), file=sys.stderr, flush=True)
    return paths


BLOCK = 5  # timed runs of one model in a row per round (after one untimed run)


def interleaved_medians(runners: Dict[str, Callable[[], Any]], rounds: int,
                        warmup: int = 2) -> Dict[str, float]:
    """Median milliseconds per call of each runner. Each round runs every model in turn for
    one untimed and BLOCK timed calls: load drift on a shared machine touches all models
    alike, and each block keeps the runtime's worker threads awake as a model in a loop
    has them. (bench/common.py's ``interleaved`` times single calls in turn; on this busy
    machine that made a 2-thread ONNX Runtime session of the unpruned student 6x slower than
    in a loop, its threads asleep at every call, and the ratios meaningless.)"""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            run()
            for _ in range(BLOCK):
                start = time.perf_counter()
                run()
                times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def measure(models: Dict[str, Any], onnx: Dict[str, Dict[int, str]], sizes: Sequence[int],
            threads: int, rounds: int) -> Dict[int, Dict[str, Dict[str, float]]]:
    """{size: {variant: {params, gmacs, eager_ms, ort_ms}}}"""
    import torch
    from lpcv_segmentation.model import count_macs, count_params
    from lpcv_segmentation.runtime import Segmenter
    set_threads(threads)
    # Untrained weights give denormal activations, which PyTorch's CPU kernels compute up to
    # 10x slower (ONNX Runtime flushes them to zero); flush them here too, so that eager
    # timings of random-weight models mean what they would for trained ones.
    torch.set_flush_denormal(True)
    results: Dict[int, Dict[str, Dict[str, float]]] = {}
    for size in sizes:
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        tensor = torch.from_numpy(x)
        segmenters = {n: Segmenter(onnx[n][size], backend="onnxruntime", threads=threads)
                      for n in models}

        def eager(model: Any) -> Callable[[], Any]:
            def run() -> Any:
                with torch.no_grad():
                    return model(tensor)
            return run

        eager_ms = interleaved_medians({n: eager(m) for n, m in models.items()}, rounds)
        ort_ms = interleaved_medians({n: (lambda s=s: s.infer(x)) for n, s in segmenters.items()},
                                     rounds)
        results[size] = {n: {"params": float(count_params(m)), "gmacs": count_macs(m, size),
                             "eager_ms": eager_ms[n], "ort_ms": ort_ms[n]}
                         for n, m in models.items()}
        print("measured %d px" % size, file=sys.stderr, flush=True)
    return results


def section(results: Dict[int, Dict[str, Dict[str, float]]], args: argparse.Namespace,
            sparsity: float) -> (str, List[Target]):
    rows = []
    for size, by_variant in results.items():
        ref = by_variant["unpruned"]
        for name in VARIANTS:
            r = by_variant[name]
            rows.append([size, name, fmt(r["params"] / 1e6, "%.2fM"), fmt(r["gmacs"], "%.3f"),
                         fmt(r["eager_ms"], "%.1f"), fmt(r["ort_ms"], "%.1f"),
                         fmt(ratio(r["params"], ref["params"]), "%.2f"),
                         fmt(ratio(r["gmacs"], ref["gmacs"]), "%.2f"),
                         fmt(ratio(ref["eager_ms"], r["eager_ms"]), "%.2fx"),
                         fmt(ratio(ref["ort_ms"], r["ort_ms"]), "%.2fx")])
    headers = ["input", "model", "params", "GMACs", "eager ms", "ORT ms", "params ratio",
               "MACs ratio", "eager speed-up", "ORT speed-up"]
    what = ("--pruned %s" % args.pruned) if args.pruned else (
        "training.prune --method %s --amount %s (importance l2, per layer, widths rounded "
        "to multiples of 8)" % (args.method, args.amount))
    body = "\n".join([
        "## Pruning: structured vs unstructured, %s" % (args.checkpoint or args.arch),
        "",
        "Structured: %s. Unstructured: %.0f %% of the conv/linear weights zeroed (global "
        "magnitude), shapes unchanged. %d thread(s); median of %d runs per model, in %d "
        "interleaved rounds of %d; speed-up = unpruned ms / model ms. Load average at the "
        "end: %s." % (what, 100 * sparsity, args.threads, args.rounds * BLOCK, args.rounds,
                      BLOCK, fmt(load_average(), "%.1f")),
        "",
        markdown_table(headers, rows),
        "",
        "Unstructured pruning removes no MACs: dense inference runs the same operations on "
        "zeros, so its speed-up stays at about 1.0x.",
    ])
    targets = []
    for size, by_variant in results.items():
        speedup = ratio(by_variant["unpruned"]["ort_ms"], by_variant["structured"]["ort_ms"])
        targets.append(Target("structured-pruned student, ONNX Runtime at %d px" % size,
                              ">= %.1fx faster" % TARGET_SPEEDUP, fmt(speedup, "%.2fx"),
                              None if speedup is None else speedup >= TARGET_SPEEDUP))
    return body, targets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="unpruned student (default: a fresh --arch model)")
    parser.add_argument("--pruned", help="its structured-pruned checkpoint (default: prune here)")
    parser.add_argument("--arch", default="mobilevit_xxs", help="arch without --checkpoint")
    parser.add_argument("--method", default="all", help="pruning method without --pruned")
    parser.add_argument("--amount", type=float, default=0.5,
                        help="structured amount without --pruned, and the unstructured sparsity")
    parser.add_argument("--sizes", type=int, nargs="+", default=[288, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds of %d timed runs per model (default 6)" % BLOCK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the JSON record here")
    args = parser.parse_args(argv)

    from training import prune
    models = make_models(args.checkpoint, args.pruned, args.arch, args.method, args.amount,
                         args.seed)
    sparsity = prune.weight_sparsity(models["unstructured"])
    with tempfile.TemporaryDirectory(prefix="bench_pruning_") as work:
        onnx = export_all(models, args.sizes, work)
        results = measure(models, onnx, args.sizes, args.threads, args.rounds)
    body, targets = section(results, args, sparsity)
    return finish("Pruning", body, targets, args.json,
                  {"results": {str(k): v for k, v in results.items()},
                   "unstructured_sparsity": sparsity})


if __name__ == "__main__":
    sys.exit(main())
