"""A client process for the node tests: asks the ROS graph what a separate tool would ask.

    python test/node_probe.py endpoints --topic /uav1/camera/image_raw
    python test/node_probe.py lifecycle --node /segmentation_node get
    python test/node_probe.py lifecycle --node /segmentation_node configure activate
    python test/node_probe.py watch --masks 4          # subscribes to seg/mask only
    python test/node_probe.py camera-info --topic /camera/camera_info --width 640 \
        --height 480 --listen /seg/camera_info --count 3

Prints one JSON line. ``endpoints``: the subscriptions and publishers on a topic, each with
its node name and reliability (what ``ros2 topic info -v`` shows). ``lifecycle``: for each
step, ``get`` calls lifecycle_msgs/srv/GetState and any other word is a transition label
sent with lifecycle_msgs/srv/ChangeState; the result lists each step's answer and the state
after it (not asked after a successful shutdown: the node's process ends).
"""
import argparse
import json
import sys
import time
from typing import Dict, List, Optional

SERVICE_TIMEOUT_S = 60.0  # configure loads a model


def _endpoints(node, topic: str) -> Dict[str, List[Dict[str, str]]]:
    def describe(infos) -> List[Dict[str, str]]:
        return [{"node": "%s/%s" % (i.node_namespace.rstrip("/"), i.node_name),
                 "reliability": i.qos_profile.reliability.name,
                 "durability": i.qos_profile.durability.name,
                 "topic_type": i.topic_type} for i in infos]
    return {"subscriptions": describe(node.get_subscriptions_info_by_topic(topic)),
            "publishers": describe(node.get_publishers_info_by_topic(topic))}


def endpoints(args: argparse.Namespace) -> Dict[str, object]:
    """Wait until something is on the topic (discovery), then describe it."""
    import rclpy
    node = rclpy.create_node("test_probe")
    deadline = time.monotonic() + args.wait
    found = _endpoints(node, args.topic)
    while not (found["subscriptions"] or found["publishers"]) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
        found = _endpoints(node, args.topic)
    time.sleep(0.2)
    rclpy.spin_once(node, timeout_sec=0.1)
    return _endpoints(node, args.topic)


def _call(node, client, request):
    import rclpy
    if not client.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S):
        raise SystemExit(json.dumps({"error": "no service %s" % client.srv_name}))
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=SERVICE_TIMEOUT_S)
    if not future.done():
        raise SystemExit(json.dumps({"error": "no answer from %s" % client.srv_name}))
    return future.result()


def lifecycle(args: argparse.Namespace) -> Dict[str, object]:
    import rclpy
    from lifecycle_msgs.srv import ChangeState, GetState

    node = rclpy.create_node("test_lifecycle_client")
    get_state = node.create_client(GetState, "%s/get_state" % args.node)
    change_state = node.create_client(ChangeState, "%s/change_state" % args.node)
    steps = []
    for step in args.steps:
        if step == "get":
            state = _call(node, get_state, GetState.Request()).current_state
            steps.append({"step": "get", "state": state.label})
            continue
        request = ChangeState.Request()
        request.transition.label = step
        success = bool(_call(node, change_state, request).success)
        if step == "shutdown" and success:
            # segmentation_node ends its process once finalized: nothing left to ask.
            steps.append({"step": step, "success": success})
            continue
        state = _call(node, get_state, GetState.Request()).current_state
        steps.append({"step": step, "success": success, "state": state.label})
    return {"steps": steps}


CALIBRATION_K = [500.0, 0.0, 320.0, 0.0, 480.0, 240.0, 0.0, 0.0, 1.0]  # fx, cx, fy, cy at 640x480


