"""How many camera frames a subscriber receives, with and without the large-frame DDS profile.

A publisher process (the camera driver) sends FRAMES sensor_msgs/Image frames (WIDTH x HEIGHT
rgb8) at RATE Hz to a subscriber process (the node) on the same machine; each configuration
runs in its own ROS domain. The profile is config/fastdds_large_frames.xml, given to a side
through FASTDDS_DEFAULT_PROFILES_FILE.

    nice -n 5 .venv/bin/python bench/dds_delivery.py     # 300 frames, 512x512, 30 Hz
    nice -n 5 .venv/bin/python bench/dds_delivery.py --frames 100 --width 640 --height 480 --rate 10

Prints a Markdown table: configuration, frames sent, frames delivered, share delivered,
and the median publish-to-receive latency of the delivered frames.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lpcv_segmentation.core.formatting import markdown_header, markdown_row  # noqa: E402
PROFILE = REPO / "config" / "fastdds_large_frames.xml"


class Setup(NamedTuple):
    name: str
    publisher_profile: bool
    subscriber_profile: bool
    qos: str  # best_effort | reliable


SETUPS: List[Setup] = [
    Setup("default transports, best effort", False, False, "best_effort"),
    Setup("profile on both sides, best effort", True, True, "best_effort"),
    Setup("profile on the subscriber (node) only, best effort", False, True, "best_effort"),
    Setup("profile on the publisher (camera) only, best effort", True, False, "best_effort"),
    Setup("default transports, reliable", False, False, "reliable"),
]


def _qos(name: str):
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    if name == "best_effort":
        return qos_profile_sensor_data
    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def publish(args: argparse.Namespace) -> int:
    """Child process: wait for the subscriber, send the frames at the rate, then exit."""
    import array

    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_delivery_publisher")
    publisher = node.create_publisher(Image, "bench/image", _qos(args.qos))
    deadline = time.monotonic() + 10.0
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let discovery settle on both sides
    pixels = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), np.uint8)
    msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
    msg.data = array.array("B", pixels.tobytes())
    period = 1.0 / args.rate
    start = time.monotonic()
    for index in range(args.frames):
        time.sleep(max(0.0, start + index * period - time.monotonic()))
        msg.header.frame_id = str(index)
        msg.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(msg)
    time.sleep(1.0)  # let reliable retransmissions finish before the writer goes
    node.destroy_node()
    rclpy.shutdown()
    return 0


def subscribe(args: argparse.Namespace) -> int:
    """Child process: count distinct frames until the publisher has gone quiet; print JSON."""
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_delivery_subscriber")
    received: Dict[str, float] = {}
    last_arrival = [time.monotonic()]

    def on_image(msg: Image) -> None:
        now_ns = node.get_clock().now().nanoseconds
        sent_ns = msg.header.stamp.sec * 1000000000 + msg.header.stamp.nanosec
        received[msg.header.frame_id] = (now_ns - sent_ns) / 1e6
        last_arrival[0] = time.monotonic()

    node.create_subscription(Image, "bench/image", on_image, _qos(args.qos))
    # Done when every frame is in, or 3 s after the last one (the rest are lost), or when
    # nothing came at all in the time the publisher needs.
    deadline = time.monotonic() + 15.0 + args.frames / args.rate
    while (time.monotonic() < deadline and len(received) < args.frames
           and not (received and time.monotonic() - last_arrival[0] > 3.0)):
        rclpy.spin_once(node, timeout_sec=0.1)
    latencies = sorted(received.values())
    print(json.dumps({"delivered": len(received),
                      "median_latency_ms": latencies[len(latencies) // 2] if latencies else None}))
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _env(domain: int, with_profile: bool) -> Dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RMW_IMPLEMENTATION="rmw_fastrtps_cpp")
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if with_profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    return env


def run_setup(setup: Setup, args: argparse.Namespace, domain: int) -> Dict[str, object]:
    common = ["--frames", str(args.frames), "--rate", str(args.rate), "--width", str(args.width),
              "--height", str(args.height), "--qos", setup.qos]
    subscriber = subprocess.Popen([sys.executable, __file__, "subscribe"] + common,
                                  env=_env(domain, setup.subscriber_profile),
                                  stdout=subprocess.PIPE, text=True)
    publisher = subprocess.Popen([sys.executable, __file__, "publish"] + common,
                                 env=_env(domain, setup.publisher_profile))
    publisher.wait()
    out, _ = subscriber.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"delivered": 0, "median_latency_ms": None}
    return dict(result, sent=args.frames)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "publish", "subscribe"],
                        help="run: every configuration (the others are its child processes)")
    parser.add_argument("--frames", type=int, default=300, help="frames to send")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--width", type=int, default=512, help="image width (px)")
    parser.add_argument("--height", type=int, default=512, help="image height (px)")
    parser.add_argument("--qos", default="best_effort", choices=["best_effort", "reliable"],
                        help="(child processes) reliability")
    args = parser.parse_args(argv)
    if args.mode == "publish":
        return publish(args)
    if args.mode == "subscribe":
        return subscribe(args)

    print("%d frames of %dx%d rgb8 (%d KiB) at %g Hz, publisher and subscriber in separate "
          "processes\n" % (args.frames, args.width, args.height,
                           args.width * args.height * 3 // 1024, args.rate))
    print(markdown_header(["configuration", "sent", "delivered", "share", "median latency (ms)"]))
    base_domain = random.randint(100, 200)
    for offset, setup in enumerate(SETUPS):
        result = run_setup(setup, args, base_domain + offset)
        latency = result["median_latency_ms"]
        print(markdown_row([setup.name, result["sent"], result["delivered"],
                            "%.0f%%" % (100.0 * result["delivered"] / result["sent"]),
                            "-" if latency is None else "%.1f" % latency]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
