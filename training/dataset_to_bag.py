"""Write a dataset split as a rosbag2 "flight": one camera frame and its ground truth per step.

Each image of the split becomes, at one header stamp (1/rate apart, in file-name order):
  /camera/image_raw  sensor_msgs/msg/Image  rgb8   the image
  /camera/gt_mask    sensor_msgs/msg/Image  mono8  its label (class index per pixel, 255 ignore)
The bag (MCAP by default, or SQLite 3, plus metadata.yaml) is what ``ros2 bag play`` replays
and what ``python -m lpcv_segmentation.replay.bag_eval`` evaluates.

Examples:
  python -m training dataset-to-bag --data LPCVC_Val --split val --out flights/val_5hz --rate 5
  python -m training dataset-to-bag --data data/synth --split val --out flight --storage sqlite3
"""
import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from tqdm import tqdm

from lpcv_segmentation.replay.bagio import CAMERA_TOPIC, GT_TOPIC, STORAGES, BagError, BagWriter

DEFAULT_RATE_HZ = 5.0
DEFAULT_FRAME_ID = "camera"


@dataclass(frozen=True)
class FlightClock:
    """The stamps of a written flight: frame i at ``start_ns + i / rate_hz`` (``start_ns``
    None: now, as a recording would have)."""
    rate_hz: float = DEFAULT_RATE_HZ
    start_ns: Optional[int] = None


def write_flight_bag(data: Path, split: str, out: Path, clock: FlightClock = FlightClock(),
                     storage: str = "mcap", limit: Optional[int] = None,
                     frame_id: str = DEFAULT_FRAME_ID, progress: bool = True) -> Dict[str, object]:
    """Write the split's (image, label) pairs to a new bag at ``out``, stamped by ``clock``;
    returns a summary. Raises DatasetError for a bad dataset, BagError for a bag that cannot
    be written, ValueError for bad arguments.
    """
    rate_hz, start_ns = clock.rate_hz, clock.start_ns
    from training.data import find_pairs, read_image, read_label

    if not rate_hz > 0:
        raise ValueError("--rate must be > 0 Hz, got %r" % (rate_hz,))
    if limit is not None and limit < 1:
        raise ValueError("--limit must be at least 1, got %r" % (limit,))
    pairs = find_pairs(data, split)
    if limit is not None:
        pairs = pairs[:limit]
    if out.exists():
        raise BagError("%s already exists; a bag is never overwritten, choose a new --out" % out)
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    period_ns = int(round(1e9 / rate_hz))
    size = None
    try:
        with BagWriter(out, storage) as writer:
            for index, (image_path, label_path) in enumerate(
                    tqdm(pairs, desc="dataset-to-bag", unit="frame", disable=not progress)):
                rgb = read_image(image_path)
                label = read_label(label_path)
                if label.shape != rgb.shape[:2]:
                    raise BagError("%s is %dx%d (WxH) but its image %s is %dx%d"
                                   % (label_path, label.shape[1], label.shape[0], image_path,
                                      rgb.shape[1], rgb.shape[0]))
                stamp = start_ns + index * period_ns
                writer.write_image(CAMERA_TOPIC, stamp, rgb, "rgb8", frame_id)
                writer.write_image(GT_TOPIC, stamp, label, "mono8", frame_id)
                size = rgb.shape[:2]
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # we created it: leave no half-written bag
        raise
    return {"bag": str(out), "frames": len(pairs), "rate_hz": rate_hz, "storage": storage,
            "start_ns": start_ns, "duration_s": (len(pairs) - 1) * period_ns / 1e9,
            "size": None if size is None else [int(size[1]), int(size[0])]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="dataset folder in the LPCV layout (IMG/<split>, GT/<split>)")
    parser.add_argument("--split", default="val", help="split to write (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, metavar="BAG",
                        help="bag directory to create (must not exist)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE_HZ, metavar="HZ",
                        help="camera rate the stamps are spaced at (default: %(default)s Hz)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap",
                        help="rosbag2 storage plug-in (default: %(default)s)")
    parser.add_argument("--start-sec", type=float, default=None, metavar="SEC",
                        help="stamp of the first frame, seconds since the epoch "
                             "(default: now; fix it for reproducible bags)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="write only the first N frames")
    parser.add_argument("--frame-id", default=DEFAULT_FRAME_ID,
                        help="header frame_id of both topics (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    from training.data import DatasetError

    start_ns = None if args.start_sec is None else int(round(args.start_sec * 1e9))
    try:
        summary = write_flight_bag(args.data, args.split, args.out,
                                   FlightClock(args.rate, start_ns), args.storage, args.limit,
                                   args.frame_id)
    except (DatasetError, BagError, ValueError, OSError) as error:
        print("dataset-to-bag: error: %s" % error, file=sys.stderr)
        return 1
    print("wrote %d frames (%s px) at %g Hz, %.1f s, to %s (%s): %s + %s"
          % (summary["frames"], "x".join(str(v) for v in summary["size"]), summary["rate_hz"],
             summary["duration_s"], summary["bag"], summary["storage"], CAMERA_TOPIC, GT_TOPIC))
    return 0
