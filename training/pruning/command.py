"""Structured pruning that removes structure for real, then fine-tuning (optionally distilled).

The paper this project follows pruned with ``torch.nn.utils.prune`` masks: weights became zero
but every tensor kept its shape, so its "pruned" models ran no faster. Here torch-pruning's
dependency graph cuts coupled layers together, so the result is a smaller dense model (fewer
parameters and MACs) saved in the ordinary checkpoint format, which ``load_checkpoint`` rebuilds.

Methods (what each removes; the layers coupled to it are cut with it):
  filter   encoder convolution filters: the stem, the inverted-residual blocks and the MobileViT
           blocks' convolutions (conv_1x1 sets the transformer width, so cutting it also cuts the
           LayerNorms, q/k/v input columns, projection and MLP output rows of that transformer),
           with the input channels of every layer that reads them (decoder laterals included)
  channel  channels of the UPerNet decoder (pyramid pooling, laterals, FPN, fusion) and the
           classifier's matching input columns; the decoder holds most of the compute at 512
  neuron   hidden units of the transformer MLPs (fc1 rows and the matching fc2 columns)
  head     whole attention heads (their q, k, v rows of qkv and the output projection's columns),
           ranked by importance inside each attention layer; at least one head always stays
  all      head, neuron, filter and channel together
  A+B      the unit kinds named, joined by + (``filter+head``: encoder filters and heads)
  unstructured  global magnitude pruning of single weights, for the comparison the paper plotted:
           the weights become zeros, shapes stay, and dense inference is NOT any faster
The classifier's outputs (the 14 classes) and the 3 input channels are never pruned.

Targets: ``--target sparsity --amount A`` removes the fraction A of each pruned unit (channels of
each convolution group, neurons of each MLP, heads of each attention layer) like the paper's
``amount``; ``--target macs --amount A`` removes structure until the MACs at the model's input
size are at most (1 - A) of the original (the fraction is searched on trial copies).
``--allocation global`` ranks channels and neurons across layers (LAMP scores are made for
this); heads are always ranked inside their layer. ``--round-to N`` rounds each layer's width
to the nearest multiple of N, at least N (with global allocation, down). ``--iterative K``
reaches the target in K equal steps, fine-tuning after each with --finetune-iters / K
iterations; with local allocation each step aims at the widths and heads the cumulative amount
leaves of the original ones, so K steps end where one step does.

  python -m training prune --checkpoint runs/student/best.safetensors --data DIR \\
      --out runs/pruned --method all --target sparsity --amount 0.5 --finetune-iters 2000 \\
      [--teacher runs/teacher/best.safetensors | --no-distil] [--importance lamp --allocation global]

writes RUN_DIR/best.safetensors and RUN_DIR/last.safetensors (the pruned, fine-tuned model, with
``training.pruning`` in its metadata: settings, sizes before and after, heads per attention
layer), RUN_DIR/prune.json (the report) and, when it fine-tunes, RUN_DIR/pruned.safetensors
(the model straight after pruning) with the training loop's config.yaml and metrics.csv.
Fine-tuning runs the project's training loop (training.train) from the checkpoint's own
training config with lr x 0.5; --config and key=value change it. It distils from the unpruned
--checkpoint unless --teacher names another teacher or --no-distil asks for none.
"""
import argparse
import os
import sys
from typing import Any, Dict

from training.pruning.settings import (ALLOCATIONS, DEFAULT_IMPORTANCE, DEFAULT_ROUND_TO,
                                       IMPORTANCES, KIND_JOINER, METHODS, TARGETS, UNSTRUCTURED,
                                       FinetuneSettings, PruneError, PruneSettings,
                                       importance_for)

__all__ = ["format_summary", "add_arguments", "main"]


