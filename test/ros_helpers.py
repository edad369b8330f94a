"""Helper processes for the node tests: a camera publisher and a listener, each its own process.

    python test/ros_helpers.py camera --topic /camera/image_raw --count 10 --rate 10 ...
    python test/ros_helpers.py listen --out DIR --namespace / [--ground]
    python test/ros_helpers.py telemetry --kind fix|rel_alt|heading|camera_info ...

The camera prints one JSON line when done: {"sent": N, "stamps": [[sec, nanosec], ...],
"frame_ids": [...]}. The listener appends one JSON line per message to DIR/events.jsonl (and a
"matched" line whenever the publishers matched to its subscriptions change), and saves the
pixels of images whose frame_id starts with --save-prefix to DIR/<topic name>__<frame_id>.npy;
with --ground it also records the GeoJSON, the confidence and the PNG mask (decoded, as
``mask_png``). ``telemetry`` publishes one vehicle input (a NavSatFix, a relative altitude, a
heading or the camera's camera_info) at a rate until SIGINT.
Tests import this module for the scene and the process environment too.
"""
import argparse
import array
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: import the package from this checkout
    sys.path.insert(0, str(REPO))
from lpcv_segmentation.replay import node_process  # noqa: E402
from lpcv_segmentation.replay.node_process import DomainLease, graph_env  # noqa: E402
from scene import scene_labels, scene_rgb  # noqa: E402,F401  (tests use them)

PROFILE = REPO / "config" / "fastdds_large_frames.xml"
HELPERS = Path(__file__).resolve()

# The kinds of malformed frame the camera can send (the node must reject each).
MALFORMED = ("unsupported_encoding", "data_length", "zero_size", "bad_step", "undecodable")


# -- shared with the tests --------------------------------------------------------------------
def ros_env(domain_id: int, profile: bool = True) -> Dict[str, str]:
    """Environment for a process of one test graph: its own domain, local discovery only
    (``lpcv_segmentation.replay.node_process.graph_env``, with this checkout's profile file)."""
    return graph_env(domain_id, PROFILE if profile else False, pythonpath=[REPO])


_LEASES: List[DomainLease] = []  # held until this process exits


def random_domain_id() -> int:
    """A domain for one test graph that no other graph on the machine holds (any process,
    any test run) for as long as this process lives: see ``node_process.DomainLease``."""
    _LEASES.append(DomainLease())
    return _LEASES[-1].id