def camera_info(args: argparse.Namespace) -> Dict[str, object]:
    """Publish a calibration (CALIBRATION_K, P = [K | 0], an ROI) at 10 Hz as a camera driver
    would, until ``--count`` messages arrived on ``--listen`` or ``--seconds`` passed; the
    messages received."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo

    node = rclpy.create_node("test_camera_driver")
    publisher = node.create_publisher(CameraInfo, args.topic, qos_profile_sensor_data)
    received: List[Dict[str, object]] = []

    def on_info(msg: CameraInfo) -> None:
        received.append({"stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
                         "frame_id": msg.header.frame_id, "width": msg.width,
                         "height": msg.height, "k": [float(v) for v in msg.k],
                         "p": [float(v) for v in msg.p], "d": [float(v) for v in msg.d],
                         "roi": [msg.roi.x_offset, msg.roi.y_offset, msg.roi.width,
                                 msg.roi.height]})

    node.create_subscription(CameraInfo, args.listen, on_info, 10)
    info = CameraInfo(width=args.width, height=args.height, distortion_model="plumb_bob")
    info.header.frame_id = "camera_optical"
    info.k = CALIBRATION_K
    info.p = CALIBRATION_K[0:3] + [0.0] + CALIBRATION_K[3:6] + [0.0] + CALIBRATION_K[6:9] + [0.0]
    info.d = [0.1, -0.2, 0.0, 0.0, 0.0]
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 64, 48, 320, 240
    deadline = time.monotonic() + args.seconds
    next_publish = 0.0
    sent_to_subscriber = 0
    while len(received) < args.count and time.monotonic() < deadline:
        if time.monotonic() >= next_publish:
            info.header.stamp = node.get_clock().now().to_msg()
            publisher.publish(info)
            next_publish = time.monotonic() + 0.1
            if publisher.get_subscription_count() > 0:
                sent_to_subscriber += 1
                if sent_to_subscriber == 5:  # best effort: a few after the match, one arrives
                    print(json.dumps({"event": "calibration delivered"}), flush=True)
        rclpy.spin_once(node, timeout_sec=0.02)
    return {"received": received}


def watch(args: argparse.Namespace) -> Dict[str, object]:
    """Subscribe to ``seg/mask`` (and /diagnostics) only, like a ground station that shows
    just the mask, until a /diagnostics message shows ``--masks`` frames ended (processed,
    dropped or rejected); the masks received and that message's values."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    node = rclpy.create_node("test_mask_watcher")
    masks: List[str] = []
    last: Dict[str, str] = {}
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, "seg/mask", lambda m: masks.append(m.header.frame_id),
                             reliable)

    def on_diagnostics(msg: DiagnosticArray) -> None:
        last.clear()
        last.update({kv.key: kv.value for kv in msg.status[0].values})
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)
    print(json.dumps({"ready": True}), flush=True)

    def settled() -> bool:  # every frame sent has ended processed, dropped or rejected
        ended = sum(int(last.get("frames_" + k, 0)) for k in ("processed", "dropped", "rejected"))
        return ended >= args.masks and ended == int(last.get("frames_received", -1))
    deadline = time.monotonic() + args.seconds
    while rclpy.ok() and time.monotonic() < deadline and not settled():
        rclpy.spin_once(node, timeout_sec=0.05)
    linger = time.monotonic() + 1.0  # masks still on their way
    while rclpy.ok() and time.monotonic() < linger and len(masks) < args.masks:
        rclpy.spin_once(node, timeout_sec=0.05)
    return {"masks": masks, "diagnostics": dict(last)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ends = commands.add_parser("endpoints", help="describe a topic's endpoints")
    ends.add_argument("--topic", required=True)
    ends.add_argument("--wait", type=float, default=20.0, help="seconds to wait for one")
    life = commands.add_parser("lifecycle", help="get the state / run transitions")
    life.add_argument("--node", required=True)
    life.add_argument("steps", nargs="+", help="get, or a transition label (configure, ...)")
    info = commands.add_parser("camera-info", help="publish a calibration, record the node's")
    info.add_argument("--topic", required=True, help="where the camera's camera_info goes")
    info.add_argument("--width", type=int, default=640)
    info.add_argument("--height", type=int, default=480)
    info.add_argument("--listen", required=True, help="the node's camera_info topic")
    info.add_argument("--count", type=int, default=1, help="messages to wait for")
    info.add_argument("--seconds", type=float, default=60.0, help="give up after this")
    mask = commands.add_parser("watch", help="subscribe to seg/mask and /diagnostics only")
    mask.add_argument("--masks", type=int, required=True,
                      help="frames the node must have finished with")
    mask.add_argument("--seconds", type=float, default=60.0, help="give up after this")
    args = parser.parse_args(argv)

    import rclpy
    rclpy.init()
    commands_run = {"endpoints": endpoints, "lifecycle": lifecycle, "camera-info": camera_info,
                    "watch": watch}
    from rclpy.executors import ExternalShutdownException
    try:
        result = commands_run[args.command](args)
    except (KeyboardInterrupt, ExternalShutdownException):  # stopped by whoever started it
        return 130
    finally:
        rclpy.try_shutdown()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
