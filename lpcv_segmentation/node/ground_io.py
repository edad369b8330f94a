"""The node's ROS side of ``ground.GroundSide``: its subscriptions, publishers and hooks.

Subscriptions (only with ``fix_topic`` set): the fix, the height source's topic and the
heading, best effort (MAVROS publishes them as sensor data; best effort takes reliable
publishers too). Publishers: ``geojson_topic``, ``confidence_topic`` and
``<mask_topic>/compressed``. The node calls ``wanted`` (which outputs to build), ``annotate``
(the detections' ground positions and tracks, the log, the capture) and ``publish``; each
output is built only while someone subscribes to it, and nothing runs without its inputs.
"""
import json
import time

from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, NavSatFix, Range
from std_msgs.msg import Float64, String

from lpcv_segmentation.core.imaging import numpy_to_image_msg
from lpcv_segmentation.node.config import GroundConfig
from lpcv_segmentation.node.ground import GroundSide
from lpcv_segmentation.node.link import confidence_mono8, png_mask_msg
from lpcv_segmentation.node.pipeline import FrameOutputs, Wanted

__all__ = ["GroundIO", "compressed_topic"]


def compressed_topic(image_topic: str) -> str:
    """image_transport's name of the compressed stream of ``image_topic``."""
    return image_topic.rstrip("/") + "/compressed"


def _listened(publisher) -> bool:
    return publisher is not None and publisher.get_subscription_count() > 0


class GroundIO:
    """Built at configure (publishers), subscribed at activate, called per frame."""

    def __init__(self, node, config: GroundConfig, mask_topic: str, camera_info_topic: str,
                 publisher) -> None:
        """``publisher(msg_type, topic)``: the node's own publisher factory (qos_overrides)."""
        self.node = node
        self.config = config
        self.side = GroundSide(config, camera_info_topic)
        if self.side.missing_package:
            node.get_logger().warning("%s; detections stay in pixels (or fix_topic:='')"
                                      % self.side.missing_package)
        self.geojson_pub = publisher(String, config.geojson_topic)
        self.confidence_pub = publisher(Image, config.confidence_topic)
        self.png_pub = publisher(CompressedImage, compressed_topic(mask_topic))

    # -- subscriptions ------------------------------------------------------------------------
    def subscribe(self):
        """The telemetry subscriptions (a list, empty without ``fix_topic``)."""
        config, telemetry = self.config, self.side.telemetry
        if telemetry is None:
            return []
        node, qos = self.node, qos_profile_sensor_data
        subscriptions = [node.create_subscription(NavSatFix, config.fix_topic,
                                                  telemetry.add_fix, qos),
                         node.create_subscription(Float64, config.heading_topic,
                                                  self._on_heading, qos)]
        if config.height_source == "rel_alt":
            subscriptions.append(node.create_subscription(Float64, config.rel_alt_topic,
                                                          self._on_rel_alt, qos))
        elif config.height_source == "range":
            subscriptions.append(node.create_subscription(Range, config.range_topic,
                                                          telemetry.add_range, qos))
        return subscriptions

    def _now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _on_heading(self, msg: Float64) -> None:
        self.side.telemetry.add_heading(msg.data, self._now_ns())

    def _on_rel_alt(self, msg: Float64) -> None:
        self.side.telemetry.add_rel_alt(msg.data, self._now_ns())

    # -- per frame ----------------------------------------------------------------------------
    def wanted(self, wanted: Wanted) -> Wanted:
        """``wanted`` plus what the ground side needs now."""
        detections = (wanted.detections or _listened(self.geojson_pub)
                      or self.side.wants_detections)
        confidence = (wanted.confidence or _listened(self.confidence_pub)
                      or self.side.capture is not None)
        return wanted._replace(detections=detections, confidence=confidence)

    def annotate(self, outputs: FrameOutputs, rgb, header, camera_info) -> float:
        """Ground positions, tracks, log and capture for one frame; milliseconds spent."""
        start = time.perf_counter()
        report = outputs.detections
        if report is not None:
            self.side.locate(report, camera_info)
            self.side.track(report)
            self.side.write_log(report)
        if self.side.capture is not None and outputs.confidence is not None:
            stamp = {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec}
            self.side.consider_capture(rgb, outputs.labels, outputs.confidence, stamp,
                                       header.frame_id, report)
        return (time.perf_counter() - start) * 1000.0

    def publish(self, outputs: FrameOutputs, header) -> None:
        """GeoJSON, confidence and PNG mask, each only while subscribed."""
        if outputs.detections is not None and _listened(self.geojson_pub):
            self.geojson_pub.publish(String(data=json.dumps(self.side.geojson(
                outputs.detections))))
        if outputs.confidence is not None and _listened(self.confidence_pub):
            height, width = outputs.labels.shape
            self.confidence_pub.publish(numpy_to_image_msg(
                confidence_mono8(outputs.confidence, (width, height)), "mono8", header))
        if _listened(self.png_pub):
            self.png_pub.publish(png_mask_msg(outputs.labels, header, self.config.mask_png_level))

    def close(self) -> None:
        self.side.close()
