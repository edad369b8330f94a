"""Pruning bench: what structured pruning buys in latency, and what unstructured pruning does not.

For the student (default: the default arch, MobileViT-XXS with a 64-channel UPerNet decoder)
at 288 and 512 input, side by side in one run: the unpruned model, the structured-pruned model
(``python -m training prune`` ``--method all --amount 0.5`` unless ``--pruned CKPT``), and the same
unpruned model with 50 % of its weights zeroed by unstructured magnitude pruning. For each:
parameters, GMACs, PyTorch eager latency and ONNX Runtime (CPU) latency, and each as a ratio
to the unpruned model. Latency is the median over block-interleaved rounds
(``lpcv_segmentation.core.timing``); only the model's forward pass on a pre-processed 1x3xSxS input
is timed, after warm-up.

Without checkpoints the models have random weights: speed does not depend on the values
(accuracy is measured by ``python -m training ablation``). Target: the structured-pruned
student runs at least 1.5x faster on ONNX Runtime than the unpruned one. The LPCV 2023
2nd-place network (``--peer``, bench/peer.py) is timed in the ONNX Runtime rounds and gets a row
at every size and thread count.

    .venv/bin/python bench/pruning.py
    .venv/bin/python bench/pruning.py --checkpoint runs/student/best.safetensors \\
        --pruned runs/pruned/best.safetensors --sizes 288 512 --threads 1 2 --rounds 6
"""
import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from common import load_average, set_threads  # noqa: E402
from lpcv_segmentation.core.timing import BLOCK, interleaved  # noqa: E402
import peer as peer_lib  # noqa: E402
from report import Target, finish, fmt, markdown_table, ratio  # noqa: E402

TARGET_SPEEDUP = 1.5
VARIANTS = ("unpruned", "structured", "unstructured")
PEER = "peer"  # its key in the results, beside the variants


def make_models(checkpoint: Optional[str], pruned: Optional[str], arch: str, method: str,
                amount: float, seed: int) -> Dict[str, Any]:
    """{variant: model}: the unpruned student, its structured-pruned and unstructured-pruned
    versions (pruned here unless ``pruned`` names a checkpoint)."""
    import torch
    from lpcv_segmentation.model.checkpoint import load_checkpoint
    from lpcv_segmentation.model.segmodel import build_model
    from training.pruning.settings import DEFAULT_ROUND_TO
    from training.pruning.structured import prune_by_ratio
    from training.pruning.unstructured import prune_unstructured
    if checkpoint:
        base, _ = load_checkpoint(checkpoint)
    else:
        torch.manual_seed(seed)
        base = build_model(arch).eval()
    if pruned:
        structured, _ = load_checkpoint(pruned)
    else:
        structured = prune_by_ratio(copy.deepcopy(base), method, amount, importance="l2",
                                    round_to=DEFAULT_ROUND_TO)
    unstructured = copy.deepcopy(base)
    prune_unstructured(unstructured, amount)
    return {"unpruned": base.eval(), "structured": structured.eval(),
            "unstructured": unstructured.eval()}


def export_all(models: Dict[str, Any], sizes: Sequence[int], work: str
               ) -> Dict[str, Dict[int, str]]:
    """fp32 ONNX file of every model at every size (checked against PyTorch by the export)."""
    from lpcv_segmentation.model.checkpoint import save_checkpoint
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


def measure(models: Dict[str, Any], onnx: Dict[str, Dict[int, str]], sizes: Sequence[int],
            threads: int, rounds: int, peer_path: Optional[str] = None
            ) -> Dict[int, Dict[str, Dict[str, float]]]:
    """{size: {variant: {params, gmacs, eager_ms, ort_ms}}}, plus {"peer": {"ort_ms", "size"}}
    at each size when ``peer_path`` is given (timed in the ONNX Runtime rounds)."""
    import torch
    from lpcv_segmentation.model.cost import count_macs, count_params
    from lpcv_segmentation.runtime.segmenter import Segmenter
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

        eager_ms = interleaved({n: eager(m) for n, m in models.items()}, rounds)
        ort_runners = {n: (lambda s=s: s.infer(x)) for n, s in segmenters.items()}
        if peer_path:
            ort_runners[PEER] = peer_lib.runner(peer_path, threads)
        ort_ms = interleaved(ort_runners, rounds)
        results[size] = {n: {"params": float(count_params(m)), "gmacs": count_macs(m, size),
                             "eager_ms": eager_ms[n].median_ms, "ort_ms": ort_ms[n].median_ms}
                         for n, m in models.items()}
        if peer_path:
            results[size][PEER] = {"ort_ms": ort_ms[PEER].median_ms,
                                   "size": float(peer_lib.input_size(peer_path))}
        print("measured %d px" % size, file=sys.stderr, flush=True)
    return results


