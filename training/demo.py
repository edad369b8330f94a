"""The demo: a short synthetic flight through the real segmentation node, end to end.

    python -m training demo            (make demo: the same, after setting up .venv)

1. writes a few fresh synthetic disaster scenes (a seed never used for training),
2. turns them into a flight bag (python -m training dataset-to-bag: /camera/image_raw +
   /camera/gt_mask at --rate Hz),
3. starts segmentation_node on the default model (models/default.onnx) and replays the bag
   into it live (python -m lpcv_segmentation.replay.bag_eval --mode live), recording its outputs,
4. prints what a flight would have seen: output rate, end-to-end latency, accuracy against the
   ground truth, detections per class, and the paths of a few overlay PNGs
   (camera | ground truth | prediction).

Everything goes to --out (default out/demo/). The ROS graph stays on this machine
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) in its own domain unless ROS_DOMAIN_ID is set.
Exits non-zero, saying which step failed, if any step of the chain fails.
"""
import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from lpcv_segmentation.core.formatting import fmt

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "out" / "demo"
DEMO_SEED = 2023  # the default model was trained on seed 0's scenes; these are new ones
OUTPUTS = ("data", "flight", "outputs", "overlays", "report.json", "node.log")


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="model for the node (default: models/default.onnx)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="output folder, replaced on each run (default: out/demo)")
    parser.add_argument("--frames", type=int, default=40,
                        help="frames in the flight (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512,
                        help="frame size in pixels, as the LPCV images (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=5.0, metavar="HZ",
                        help="camera rate of the flight (default: %(default)s Hz)")
    parser.add_argument("--overlays", type=int, default=4,
                        help="overlay PNGs to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED,
                        help="scene seed (default: %(default)s, unseen in training)")


def _prepare_out(out: Path) -> None:
    """Remove what an earlier demo wrote there (only the demo's own entries)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _isolate_ros_graph() -> str:
    """Keep the demo's graph on this machine and off other graphs' domains."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if "ROS_DOMAIN_ID" not in os.environ:
        from lpcv_segmentation.replay.node_process import DomainLease
        _LEASES.append(DomainLease())  # held until the demo exits
        os.environ["ROS_DOMAIN_ID"] = str(_LEASES[-1].id)
    return os.environ["ROS_DOMAIN_ID"]


_LEASES: List[Any] = []


class Steps:
    """Runs the demo's steps, timing each, and turns any failure into one DemoError."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def run(self, name: str, function, *args, **kwargs):
        print("[%s] ..." % name, flush=True)
        start = time.time()
        try:
            result = function(*args, **kwargs)
        except DemoError:
            raise
        except Exception as error:  # any failure of the chain ends the demo, named
            raise DemoError("step %r failed: %s: %s" % (name, type(error).__name__, error))
        self.seconds[name] = time.time() - start
        print("[%s] done in %.1f s" % (name, self.seconds[name]), flush=True)
        return result


def summary(report: Dict[str, object], args: argparse.Namespace, model: str,
            out: Path) -> List[str]:
    """The demo's printed summary: one table of what the flight saw."""
    latency = report.get("latency_ms") or {}
    detections = report["detections"]
    rows = [
        ("flight", "%d synthetic frames, %dx%d px, %.3g Hz camera (%s)"
         % (report["frames"], args.size, args.size, args.rate, _relative(args.out / "flight"))),
        ("model", _relative(Path(model))),
        ("frames segmented", "%d of %d (dropped %s, rejected %s, lost %s)"
         % (report["frames_out"], report["frames"], report["dropped"], report["rejected"],
            report["lost"])),
        ("output rate", "%s Hz (camera played at %s Hz)"
         % (fmt(report["output_rate_hz"], "%.2f"), fmt(report["input_rate_hz"], "%.2f"))),
        ("latency, end to end", "p50 %s ms, p95 %s ms, max %s ms"
         % (fmt(latency.get("p50"), "%.0f"), fmt(latency.get("p95"), "%.0f"),
            fmt(latency.get("max"), "%.0f"))),
        ("accuracy vs ground truth", "mIoU %s, Dice %s, pixel accuracy %s (%d frames)"
         % (fmt(report["miou"], "%.3f"), fmt(report["dice"], "%.3f"),
            fmt(report["pixel_acc"], "%.3f"),
            report["scored_frames"])),
    ]
    per_class = detections["per_class"]
    frames_with = detections["frames_with_class"]
    if per_class:
        for i, name in enumerate(sorted(per_class, key=lambda n: -per_class[n])):
            rows.append(("detections per class" if i == 0 else "",
                         "%-26s %3d regions in %d frames" % (name, per_class[name],
                                                             frames_with.get(name, 0))))
    else:
        rows.append(("detections per class", "none"))
    for i, path in enumerate(report["overlays"]):
        rows.append(("overlays" if i == 0 else "", _relative(Path(path))))
    rows.append(("report", "%s; node outputs bag %s; node log %s"
                 % (_relative(out / "report.json"), _relative(out / "outputs"),
                    _relative(out / "node.log"))))
    width = max(len(key) for key, _ in rows)
    return ["%-*s  %s" % (width, key, value) for key, value in rows]


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_demo(args: argparse.Namespace) -> int:
    from lpcv_segmentation.replay.bag_eval import EvalError, LiveOptions, evaluate_live, resolve_model
    from lpcv_segmentation.core.fileio import write_json_atomic
    from training.dataset_to_bag import FlightClock, write_flight_bag
    from training.synth import write_dataset

    if args.frames < 2:
        raise DemoError("--frames must be at least 2, got %d" % args.frames)
    try:
        model = resolve_model(args.model)
    except EvalError as error:
        raise DemoError("step 'model' failed: %s" % error)
    out = args.out
    _prepare_out(out)
    domain = _isolate_ros_graph()
    print("LPCV segmentation demo: %d frames at %g Hz through segmentation_node with %s "
          "(ROS_DOMAIN_ID %s, output in %s)" % (args.frames, args.rate, _relative(Path(model)),
                                                domain, _relative(out)), flush=True)
    steps = Steps()
    steps.run("scenes", write_dataset, out / "data", count=args.frames, size=args.size,
              seed=args.seed, val_fraction=0.0, progress=False)
    steps.run("bag", write_flight_bag, out / "data", "train", out / "flight",
              FlightClock(args.rate), progress=False)
    report = steps.run("replay", evaluate_live, out / "flight", LiveOptions(
        model=model, rate=1.0, record=out / "outputs", overlays_dir=out / "overlays",
        overlay_count=args.overlays, node_log=out / "node.log", progress=False))
    write_json_atomic(out / "report.json", report)
    print()
    for line in summary(report, args, model, out):
        print(line)
    problems = []
    if not report["frames_out"]:
        problems.append("the node segmented none of the %d frames" % report["frames"])
    if report["node"]["exit_code"] not in (0, None):
        problems.append("the node exited with code %s (log %s)" % (report["node"]["exit_code"],
                                                                   report["node"]["log"]))
    if report["miou"] is None:
        problems.append("no frame could be scored against the ground truth")
    if problems:
        raise DemoError("; ".join(problems))
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return run_demo(args)
    except DemoError as error:
        print("demo: error: %s" % error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