def write_palette_model(path: Path, input_size: int = 128) -> Path:
    """An exact ONNX "model" for tests: each pixel gets the class whose colour is nearest.

    A 1x1 convolution scores class k by 2 x.c_k - |c_k|^2 on the normalised pixel x (the
    squared distance up to a term shared by all classes), so an image painted in the class
    colours is segmented into exactly the painted regions. It carries the package's model
    metadata like any exported model, so the real runtime loads it.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lpcv_segmentation.core.classes import NUM_CLASSES, class_table, palette
    from lpcv_segmentation.runtime.segmenter import IMAGENET_MEAN, IMAGENET_STD, METADATA_KEY
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)
    colours = (palette().astype(np.float32) / 255.0 - mean) / std  # (C, 3), normalised
    sharpness = 20.0  # scales the logits so that an exact colour gets a confidence near 1
    weight = (sharpness * 2.0 * colours).reshape(NUM_CLASSES, 3, 1, 1).astype(np.float32)
    bias = (-sharpness * (colours ** 2).sum(axis=1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "weight", "bias"], ["logits"])],
        "palette",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, input_size,
                                                                    input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       [1, NUM_CLASSES, input_size, input_size])],
        initializer=[numpy_helper.from_array(weight, "weight"),
                     numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {"format": "lpcv-seg/1", "arch": "palette", "num_classes": NUM_CLASSES,
                "decoder_channels": 0, "input_size": input_size, "mean": mean.tolist(),
                "std": std.tolist(), "classes": class_table()}
    helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def start(args: List[str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    """Start a process whose stdout and stderr go to ``log`` (pipes could fill and block it)."""
    return node_process.start(args, env, log, cwd=REPO)


def stop(process: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """SIGINT, then wait; kill only this process if it hangs. Returns its exit code."""
    return node_process.stop(process, timeout)


# -- camera -------------------------------------------------------------------------------------
def _frame(args: argparse.Namespace, index: int, rgb: np.ndarray):
    """The message for frame ``index``: good, or malformed in turn as --malformed lists."""
    from sensor_msgs.msg import CompressedImage, Image

    from lpcv_segmentation.core.imaging import numpy_to_image_msg, rgb_to_compressed_msg
    kinds = args.malformed.split(",") if args.malformed else []
    kind = kinds[index % len(kinds)] if kinds else None
    if args.type == "compressed":
        if kind == "undecodable":
            return CompressedImage(format="jpeg", data=array.array("B", b"\xff\xd8 not a jpeg"))
        return rgb_to_compressed_msg(rgb, args.format)
    if kind == "undecodable":
        raise SystemExit("undecodable needs --type compressed")
    if args.encoding == "bgr8":
        msg = numpy_to_image_msg(np.ascontiguousarray(rgb[..., ::-1]), "rgb8")
        msg.encoding = "bgr8"
    else:
        msg = numpy_to_image_msg(rgb, "rgb8")
    if args.padding:
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
        padded = np.concatenate([rows, np.zeros((msg.height, args.padding), np.uint8)], axis=1)
        msg.step += args.padding
        msg.data = array.array("B", padded.tobytes())
    if kind == "unsupported_encoding":
        msg.encoding = "32FC1"
    elif kind == "data_length":
        msg.data = msg.data[:-7]
    elif kind == "zero_size":
        msg = Image(height=0, width=msg.width, encoding="rgb8", step=msg.step)
    elif kind == "bad_step":
        msg.step = msg.width  # shorter than a row of 3 channels, data length still matches
        msg.data = msg.data[:msg.height * msg.step]
    return msg


def spin_until_interrupted(node) -> None:
    """Spin ``node`` until SIGINT (or the context's shutdown), then destroy it and shut down."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def camera(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    rclpy.init()
    node = rclpy.create_node("test_camera")
    qos = (qos_profile_sensor_data if args.qos == "best_effort"
           else QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    msg_type = CompressedImage if args.type == "compressed" else Image
    publisher = node.create_publisher(msg_type, args.topic, qos)
    if not args.no_wait:
        deadline = time.monotonic() + 20.0
        while publisher.get_subscription_count() < args.subscribers and time.monotonic() < deadline:
            time.sleep(0.05)
        if publisher.get_subscription_count() < args.subscribers:
            print(json.dumps({"error": "%d of %d subscribers on %s" % (
                publisher.get_subscription_count(), args.subscribers, args.topic)}), flush=True)
            return 1
        time.sleep(0.3)  # discovery completes on the subscriber's side too
    if args.pattern == "scene":
        rgb = scene_rgb(args.height, args.width)
    else:
        rgb = np.random.default_rng(args.seed).integers(0, 256, (args.height, args.width, 3),
                                                        np.uint8)
    stamps, frame_ids = [], []
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    begin = time.monotonic()
    for index in range(args.count):
        if period:
            time.sleep(max(0.0, begin + index * period - time.monotonic()))
        msg = _frame(args, index, np.roll(rgb, index * args.drift, axis=1) if args.drift
                     else rgb)
        msg.header.frame_id = "%s%d" % (args.frame_id, index) if args.number else args.frame_id
        msg.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(msg)
        stamps.append([msg.header.stamp.sec, msg.header.stamp.nanosec])
        frame_ids.append(msg.header.frame_id)
    time.sleep(0.5)  # reliable QoS: let the last samples go out before the writer is destroyed
    print(json.dumps({"sent": args.count, "stamps": stamps, "frame_ids": frame_ids}), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


# -- listener -----------------------------------------------------------------------------------
def listen(args: argparse.Namespace) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    events = open(out / "events.jsonl", "a")
    rclpy.init()
    node = rclpy.create_node("test_listener", namespace=args.namespace)

    def write(event: Dict[str, object]) -> None:
        event["received"] = time.time()
        events.write(json.dumps(event) + "\n")
        events.flush()

    def on_image(topic: str):
        def callback(msg: Image) -> None:
            write({"topic": topic, "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
                   "frame_id": msg.header.frame_id, "encoding": msg.encoding,
                   "height": msg.height, "width": msg.width, "step": msg.step,
                   "data_len": len(msg.data)})
            if args.save_prefix and msg.header.frame_id.startswith(args.save_prefix):
                channels = msg.step // msg.width
                pixels = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width,
                                                                   channels)
                np.save(out / ("%s__%s.npy" % (topic, msg.header.frame_id)),
                        pixels.squeeze(axis=2) if channels == 1 else pixels)
        return callback

    def on_string(topic: str):
        return lambda msg: write({"topic": topic, "data": json.loads(msg.data)})

    def on_diagnostics(msg: DiagnosticArray) -> None:
        write({"topic": "diagnostics",
               "status": [{"name": s.name, "level": ord(s.level), "message": s.message,
                           "hardware_id": s.hardware_id,
                           "values": {kv.key: kv.value for kv in s.values}}
                          for s in msg.status]})

    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    subscriptions = {}
    for topic in ("mask", "color", "overlay"):
        subscriptions[topic] = node.create_subscription(Image, "seg/" + topic, on_image(topic),
                                                        reliable)
    subscriptions["detections"] = node.create_subscription(
        String, "seg/detections", on_string("detections"), reliable)
    subscriptions["label_info"] = node.create_subscription(
        String, "seg/label_info", on_string("label_info"), latched)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)
    if args.ground:
        _listen_ground(node, args, out, write, on_image, reliable)
    if args.vision_msgs:
        _listen_vision_msgs(node, write, subscriptions, reliable, latched)
    matched: Dict[str, int] = {}

    def report_matches() -> None:
        """One event whenever the number of publishers matched to a subscription changes,
        so that a test can wait for the graph instead of sleeping."""
        counts = {name: sub.get_publisher_count() for name, sub in subscriptions.items()}
        if counts != matched:
            matched.update(counts)
            write({"topic": "matched", "publishers": counts})
    node.create_timer(0.05, report_matches)
    write({"topic": "listener", "state": "ready"})
    try:
        spin_until_interrupted(node)
    finally:
        events.close()
    return 0


def _listen_ground(node, args, out: Path, write, on_image, qos) -> None:
    """The ground-side outputs: GeoJSON, confidence and the PNG mask (decoded here)."""
    import cv2
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String

    def on_png(msg: CompressedImage) -> None:
        write({"topic": "mask_png", "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
               "frame_id": msg.header.frame_id, "format": msg.format,
               "data_len": len(msg.data)})
        if args.save_prefix and msg.header.frame_id.startswith(args.save_prefix):
            labels = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8),
                                  cv2.IMREAD_UNCHANGED)
            np.save(out / ("mask_png__%s.npy" % msg.header.frame_id), labels)

    node.create_subscription(String, "seg/detections_geojson",
                             lambda msg: write({"topic": "geojson",
                                                "data": json.loads(msg.data)}), qos)
    node.create_subscription(Image, "seg/confidence", on_image("confidence"), qos)
    node.create_subscription(CompressedImage, "seg/mask/compressed", on_png, qos)