def size_rows(threads: int, size: int, by_variant: Dict[str, Dict[str, float]]
              ) -> List[List[Any]]:
    """The table rows of one thread count and input size: every variant, then the peer."""
    ref, rows = by_variant["unpruned"], []
    for name in VARIANTS:
        r = by_variant[name]
        rows.append([threads, size, name, fmt(r["params"] / 1e6, "%.2fM"),
                     fmt(r["gmacs"], "%.3f"), fmt(r["eager_ms"], "%.1f"),
                     fmt(r["ort_ms"], "%.1f"), fmt(ratio(r["params"], ref["params"]), "%.2f"),
                     fmt(ratio(r["gmacs"], ref["gmacs"]), "%.2f"),
                     fmt(ratio(ref["eager_ms"], r["eager_ms"]), "%.2fx"),
                     fmt(ratio(ref["ort_ms"], r["ort_ms"]), "%.2fx")])
    peer = by_variant.get(PEER)
    if peer:
        rows.append([threads, int(peer["size"]), peer_lib.LABEL, "-", "-", "-",
                     fmt(peer["ort_ms"], "%.1f"), "-", "-", "-",
                     fmt(ratio(ref["ort_ms"], peer["ort_ms"]), "%.2fx")])
    return rows


def section(by_threads: Dict[int, Dict[int, Dict[str, Dict[str, float]]]],
            args: argparse.Namespace, sparsity: float, peer: peer_lib.Peer
            ) -> Tuple[str, List[Target]]:
    rows, targets = [], []
    for threads, results in by_threads.items():
        for size, by_variant in results.items():
            rows += size_rows(threads, size, by_variant)
            speedup = ratio(by_variant["unpruned"]["ort_ms"],
                            by_variant["structured"]["ort_ms"])
            # name both models: other pages time other pruned students against other references
            targets.append(Target("%s vs %s, ONNX Runtime at %d px, %d thread%s"
                                  % (args.pruned or "structured-pruned student",
                                     args.checkpoint or args.arch, size, threads,
                                     "" if threads == 1 else "s"),
                                  ">= %.1fx faster" % TARGET_SPEEDUP, fmt(speedup, "%.2fx"),
                                  None if speedup is None else speedup >= TARGET_SPEEDUP))
    headers = ["threads", "input", "model", "params", "GMACs", "eager ms", "ORT ms",
               "params ratio", "MACs ratio", "eager speed-up", "ORT speed-up"]
    what = ("--pruned %s" % args.pruned) if args.pruned else (
        "python -m training prune --method %s --amount %s (importance l2, per layer, widths rounded "
        "to multiples of 8)" % (args.method, args.amount))
    body = "\n".join([
        "## Pruning: structured vs unstructured, %s" % (args.checkpoint or args.arch),
        "",
        "Structured: %s. Unstructured: %.0f %% of the conv/linear weights zeroed (global "
        "magnitude), shapes unchanged. %s thread(s); median of %d runs per model, in %d "
        "interleaved rounds of %d; speed-up = unpruned ms / model ms (for the peer: unpruned "
        "ORT ms / peer ms, the peer at its own input size, timed in the same rounds). %s Load "
        "average at the end: %s." % (
            what, 100 * sparsity, " and ".join(map(str, by_threads)), args.rounds * BLOCK,
            args.rounds, BLOCK, peer.line(), fmt(load_average(), "%.1f")),
        "",
        markdown_table(headers, rows),
        "",
        "Unstructured pruning removes no MACs: dense inference runs the same operations on "
        "zeros, so its speed-up stays at about 1.0x.",
    ])
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
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts, each timed in its own rounds (default: 1 2)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds of %d timed runs per model (default 6)" % BLOCK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the JSON record here")
    peer_lib.add_argument(parser)
    args = parser.parse_args(argv)
    peer = peer_lib.resolve(parser, args.peer)

    from training.pruning.units import weight_sparsity
    models = make_models(args.checkpoint, args.pruned, args.arch, args.method, args.amount,
                         args.seed)
    sparsity = weight_sparsity(models["unstructured"])
    with tempfile.TemporaryDirectory(prefix="bench_pruning_") as work:
        onnx = export_all(models, args.sizes, work)
        results = {threads: measure(models, onnx, args.sizes, threads, args.rounds, peer.path)
                   for threads in args.threads}
    body, targets = section(results, args, sparsity, peer)
    return finish("Pruning", body, targets, args.json,
                  {"results": {str(t): {str(k): v for k, v in r.items()}
                               for t, r in results.items()},
                   "unstructured_sparsity": sparsity, "peer": peer._asdict()})


if __name__ == "__main__":
    sys.exit(main())
