"""Replay a flight bag and measure what the segmentation would deliver.

Two modes over a bag holding /camera/image_raw (rgb8) and /camera/gt_mask (mono8 class
indices, same stamp), as ``python -m training dataset-to-bag`` writes it:

  offline  read each frame and run the ``Segmenter`` on it here: accuracy (mean IoU, Dice)
           and the model's own latency (pre-processing + inference + post-processing).
  live     play the camera topic into a ROS 2 graph at the recorded rate (times --rate)
           against a running segmentation_node (started here, or --node-running), listen to
           /seg/mask and /seg/detections, pair each output to its frame by header stamp and
           report what a flight would see: accuracy against the ground truth, end-to-end
           latency (publish -> mask received), output rate, and the frames that never came
           back (dropped by the node for a newer one, rejected, or lost on the way).

Frames are re-stamped with the time they are played, as a camera stamps its frames, so the
node's own end-to-end figures in /diagnostics mean the same thing in a replay.

Examples:
  python -m lpcv_segmentation.replay.bag_eval --bag flight --json offline.json --mode offline
  python -m lpcv_segmentation.replay.bag_eval --bag flight --json live.json --mode live \\
      --model models/default.onnx --record flight_outputs --overlays out/overlays

The JSON holds at least: mode, frames, frames_out, dropped, rejected, miou, dice,
latency_ms {p50, p95, max, mean}; see docs/replay.md for every key.

This module is the command line; scoring and the offline mode are in ``replay_scoring``,
the panels in ``panels``, the live harness in ``replay_live`` (options: ``LiveOptions``).
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

from lpcv_segmentation.replay.bagio import CAMERA_TOPIC, DETECTIONS_TOPIC, GT_TOPIC, MASK_TOPIC, BagError
from lpcv_segmentation.core.fileio import write_json_atomic
from lpcv_segmentation.core.formatting import fmt
from lpcv_segmentation.replay.live import DEFAULT_NODE_NAME, LiveOptions, evaluate_live
from lpcv_segmentation.replay.scoring import EvalError, evaluate_offline, resolve_model
from lpcv_segmentation.runtime.segmenter import UPSAMPLING

__all__ = ["EvalError", "LiveOptions", "evaluate_live", "evaluate_offline", "resolve_model",
           "build_parser", "run", "main"]

MODES = ("offline", "live")


def summary_lines(report: Dict[str, object]) -> List[str]:
    """A short human-readable summary of a report."""
    latency = report.get("latency_ms") or {}
    lines = ["%s replay of %s" % (report["mode"], report["bag"]),
             "  frames %s  outputs %s  dropped %s  rejected %s  lost %s"
             % (report["frames"], report["frames_out"], fmt(report.get("dropped"), "%s"),
                fmt(report.get("rejected"), "%s"), fmt(report.get("lost"), "%s")),
             "  mIoU %s  Dice %s  pixel acc %s  (%s frames scored)"
             % (fmt(report.get("miou")), fmt(report.get("dice")),
                fmt(report.get("pixel_acc")), report.get("scored_frames")),
             "  latency ms p50 %s  p95 %s  max %s  (%s)"
             % (fmt(latency.get("p50"), "%.1f"), fmt(latency.get("p95"), "%.1f"),
                fmt(latency.get("max"), "%.1f"), report.get("latency_note"))]
    if report["mode"] == "live":
        lines.append("  rate Hz: recorded %s x %s, played %s, output %s"
                     % (fmt(report.get("recorded_rate_hz"), "%.2f"),
                        fmt(report.get("rate_factor")),
                        fmt(report.get("input_rate_hz"), "%.2f"),
                        fmt(report.get("output_rate_hz"), "%.2f")))
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lpcv_segmentation.replay.bag_eval",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bag", type=Path, required=True, help="rosbag2 directory to replay")
    parser.add_argument("--json", type=Path, required=True, metavar="OUT.json",
                        help="write the report here")
    parser.add_argument("--mode", choices=MODES, default="offline",
                        help="offline: Segmenter here; live: against the node (default: "
                             "%(default)s)")
    parser.add_argument("--model", default=None,
                        help="model file or zoo:NAME (default: the shipped models/default.onnx)")
    parser.add_argument("--backend", default=None,
                        help="back end: auto, onnxruntime, pytorch, tensorrt (default: auto; "
                             "live: the params file's)")
    parser.add_argument("--device", default="cpu", help="offline: cpu or cuda (default: cpu)")
    parser.add_argument("--precision", default="fp32", help="offline: fp32, fp16 or int8")
    parser.add_argument("--threads", type=int, default=None, help="offline: inference threads")
    parser.add_argument("--upsample", choices=UPSAMPLING, default=None,
                        help="offline: how a model with strided logits is upsampled: labels "
                             "or logits (default: the model's own, else labels; docs/runtime.md)")
    parser.add_argument("--rate", type=float, default=1.0, metavar="X",
                        help="live: play at the recorded rate times X (default: %(default)s)")
    parser.add_argument("--record", type=Path, default=None, metavar="OUT_BAG",
                        help="live: write the node's /seg/mask and /seg/detections to this bag")
    parser.add_argument("--node-running", action="store_true",
                        help="live: use the segmentation_node already running in this ROS graph "
                             "instead of starting one")
    parser.add_argument("--params-file", type=Path, default=None,
                        help="live: node parameters (default: config/drone.yaml)")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="live: extra node parameter (repeatable)")
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME,
                        help="live: fully qualified node name whose /diagnostics to read "
                             "(default: %(default)s)")
    parser.add_argument("--node-log", type=Path, default=None,
                        help="live: node log file (default: OUT.node.log beside --json)")
    parser.add_argument("--reliable", action="store_true",
                        help="live: publish the camera reliably (for input_qos:=reliable)")
    parser.add_argument("--camera-topic", default=CAMERA_TOPIC)
    parser.add_argument("--gt-topic", default=GT_TOPIC)
    parser.add_argument("--mask-topic", default=MASK_TOPIC)
    parser.add_argument("--detections-topic", default=DETECTIONS_TOPIC)
    parser.add_argument("--overlays", type=Path, default=None, metavar="DIR",
                        help="write camera | ground truth | prediction PNGs of a few frames")
    parser.add_argument("--overlay-count", type=int, default=4,
                        help="how many overlay PNGs, spread over the flight (default: 4)")
    parser.add_argument("--dump", type=Path, default=None, metavar="DIR",
                        help="write DIR/pred/frame_N.png and DIR/gt/frame_N.png of every "
                             "scored frame (for `python -m training score`)")
    parser.add_argument("--startup-timeout", type=float, default=60.0,
                        help="live: seconds to wait for the node (default: %(default)s)")
    parser.add_argument("--drain-timeout", type=float, default=5.0,
                        help="live: seconds without output after which the missing outputs "
                             "are given up (default: %(default)s)")
    parser.add_argument("--no-large-frames-profile", action="store_true",
                        help="live: do not set FASTDDS_DEFAULT_PROFILES_FILE to "
                             "config/fastdds_large_frames.xml")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Run the evaluation the arguments ask for; raises BagError or EvalError."""
    if args.mode == "offline":
        return evaluate_offline(args.bag, args.model, backend=args.backend or "auto",
                                device=args.device, precision=args.precision,
                                threads=args.threads, upsample=args.upsample,
                                camera_topic=args.camera_topic,
                                gt_topic=args.gt_topic, overlays_dir=args.overlays,
                                overlay_count=args.overlay_count, dump_dir=args.dump,
                                progress=not args.quiet)
    return evaluate_live(args.bag, LiveOptions(
        model=args.model, rate=args.rate, start_node=not args.node_running, backend=args.backend,
        params_file=args.params_file, node_params=args.node_param, node_name=args.node_name,
        node_log=args.node_log or args.json.with_suffix(".node.log"),
        camera_topic=args.camera_topic, gt_topic=args.gt_topic, mask_topic=args.mask_topic,
        detections_topic=args.detections_topic, reliable_input=args.reliable,
        record=args.record, overlays_dir=args.overlays, overlay_count=args.overlay_count,
        dump_dir=args.dump, startup_timeout=args.startup_timeout,
        drain_timeout=args.drain_timeout, large_frames_profile=not args.no_large_frames_profile,
        progress=not args.quiet))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (BagError, EvalError) as error:
        print("bag_eval: error: %s" % error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bag_eval: interrupted; no report written", file=sys.stderr)
        return 130
    write_json_atomic(args.json, report)
    for line in summary_lines(report):
        print(line)
    print("wrote %s" % args.json)
    if report["frames"] and not report["frames_out"]:
        print("bag_eval: error: %d frames played, no output paired to any of them"
              % report["frames"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
