"""``python -m training <command> --help``: the offline pipeline's sub-commands.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``;
modules are imported only when their command runs, so ``--help`` stays fast and a command
does not pay for the others' imports (torch, onnx, rosbags).
"""
import argparse
import importlib
import shlex
import sys
from typing import List, Optional

# command -> (module, one-line help)
COMMANDS = {
    "synth": ("training.synth", "write a deterministic synthetic disaster-scene dataset"),
    "score": ("training.score", "score prediction PNGs against label PNGs (mIoU, Dice)"),
    "train": ("training.train", "train a model (optionally distilled from a teacher)"),
    "distill": ("training.distill", "distil a student from any teacher on unlabelled image "
                "folders and flight bags"),
    "evaluate": ("training.evaluate", "evaluate a checkpoint, ONNX model or engine"),
    "export": ("training.export", "export a checkpoint to ONNX (fp32/fp16/int8) or TensorRT"),
    "import-onnx": ("training.import_onnx", "copy a foreign ONNX segmentation model with this "
                    "project's metadata"),
    "prune": ("training.pruning.command", "structured pruning with fine-tuning"),
    "sweep": ("training.lab.sweep", "sparsity sweep: prune, fine-tune, evaluate, plot"),
    "ablation": ("training.lab.ablation", "ablation table: baseline, +KD, +pruning, +fp16/int8"),
    "pareto": ("training.lab.pareto", "mIoU against ONNX Runtime latency: decoders x pruning x input size"),
    "import-dataset": ("training.import_dataset",
                       "convert a colour/index-labelled UAV dataset into the LPCV layout"),
    "dataset-to-bag": ("training.dataset_to_bag", "write a dataset split as a rosbag2 flight"),
    "default-model": ("training.lab.default_model", "build the shipped default model end to end"),
    "demo": ("training.demo", "replay a synthetic flight through the node and summarise it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and not argv[0].startswith("-"):
            parser.error("unknown command %r (choose from %s)" % (argv[0], ", ".join(COMMANDS)))
        parser.print_help()
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog="python -m training " + name,
                                     description=(module.__doc__ or help_text).strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    # Intermixed: `key=value` overrides may stand before or after the options.
    args = parser.parse_intermixed_args(argv[1:])
    # the command as typed, for the reports that name the command that made them
    args.command_line = " ".join(["python -m training"] + [shlex.quote(a) for a in argv])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