def format_summary(report: Dict[str, Any]) -> str:
    """Before/after table of a ``prune_and_finetune`` report."""
    b, a = report["before"], report["after"]  # before and after pruning
    rows = [("parameters", "%.3fM" % (b["params"] / 1e6), "%.3fM" % (a["params"] / 1e6),
             a["params"] / max(b["params"], 1)),
            ("GMACs", "%.3f" % b["gmacs"], "%.3f" % a["gmacs"],
             a["gmacs"] / max(b["gmacs"], 1e-12))]
    for key in ("heads", "mlp_neurons", "encoder_filters", "decoder_channels"):
        rows.append((key.replace("_", " "), str(b["units"][key]), str(a["units"][key]),
                     a["units"][key] / max(b["units"][key], 1)))
    lines = ["%-18s %12s %12s %8s" % ("", "before", "after", "ratio")]
    lines += ["%-18s %12s %12s %8.3f" % row for row in rows]
    if report["pruning"]["method"] == UNSTRUCTURED:
        lines.append("weight sparsity %.3f: zeros only, shapes unchanged, no dense speed-up"
                     % a["weight_sparsity"])
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line: python -m training prune
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="model to prune (.safetensors checkpoint with metadata)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="dataset in the LPCV layout (calibration and fine-tuning)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="writes RUN_DIR/best.safetensors, last.safetensors, prune.json")
    parser.add_argument("--method", default="all", metavar="METHOD",
                        help="what to remove: %s (default all), or unit kinds joined by %s "
                             "(filter%shead); unstructured only zeroes weights"
                             % (", ".join(METHODS), KIND_JOINER, KIND_JOINER))
    parser.add_argument("--target", choices=TARGETS, default="sparsity",
                        help="sparsity: remove --amount of each unit; macs: cut MACs by --amount")
    parser.add_argument("--amount", type=float, required=True, metavar="A",
                        help="fraction to remove, strictly between 0 and 1")
    parser.add_argument("--importance", choices=IMPORTANCES, default=None,
                        help="importance score (default %s: |w x dL/dw| on --calib-images "
                             "training images; l1, l2, lamp: weight magnitudes; random: the "
                             "control an importance must beat; unstructured always uses l1)"
                             % DEFAULT_IMPORTANCE)
    parser.add_argument("--allocation", choices=ALLOCATIONS, default="local",
                        help="rank channels per layer (local, default) or across layers (global)")
    parser.add_argument("--finetune-iters", type=int, default=0, metavar="N",
                        help="fine-tuning iterations in all (split over --iterative steps)")
    parser.add_argument("--teacher", default=None, metavar="CKPT",
                        help="distil from this teacher while fine-tuning (default: the "
                             "unpruned --checkpoint itself; a checkpoint, an ONNX file or zoo:NAME)")
    parser.add_argument("--no-distil", action="store_true",
                        help="fine-tune on the labels alone (no teacher)")
    parser.add_argument("--iterative", type=int, default=1, metavar="K",
                        help="reach the amount in K prune + fine-tune steps (default 1)")
    parser.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, metavar="N",
                        help="round the channels and neurons left in each layer to a "
                             "multiple of N, at least N (default %d: faster kernels; 1: exact "
                             "amounts)" % DEFAULT_ROUND_TO)
    parser.add_argument("--calib-images", type=int, default=8, metavar="N",
                        help="training images for Taylor importance (default 8)")
    parser.add_argument("--config", default=None, metavar="CFG",
                        help="fine-tuning config YAML (default: the checkpoint's own training "
                             "config with fine-tuning changes, see docs/compression.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="fine-tuning config overrides, e.g. lr=1e-4 batch_size=4")


def main(args: argparse.Namespace) -> int:
    from lpcv_segmentation.model.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.data import DatasetError
    from training.pruning.request import prune_and_finetune
    from training.train import TrainingError
    # an importance named on the command line is used as given (validate refuses taylor or lamp
    # for unstructured pruning); left out, the method's own default applies
    settings = PruneSettings(method=args.method, amount=args.amount, target=args.target,
                             importance=args.importance or importance_for(args.method, None),
                             allocation=args.allocation, iterative=args.iterative,
                             finetune_iters=args.finetune_iters,
                             calib_images=args.calib_images, round_to=args.round_to)
    try:
        if args.no_distil and args.teacher:
            raise PruneError("--no-distil and --teacher contradict each other; choose one")
        # the standard recovery: the pruned model learns from the model it was cut from
        teacher = None if args.no_distil else (args.teacher or args.checkpoint)
        report = prune_and_finetune(args.checkpoint, args.data, args.out, settings,
                                    FinetuneSettings.of(teacher, args.config, args.overrides))
    except (PruneError, ConfigError, DatasetError, CheckpointError, TrainingError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print(format_summary(report))
    print("wrote %s" % ", ".join(os.path.join(args.out, n)
                                 for n in ("best.safetensors", "last.safetensors", "prune.json")))
    return 0