# -- telemetry ----------------------------------------------------------------------------------
def telemetry(args: argparse.Namespace) -> int:
    """Publish one vehicle input at ``--rate`` Hz until SIGINT, stamped with the clock's now."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, NavSatFix
    from std_msgs.msg import Float64

    rclpy.init()
    node = rclpy.create_node("test_%s" % args.kind)
    if args.kind == "fix":
        msg_type = NavSatFix
        msg = NavSatFix(latitude=args.lat, longitude=args.lon, altitude=args.alt)
        msg.status.status, msg.status.service = 0, 1  # STATUS_FIX, SERVICE_GPS
        msg.header.frame_id = "gps"
    elif args.kind == "camera_info":
        msg_type = CameraInfo
        msg = CameraInfo(width=args.width, height=args.height, distortion_model="plumb_bob")
        cx, cy = args.width / 2.0, args.height / 2.0
        msg.k = [args.fx, 0.0, cx, 0.0, args.fx, cy, 0.0, 0.0, 1.0]
        msg.p = [args.fx, 0.0, cx, 0.0, 0.0, args.fx, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    else:
        msg_type = Float64
        msg = Float64(data=args.value)
    publisher = node.create_publisher(msg_type, args.topic, qos_profile_sensor_data)

    def tick() -> None:
        if hasattr(msg, "header"):
            msg.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(msg)

    node.create_timer(1.0 / args.rate, tick)
    spin_until_interrupted(node)
    return 0


def _listen_vision_msgs(node, write, subscriptions, reliable, latched) -> None:
    """Detection2DArray and LabelInfo (vision_msgs must be importable) as events."""
    from vision_msgs.msg import Detection2DArray, LabelInfo

    def on_array(msg: Detection2DArray) -> None:
        write({"topic": "detection_array",
               "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
               "frame_id": msg.header.frame_id,
               "detections": [{"stamp": [d.header.stamp.sec, d.header.stamp.nanosec],
                               "frame_id": d.header.frame_id,
                               "center": [d.bbox.center.position.x, d.bbox.center.position.y],
                               "size": [d.bbox.size_x, d.bbox.size_y],
                               "results": [[r.hypothesis.class_id, r.hypothesis.score]
                                           for r in d.results]}
                              for d in msg.detections]})

    def on_label_info(msg: LabelInfo) -> None:
        write({"topic": "vision_label_info", "threshold": msg.threshold,
               "class_map": [[c.class_id, c.class_name] for c in msg.class_map]})
    subscriptions["detection_array"] = node.create_subscription(
        Detection2DArray, "seg/detection_array", on_array, reliable)
    subscriptions["vision_label_info"] = node.create_subscription(
        LabelInfo, "seg/vision_label_info", on_label_info, latched)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Camera and listener processes for node tests.")
    commands = parser.add_subparsers(dest="command", required=True)
    cam = commands.add_parser("camera", help="publish frames, then print what was sent")
    cam.add_argument("--topic", default="/camera/image_raw")
    cam.add_argument("--type", default="raw", choices=["raw", "compressed"])
    cam.add_argument("--format", default="jpeg", choices=["jpeg", "png"])
    cam.add_argument("--encoding", default="rgb8", choices=["rgb8", "bgr8"])
    cam.add_argument("--qos", default="best_effort", choices=["best_effort", "reliable"])
    cam.add_argument("--width", type=int, default=160)
    cam.add_argument("--height", type=int, default=120)
    cam.add_argument("--padding", type=int, default=0, help="extra bytes at each row's end")
    cam.add_argument("--pattern", default="scene", choices=["scene", "noise"])
    cam.add_argument("--seed", type=int, default=0)
    cam.add_argument("--count", type=int, default=1)
    cam.add_argument("--rate", type=float, default=10.0, help="Hz; 0: as fast as possible")
    cam.add_argument("--frame-id", default="camera")
    cam.add_argument("--number", action="store_true", help="append the frame index to frame_id")
    cam.add_argument("--drift", type=int, default=0,
                     help="shift the scene this many pixels right per frame (wrapping round)")
    cam.add_argument("--subscribers", type=int, default=1,
                     help="wait for this many matched subscribers before publishing")
    cam.add_argument("--no-wait", action="store_true",
                     help="publish at once, whether or not anyone subscribes (a flood that "
                          "outlives the nodes it feeds)")
    cam.add_argument("--malformed", default="",
                     help="comma-separated kinds sent in turn: %s" % ", ".join(MALFORMED))
    lis = commands.add_parser("listen", help="record the node's outputs until SIGINT")
    lis.add_argument("--out", required=True)
    lis.add_argument("--namespace", default="/")
    lis.add_argument("--save-prefix", default="keep")
    lis.add_argument("--ground", action="store_true",
                     help="also record seg/detections_geojson, seg/confidence, seg/mask/compressed")
    tel = commands.add_parser("telemetry", help="publish one vehicle input until SIGINT")
    tel.add_argument("--kind", required=True, choices=["fix", "rel_alt", "heading", "camera_info"])
    tel.add_argument("--topic", required=True)
    tel.add_argument("--rate", type=float, default=20.0, help="Hz")
    tel.add_argument("--value", type=float, default=0.0, help="rel_alt (m) or heading (deg)")
    tel.add_argument("--lat", type=float, default=0.0)
    tel.add_argument("--lon", type=float, default=0.0)
    tel.add_argument("--alt", type=float, default=0.0)
    tel.add_argument("--width", type=int, default=160, help="camera_info")
    tel.add_argument("--height", type=int, default=120, help="camera_info")
    tel.add_argument("--fx", type=float, default=400.0, help="camera_info: fx = fy")
    lis.add_argument("--vision-msgs", action="store_true",
                     help="also seg/detection_array and seg/vision_label_info (vision_msgs)")
    args = parser.parse_args(argv)
    commands_run = {"camera": camera, "listen": listen, "telemetry": telemetry}
    return commands_run[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
