"""Import a foreign ONNX segmentation model so that this project's runtime runs it unchanged.

    python -m training import-onnx --onnx peer.onnx --out peer_lpcv.onnx --input-size 288 \\
        --mean 123.675 116.28 103.53 --std 58.395 57.12 57.375 --classes lpcv --output-stride 8

What the copy holds, and how normalisation scales and strides are read:
``lpcv_segmentation.runtime.onnx_import`` (the zoo wraps its downloads with the same code).
Every refusal names the file.
"""
import argparse
import sys

from lpcv_segmentation.runtime.onnx_import import (CLASS_TABLES, NORM_SCALES, ImportOnnxError,
                                                   import_onnx, normalisation_to_unit_scale,
                                                   upsample_logits)
from lpcv_segmentation.zoo import ZooError, resolve_model_path

__all__ = ["ImportOnnxError", "CLASS_TABLES", "NORM_SCALES", "normalisation_to_unit_scale",
           "import_onnx", "upsample_logits", "add_arguments", "main"]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", required=True, metavar="FILE",
                        help="foreign ONNX model (or zoo:NAME, a cached zoo model)")
    parser.add_argument("--out", required=True, metavar="FILE.onnx", help="the copy to write")
    parser.add_argument("--input-size", type=int, required=True, metavar="S",
                        help="square input side the model takes (1x3xSxS)")
    parser.add_argument("--mean", type=float, nargs=3, required=True, metavar=("R", "G", "B"),
                        help="normalisation mean, on the --norm-scale range")
    parser.add_argument("--std", type=float, nargs=3, required=True, metavar=("R", "G", "B"),
                        help="normalisation std, on the --norm-scale range")
    parser.add_argument("--norm-scale", type=float, choices=NORM_SCALES, default=255.0,
                        metavar="{255,1}",
                        help="range --mean/--std are given on: 255 (pixel values, "
                             "mmsegmentation's 123.675 ...; the default) or 1 (RGB in [0, 1])")
    parser.add_argument("--classes", default="lpcv", help="class table the logits follow "
                        "(known: %s; default %%(default)s)" % ", ".join(CLASS_TABLES))
    parser.add_argument("--output-stride", type=int, default=None, metavar="N",
                        help="the stride of the logits, checked against the model (default: "
                             "read from the model)")
    parser.add_argument("--keep-stride", action="store_true",
                        help="leave strided logits at their stride (the metadata records "
                             "output_stride; the runtime upsamples them) instead of appending "
                             "a bilinear resize to the graph")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the report as JSON")


def main(args: argparse.Namespace) -> int:
    try:
        report = import_onnx(resolve_model_path(args.onnx), args.out, args.input_size, args.mean, args.std,
                             args.classes, args.norm_scale, args.output_stride,
                             keep_stride=args.keep_stride)
    except (ImportOnnxError, ZooError) as error:
        print("import-onnx: error: %s" % error, file=sys.stderr)
        return 1
    print("imported %s -> %s: input 1x3x%dx%d, logits stride %d%s, mean %s std %s (RGB in [0, 1]), "
          "%.2fM parameters; runtime check: largest |logit difference| %.2g"
          % (report["onnx"], report["out"], report["input_size"], report["input_size"],
             report["output_stride"],
             " (bilinear upsampling appended)" if report["upsampled_in_graph"]
             else " (kept; the runtime upsamples)" if report["output_stride"] > 1 else "",
             ["%.4f" % v for v in report["mean"]], ["%.4f" % v for v in report["std"]],
             report["params"] / 1e6, report["max_abs_diff"]))
    if args.json:
        from lpcv_segmentation.core.fileio import write_json_atomic
        write_json_atomic(args.json, report)
    return 0
