"""Malformed camera frames: the node stays up, rejects every bad frame, masks every good one.

For each input type (raw sensor_msgs/Image, then sensor_msgs/CompressedImage) a driver process
sends the node a random mix of malformed and good frames over reliable QoS, one at a time: a
good frame waits for its mask (whose size must match the frame), a bad one for the node's
rejected counter (from /diagnostics, published every 20 ms here) to count it. So no frame is
ever replaced in the node's one-frame mailbox, and each outcome is attributed to its frame.

    .venv/bin/python bench/malformed.py                         # 1,000 bad + 100 good frames
    .venv/bin/python bench/malformed.py --bad 100 --good 20 --model MODEL.onnx

Bad raw frames: unsupported encodings, data truncated or padded, zero width or height, a step
shorter than a row, width/height fields that disagree with the data, absurd dimensions, no
data. Bad compressed frames: no data, random bytes, a JPEG header followed by garbage,
truncated JPEG/PNG files, a JPEG with a scrambled header, text. Good frames: random sizes from
61x97 to 1280x720; rgb8, bgr8, rgba8, bgra8, mono8, padded rows; JPEG and PNG.
"""
import argparse
import array
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from node_graph import CAMERA_TOPIC, NodeGraph, NodeGraphError, counters, is_balanced  # noqa: E402
from report import Target, finish, markdown_table  # noqa: E402

INPUT_TYPES = ("raw", "compressed")
DEFAULT_MODEL = BENCH.parent / "models" / "default.onnx"
GOOD_SIZES: List[Tuple[int, int]] = [(512, 512), (480, 640), (240, 320), (61, 97), (720, 1280),
                                     (288, 288), (1, 1)]  # (height, width)
RAW_GOOD_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DIAGNOSTICS_PERIOD_S = 0.02  # fast counters, so the driver can wait for each rejection
WAIT_S = 60.0  # longest wait for one frame's outcome (a slow model on a loaded machine)


