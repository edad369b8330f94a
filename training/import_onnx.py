"""Import a foreign ONNX segmentation model so that this project's runtime runs it unchanged.

    python -m training import-onnx --onnx peer.onnx --out peer_lpcv.onnx --input-size 288 \\
        --mean 123.675 116.28 103.53 --std 58.395 57.12 57.375 --classes lpcv --output-stride 8

The copy written to --out has:
  - the input renamed ``input`` and fixed to 1x3xSxS float32 (S = --input-size);
  - logits ``logits`` of shape 1xCxSxS: when the foreign model's logits are smaller than its
    input (a stride, e.g. 8), a bilinear Resize (half-pixel centres, i.e. PyTorch's
    ``align_corners=False``, mmsegmentation's default) to SxS is appended to the graph, so that
    ``Segmenter``'s post-processing (argmax, nearest resize to the image) does what the foreign
    model's own inference code does (upsample the logits bilinearly, then argmax), and a GPU back
    end runs the upsampling with the rest of the graph;
  - this project's metadata (``metadata_props["lpcv_segmentation"]``, as ``training export``
    writes it): class table, input size, mean and std for RGB scaled to [0, 1], precision, the
    parameter count and where the file came from.

Normalisation: ``--mean``/``--std`` are read on the scale ``--norm-scale`` names. The default,
255, takes them as most model zoos publish them, on 0-255 pixel values (mmsegmentation's
123.675 ...); they are divided by 255 for the metadata, which normalises RGB in [0, 1]:
(x - m) / s = (x/255 - m/255) / (s/255). ``--norm-scale 1`` takes values already on [0, 1]
(0.485 ...). Values that look like the other scale are refused rather than guessed.

The foreign model is run once in ONNX Runtime on a blank input to learn its real output shape;
the stride is the input size over the logits' size and must match --output-stride when given.
Before the copy is written it is loaded through ``lpcv_segmentation.runtime.segmenter.Segmenter`` and its
logits are checked against the foreign model's own, upsampled. Every refusal names the file.
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
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the report as JSON")


def main(args: argparse.Namespace) -> int:
    try:
        report = import_onnx(resolve_model_path(args.onnx), args.out, args.input_size, args.mean, args.std,
                             args.classes, args.norm_scale, args.output_stride)
    except (ImportOnnxError, ZooError) as error:
        print("import-onnx: error: %s" % error, file=sys.stderr)
        return 1
    print("imported %s -> %s: input 1x3x%dx%d, logits stride %d%s, mean %s std %s (RGB in [0, 1]), "
          "%.2fM parameters; runtime check: largest |logit difference| %.2g"
          % (report["onnx"], report["out"], report["input_size"], report["input_size"],
             report["output_stride"],
             " (bilinear upsampling appended)" if report["upsampled_in_graph"] else "",
             ["%.4f" % v for v in report["mean"]], ["%.4f" % v for v in report["std"]],
             report["params"] / 1e6, report["max_abs_diff"]))
    if args.json:
        from lpcv_segmentation.core.fileio import write_json_atomic
        write_json_atomic(args.json, report)
    return 0
