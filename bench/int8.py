"""int8 bench: which static quantisation is faster than fp32 on ONNX Runtime (CPU) for this
model, at what accuracy.

For an fp32 ONNX file (exported by ``python -m training export``), every recipe of
``training.export.INT8_RECIPES`` (QDQ or QOperator, per-channel or per-tensor weights, which
operator types are quantised; the rest stays fp32) is made with ``training.export.quantize_int8``
calibrated on the dataset's train split, scored on its whole val split (mIoU and pixel agreement
with fp32, ``training.export.evaluate_files``) and timed against fp32 side by side with the
block-interleaved timer (``training.lab.sweep.onnx_latency_ms``), at each
thread count. Reported: each recipe's latency as a ratio to fp32 (below 1 = faster) and its
mIoU change.

    .venv/bin/python bench/int8.py --onnx models/default.onnx --data runs/synth_pareto
    .venv/bin/python bench/int8.py --onnx M.onnx --data DIR --recipes qdq_conv qoperator_conv \\
        --threads 1 2 --runs 40 --json runs/int8.json
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from common import load_average  # noqa: E402
from report import markdown_table  # noqa: E402

MAX_MIOU_DROP = 0.01  # int8 within 0.01 mIoU of fp32, or its speed is not worth having


def calibration_arrays(fp32_path: str, pairs: Sequence[Any]) -> List[Any]:
    """Pre-processed (1,3,S,S) inputs of the calibration images, as the export makes them."""
    from lpcv_segmentation.runtime.segmenter import Segmenter, preprocess
    from training.data import read_image
    meta = Segmenter(fp32_path, backend="onnxruntime").metadata
    size = int(meta["input_size"])
    return [preprocess(read_image(p), size, meta["mean"], meta["std"]) for p, _ in pairs]


def run(fp32_path: str, data: str, recipes: Sequence[str], calib_images: int, calib_method: str,
        threads: Sequence[int], runs: int, workdir: str) -> Dict[str, Any]:
    from tqdm import tqdm

    from training.data import find_pairs
    from training.export import dataset_pairs, evaluate_files, quantize_int8
    from training.lab.sweep import onnx_latency_ms

    calib_pairs, _, _, _ = dataset_pairs(data, calib_images)
    eval_split = "val"
    eval_pairs = find_pairs(data, eval_split)  # the whole val split
    arrays = calibration_arrays(fp32_path, calib_pairs)
    files = {"fp32": fp32_path}
    for recipe in tqdm(recipes, desc="quantise", unit="recipe"):
        files[recipe] = os.path.join(workdir, recipe + ".onnx")
        quantize_int8(fp32_path, files[recipe], arrays, calib_method, recipe)
    accuracy = evaluate_files(files, eval_pairs)
    latency = {}
    for count in threads:
        print("timing %d files interleaved, %d thread(s), %d runs each (load %.1f)"
              % (len(files), count, runs, load_average() or 0.0), file=sys.stderr)
        latency[count] = onnx_latency_ms(files, threads=count, runs=runs)
    rows = []
    for name in files:
        row = {"variant": name, "miou": accuracy[name]["miou"],
               "miou_change": accuracy[name]["miou"] - accuracy["fp32"]["miou"],
               "agreement_with_fp32": accuracy[name]["agreement_with_fp32"],
               "bytes": os.path.getsize(files[name])}
        for count in threads:
            row["ms_%dt" % count] = latency[count][name]
            row["ratio_%dt" % count] = latency[count][name] / latency[count]["fp32"]
        rows.append(row)
    return {"fp32": os.path.abspath(fp32_path), "data": os.path.abspath(data),
            "eval_split": eval_split, "eval_images": len(eval_pairs),
            "calib_images": len(calib_pairs), "calib_method": calib_method,
            "threads": list(threads), "runs": runs, "load_average": load_average(), "rows": rows}


def markdown(result: Dict[str, Any]) -> str:
    threads = result["threads"]
    head = ["variant", "mIoU", "change", "agreement"]
    for count in threads:
        head += ["ms (%dt)" % count, "x fp32 (%dt)" % count]
    rows = []
    for r in result["rows"]:
        cells = [r["variant"], "%.4f" % r["miou"], "%+.4f" % r["miou_change"],
                 "%.2f%%" % (100 * r["agreement_with_fp32"])]
        for count in threads:
            cells += ["%.2f" % r["ms_%dt" % count], "%.2f" % r["ratio_%dt" % count]]
        rows.append(cells)
    lines = [markdown_table(head, rows)]
    ok = [r for r in result["rows"] if r["variant"] != "fp32"
          and r["miou_change"] >= -MAX_MIOU_DROP and all(r["ratio_%dt" % c] < 1.0 for c in threads)]
    best = min(ok, key=lambda r: sum(r["ratio_%dt" % c] for c in threads)) if ok else None
    lines.append("")
    lines.append("%d val images, %d calibration images (%s), %d runs per file, load average %.1f. "
                 "Faster than fp32 at every thread count within %.2f mIoU: %s."
                 % (result["eval_images"], result["calib_images"], result["calib_method"],
                    result["runs"], result["load_average"] or 0.0, MAX_MIOU_DROP,
                    best["variant"] if best else "none"))
    return "\n".join(lines)


def main(argv: Sequence[str] = None) -> int:
    from training.export import CALIB_METHODS, INT8_RECIPES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="fp32 ONNX model with lpcv metadata")
    parser.add_argument("--data", required=True, help="dataset root (train: calibration, val: mIoU)")
    parser.add_argument("--recipes", nargs="+", default=list(INT8_RECIPES), choices=list(INT8_RECIPES),
                        metavar="RECIPE", help="recipes to compare (default: all of %s)"
                        % ", ".join(INT8_RECIPES))
    parser.add_argument("--calib-images", type=int, default=32, help="default %(default)s")
    parser.add_argument("--calib-method", choices=CALIB_METHODS, default="percentile")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="default 1 2")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per file (default 40)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    for path, what in ((args.onnx, "--onnx"), (args.data, "--data")):
        if not os.path.exists(path):
            parser.error("%s %s does not exist" % (what, path))
    with tempfile.TemporaryDirectory(prefix="int8_bench_") as workdir:
        result = run(args.onnx, args.data, args.recipes, args.calib_images, args.calib_method,
                     args.threads, args.runs, workdir)
    if args.json:
        from lpcv_segmentation.core.fileio import write_json_atomic
        write_json_atomic(args.json, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