# -- frames ------------------------------------------------------------------------------------
def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blocky random RGB picture (compresses like a photo, not like noise)."""
    blocks = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), np.uint8)
    import cv2
    return cv2.resize(blocks, (width, height), interpolation=cv2.INTER_NEAREST)


def good_raw(rng: np.random.Generator):
    """A valid sensor_msgs/Image of random size, encoding and row padding."""
    from lpcv_segmentation.core.imaging import ENCODINGS
    from sensor_msgs.msg import Image
    height, width = GOOD_SIZES[rng.integers(len(GOOD_SIZES))]
    encoding = RAW_GOOD_ENCODINGS[rng.integers(len(RAW_GOOD_ENCODINGS))]
    channels = ENCODINGS[encoding].channels
    pixels = rng.integers(0, 256, (height, width, channels), np.uint8)
    padding = int(rng.integers(0, 9))
    rows = np.concatenate([pixels.reshape(height, width * channels),
                           np.zeros((height, padding), np.uint8)], axis=1)
    return Image(height=height, width=width, encoding=encoding, step=width * channels + padding,
                 data=array.array("B", rows.tobytes()))


def good_compressed(rng: np.random.Generator):
    """A valid JPEG or PNG sensor_msgs/CompressedImage of random size."""
    from lpcv_segmentation.core.imaging import rgb_to_compressed_msg
    height, width = GOOD_SIZES[rng.integers(len(GOOD_SIZES))]
    return rgb_to_compressed_msg(_scene(rng, height, width), ("jpeg", "png")[rng.integers(2)])


def good_size(msg) -> Tuple[int, int]:
    """(height, width) of a good frame, which its mask must have."""
    if hasattr(msg, "format"):
        import cv2
        decoded = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
        return int(decoded.shape[0]), int(decoded.shape[1])
    return int(msg.height), int(msg.width)


def _random_bytes(rng: np.random.Generator, low: int, high: int) -> bytes:
    return rng.integers(0, 256, int(rng.integers(low, high)), np.uint8).tobytes()


def _encoded(rng: np.random.Generator, fmt: str = "jpeg") -> bytes:
    return bytes(good_compressed_of(rng, fmt).data)


def good_compressed_of(rng: np.random.Generator, fmt: str):
    from lpcv_segmentation.core.imaging import rgb_to_compressed_msg
    return rgb_to_compressed_msg(_scene(rng, 120, 160), fmt)


def _raw_with(rng: np.random.Generator, **fields):
    """A good rgb8 frame with some fields replaced (``data`` as bytes)."""
    msg = good_raw(rng)
    msg.encoding = "rgb8"
    msg.step = msg.width * 3
    msg.data = array.array("B", bytes(msg.step * msg.height))
    for name, value in fields.items():
        if callable(value):
            value = value(msg)
        setattr(msg, name, array.array("B", value) if name == "data" else value)
    return msg


def _compressed(fmt: str, data: bytes):
    from sensor_msgs.msg import CompressedImage
    return CompressedImage(format=fmt, data=array.array("B", data))


def _truncated(rng: np.random.Generator, fmt: str) -> bytes:
    data = _encoded(rng, fmt)
    return data[:int(rng.integers(1, len(data)))]


def _scrambled_header(rng: np.random.Generator) -> bytes:
    data = bytearray(_encoded(rng, "jpeg"))
    data[2:40] = rng.integers(0, 256, 38, np.uint8).tobytes()
    return bytes(data)


MalformedBuilder = Callable[[np.random.Generator], object]

BAD_RAW: Dict[str, MalformedBuilder] = {
    "unsupported_encoding": lambda rng: _raw_with(rng, encoding=str(rng.choice(
        ["32FC1", "16UC1", "yuv422", "bayer_rggb8", "", "RGB8", "8UC3", "nv12"]))),
    "data_truncated": lambda rng: _raw_with(
        rng, data=lambda m: bytes(len(m.data) - int(rng.integers(1, len(m.data) + 1)))),
    "data_too_long": lambda rng: _raw_with(
        rng, data=lambda m: bytes(len(m.data) + int(rng.integers(1, 4096)))),
    "zero_size": lambda rng: _raw_with(rng, **({"height": 0} if rng.random() < 0.5
                                               else {"width": 0})),
    "short_step": lambda rng: _raw_with(
        rng, step=lambda m: int(rng.integers(0, m.width * 3)),
        data=lambda m: bytes(m.height * m.step)),
    "width_disagrees": lambda rng: _raw_with(rng, width=lambda m: m.width + int(
        rng.integers(1, 100))),
    "height_disagrees": lambda rng: _raw_with(rng, height=lambda m: m.height + int(
        rng.integers(1, 100))),
    "absurd_size": lambda rng: _raw_with(rng, height=2 ** 31, width=2 ** 31 - 1,
                                         step=2 ** 32 - 1),
    "no_data": lambda rng: _raw_with(rng, data=b""),
}

BAD_COMPRESSED: Dict[str, MalformedBuilder] = {
    "no_data": lambda rng: _compressed("jpeg", b""),
    "random_bytes": lambda rng: _compressed("jpeg", _random_bytes(rng, 1, 20000)),
    "jpeg_header_then_garbage": lambda rng: _compressed(
        "jpeg", _encoded(rng)[:20] + _random_bytes(rng, 1, 20000)),
    "truncated_jpeg": lambda rng: _compressed("jpeg", _truncated(rng, "jpeg")),
    "truncated_png": lambda rng: _compressed("png", _truncated(rng, "png")),
    "scrambled_jpeg_header": lambda rng: _compressed("jpeg", _scrambled_header(rng)),
    "text": lambda rng: _compressed("png", b"this is not an image"),
}

MALFORMED = {"raw": BAD_RAW, "compressed": BAD_COMPRESSED}
GOOD = {"raw": good_raw, "compressed": good_compressed}


class PlannedFrame(NamedTuple):
    kind: str  # "good" or a malformed kind
    good: bool


def make_plan(input_type: str, bad: int, good: int, seed: int) -> List[PlannedFrame]:
    """``bad`` malformed frames and ``good`` good ones, shuffled. Every kind of malformation
    comes at least once when ``bad`` allows, the rest are drawn at random."""
    rng = np.random.default_rng(seed)
    kinds = sorted(MALFORMED[input_type])
    drawn = kinds[:bad] + [kinds[rng.integers(len(kinds))] for _ in range(bad - len(kinds))]
    plan = [PlannedFrame(kind, False) for kind in drawn]
    plan += [PlannedFrame("good", True) for _ in range(good)]
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


# -- driver (child process) ----------------------------------------------------------------------
def drive(args: argparse.Namespace) -> int:
    """Send the plan one frame at a time; print one JSON line with every outcome."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    plan = make_plan(args.type, args.bad, args.good, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    rclpy.init()
    node = rclpy.create_node("malformed_driver")
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    publisher = node.create_publisher(Image if args.type == "raw" else CompressedImage,
                                      CAMERA_TOPIC, QoSProfile(
                                          depth=10, reliability=ReliabilityPolicy.RELIABLE))
    masks: Dict[str, Tuple[int, int]] = {}
    latest: Dict[str, object] = {}

    def on_mask(msg: Image) -> None:
        masks[msg.header.frame_id] = (msg.height, msg.width)

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "frames_received" in values:
                latest.update(values=values, at=time.monotonic())

    node.create_subscription(Image, "/seg/mask", on_mask, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)

    def spin_until(done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            rclpy.spin_once(node, timeout_sec=0.01)
        return True

    def counts_since(begin: float) -> Optional[Dict[str, int]]:
        if latest.get("at", -1.0) <= begin:
            return None
        return counters(latest["values"])

    def taking_frames() -> bool:  # the node subscribes before its model loads: wait for that
        return "values" in latest and latest["values"].get("taking_frames", "true") == "true"

    if not spin_until(lambda: publisher.get_subscription_count() > 0 and taking_frames(), 60):
        print(json.dumps({"error": "the node did not subscribe to %s" % CAMERA_TOPIC}))
        return 1

    outcome = {"missing_mask": [], "wrong_size_mask": [], "bad_with_mask": [],
               "unaccounted_bad": []}
    sent_by_kind: Dict[str, int] = {}
    bad_so_far = 0
    start = time.monotonic()
    progress = _progress(len(plan), "%s frames" % args.type)
    for index, planned in enumerate(plan):
        msg = (GOOD[args.type] if planned.good else MALFORMED[args.type][planned.kind])(rng)
        frame_id = "f%d" % index
        msg.header.frame_id = frame_id
        msg.header.stamp = node.get_clock().now().to_msg()
        size = good_size(msg) if planned.good else None
        sent_at = time.monotonic()
        publisher.publish(msg)
        sent_by_kind[planned.kind] = sent_by_kind.get(planned.kind, 0) + 1
        if planned.good:
            if not spin_until(lambda: frame_id in masks, WAIT_S):
                outcome["missing_mask"].append(frame_id)
            elif masks[frame_id] != size:
                outcome["wrong_size_mask"].append(frame_id)
        else:
            bad_so_far += 1

            def settled() -> bool:
                counts = counts_since(sent_at)
                return frame_id in masks or (
                    counts is not None and counts["rejected"] + counts["dropped"] >= bad_so_far)
            if not spin_until(settled, WAIT_S):
                outcome["unaccounted_bad"].append([frame_id, planned.kind])
            elif frame_id in masks:
                outcome["bad_with_mask"].append([frame_id, planned.kind])
        progress.update(1)
    progress.close()
    seconds = time.monotonic() - start

    # Final counters: every frame has arrived and ended processed, dropped or rejected.
    final_since = time.monotonic()
    spin_until(lambda: counts_since(final_since) is not None
               and counts_since(final_since)["received"] >= len(plan)
               and is_balanced(counts_since(final_since)), 30)
    values = latest.get("values", {})
    print(json.dumps({
        "type": args.type, "sent": len(plan), "good_sent": sum(p.good for p in plan),
        "bad_sent": sum(not p.good for p in plan), "sent_by_kind": sent_by_kind,
        "masks": sum(1 for i, p in enumerate(plan) if p.good and "f%d" % i in masks),
        "counters": counters(values) if values else None,
        "rejected_by_reason": {k[len("rejected: "):]: int(v) for k, v in values.items()
                               if k.startswith("rejected: ")},
        "seconds": seconds, **outcome}), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _progress(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="frame", leave=False, mininterval=2.0,
                file=sys.stderr)


# -- one node, one input type ------------------------------------------------------------------
def run_input_type(work: Path, model: str, backend: str, input_type: str, bad: int, good: int,
                   seed: int) -> Dict[str, object]:
    """Start a node for ``input_type``, drive the plan through it, stop it; the outcome."""
    params = {"input_type": input_type, "input_qos": "reliable",
              "diagnostics_period_s": DIAGNOSTICS_PERIOD_S, "log_period_s": 3600.0}
    graph = NodeGraph(work / input_type, model, backend, params=params, listener=False)
    with graph:
        driver = graph.spawn([sys.executable, __file__, "drive", "--type", input_type,
                              "--bad", str(bad), "--good", str(good), "--seed", str(seed)],
                             "driver.log", stderr_to_terminal=True)  # its progress bar
        limit = 120 + (bad + good) * 2.0
        try:
            driver.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise NodeGraphError("the %s driver did not finish in %.0f s; node log:\n%s"
                                 % (input_type, limit, graph.log_tail())) from None
        lines = [line for line in (graph.work / "driver.log").read_text().splitlines()
                 if line.startswith("{")]
        if driver.returncode != 0 or not lines:
            raise NodeGraphError("the %s driver failed (code %s): %s\nnode log:\n%s"
                                 % (input_type, driver.returncode, lines, graph.log_tail()))
        result = json.loads(lines[-1])
        if "error" in result:
            raise NodeGraphError("%s driver: %s\nnode log:\n%s"
                                 % (input_type, result["error"], graph.log_tail()))
        result["node_alive_after"] = graph.node_alive()
    result["node_exit_code"] = graph.node_exit_code
    result["node_exit_log"] = graph.exit_log_tail
    return result


def check(result: Dict[str, object]) -> Dict[str, bool]:
    """The behaviour asked for, one verdict each."""
    counts = result["counters"] or {}
    return {
        "node stayed up": bool(result["node_alive_after"]),
        "clean exit on SIGINT afterwards": result["node_exit_code"] == 0,
        "every frame reached the node": counts.get("received") == result["sent"],
        "every bad frame counted as rejected": (counts.get("rejected") == result["bad_sent"]
                                                and not result["bad_with_mask"]
                                                and not result["unaccounted_bad"]),
        "every good frame got a mask of its size": (result["masks"] == result["good_sent"]
                                                    and counts.get("processed")
                                                    == result["good_sent"]
                                                    and not result["wrong_size_mask"]),
        "received == processed + dropped + rejected": bool(counts) and is_balanced(counts),
    }


def run(model: str, backend: str, bad: int, good: int, seed: int, work: Path
        ) -> Dict[str, Dict[str, object]]:
    """Both input types; ``bad`` and ``good`` are split between them."""
    results = {}
    for offset, input_type in enumerate(INPUT_TYPES):
        share_bad = bad // 2 + (bad % 2 if offset == 0 else 0)
        share_good = good // 2 + (good % 2 if offset == 0 else 0)
        results[input_type] = run_input_type(work, model, backend, input_type, share_bad,
                                             share_good, seed + offset)
    return results


def section(results: Dict[str, Dict[str, object]], model: str) -> Tuple[str, List[Target]]:
    rows, targets = [], []
    for input_type, result in results.items():
        counts = result["counters"] or {}
        rows.append([input_type, result["bad_sent"], result["good_sent"],
                     counts.get("received", "-"), counts.get("rejected", "-"),
                     counts.get("processed", "-"), counts.get("dropped", "-"), result["masks"],
                     "yes" if result["node_alive_after"] else "**no**",
                     result["node_exit_code"], "%.0f" % result["seconds"]])
        for name, ok in check(result).items():
            targets.append(Target("%s input: %s" % (input_type, name), "yes",
                                  _evidence(name, result), ok))
    details = []
    for input_type, result in results.items():
        kinds = ", ".join("%s %d" % item for item in sorted(result["sent_by_kind"].items())
                          if item[0] != "good")
        reasons = ", ".join("%s %d" % item for item in sorted(result["rejected_by_reason"].items()))
        details.append("- %s: sent %s; the node's rejection reasons: %s."
                       % (input_type, kinds, reasons or "none"))
    for input_type, result in results.items():
        if result.get("node_exit_log"):
            details.append("\nThe %s node exited with code %s after SIGINT; its log ends:\n\n"
                           "```\n%s\n```" % (input_type, result["node_exit_code"],
                                             result["node_exit_log"]))
    body = "\n\n".join([
        "Model %s. Each input type ran in its own node (reliable QoS); the driver sent one "
        "frame at a time and waited for its mask or its rejection." % model,
        markdown_table(["input", "bad sent", "good sent", "received", "rejected", "processed",
                        "dropped", "masks", "node up after", "exit code (SIGINT)", "seconds"],
                       rows),
        "\n".join(details),
    ])
    return body, targets


def _evidence(name: str, result: Dict[str, object]) -> str:
    counts = result["counters"] or {}
    if name == "node stayed up":
        return "alive after the last frame" if result["node_alive_after"] else "exited"
    if name == "clean exit on SIGINT afterwards":
        return "exit code %s" % result["node_exit_code"]
    if name == "every frame reached the node":
        return "%s of %d" % (counts.get("received"), result["sent"])
    if name == "every bad frame counted as rejected":
        text = "%s of %d rejected" % (counts.get("rejected"), result["bad_sent"])
        if result["bad_with_mask"]:
            text += "; given a mask: %s" % result["bad_with_mask"][:5]
        return text
    if name == "every good frame got a mask of its size":
        text = "%d of %d masked" % (result["masks"], result["good_sent"])
        if result["wrong_size_mask"]:
            text += "; wrong size: %s" % result["wrong_size_mask"][:5]
        return text
    return "%(received)s = %(processed)s + %(dropped)s + %(rejected)s" % counts if counts else "-"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "drive"],
                        help="run: the bench; drive: the child process that sends the frames")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model file for the node")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--bad", type=int, default=1000,
                        help="malformed frames in all (half raw, half compressed)")
    parser.add_argument("--good", type=int, default=100, help="good frames in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--type", choices=INPUT_TYPES, default="raw", help="(drive) input type")
    parser.add_argument("--work", default=None, help="folder for logs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.mode == "drive":
        return drive(args)
    if not Path(args.model).is_file():
        print("not available: %s missing" % args.model)
        return 2
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bench_malformed_") as tmp:
        results = run(args.model, args.backend, args.bad, args.good, args.seed,
                      Path(args.work or tmp))
    body, targets = section(results, args.model)
    return finish("Malformed input", body, targets, args.json,
                  {"results": results, "kinds": {t: sorted(MALFORMED[t]) for t in INPUT_TYPES},
                   "verdicts": {t: check(r) for t, r in results.items()}})


if __name__ == "__main__":
    sys.exit(main())
