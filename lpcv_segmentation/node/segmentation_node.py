"""segmentation_node: a thin rclpy shell around the segmentation pipeline.

The subscription callback only checks a frame's header and stores it in a one-slot mailbox;
an inference thread takes the newest frame, segments it and publishes its outputs. Image
conversion, inference and post-processing live in imaging, runtime, detections and
node_pipeline; rates, latency and the diagnostic level in node_stats.

    python -m lpcv_segmentation.node --ros-args --params-file config/drone.yaml \\
        -p model_path:=MODEL -p backend:=onnxruntime -p input_topic:=/camera/image_raw
"""
import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState
from rclpy.lifecycle.node import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.utilities import remove_ros_args
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.qos_overriding_options import InvalidQosOverridesError, QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from lpcv_segmentation.node.camera_info import camera_info_topic, scale_camera_info
from lpcv_segmentation.core.classes import class_table
from lpcv_segmentation.runtime.engine_cache import engine_build_needed
from lpcv_segmentation.core.imaging import (ImageConversionError, check_compressed_msg,
                                            check_image_msg, compressed_to_rgb, image_to_rgb,
                                            numpy_to_image_msg)
from lpcv_segmentation.node.config import (NODE_NAME, PARAMETERS, NodeConfig, ParameterError,
                                           check_config, unknown_parameters)
from lpcv_segmentation.node.ground_io import GroundIO
from lpcv_segmentation.node.pipeline import LatestFrame, Wanted, process_frame
from lpcv_segmentation.node.vision import (MissingPackageError, detection2d_array_fields,
                                           fill_message, import_vision_msgs, label_info_fields)
from lpcv_segmentation.node.stats import (OK, OPTIONAL_OUTPUTS, WARN, NodeStats, assess, key_values,
                                          log_line)

DIAGNOSTICS_TOPIC = "/diagnostics"  # absolute: diagnostic aggregators listen there
WARN_THROTTLE_S = 5.0  # at most one warning per reason this often


class InputType(NamedTuple):
    msg_type: type
    check: Callable[[object], None]  # cheap, in the callback; raises ImageConversionError
    to_rgb: Callable[[object], object]  # the full conversion, in the worker


INPUT_TYPES: Dict[str, InputType] = {
    "raw": InputType(Image, check_image_msg, image_to_rgb),
    "compressed": InputType(CompressedImage, check_compressed_msg, compressed_to_rgb),
}

# REP 2003: sensor data best effort, keep last; reliable on request for lossy links that
# must not lose frames (at the price of retransmissions).
INPUT_QOS: Dict[str, QoSProfile] = {
    "best_effort": qos_profile_sensor_data,
    "reliable": QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                           reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.VOLATILE),
}
# Reliable publishers serve both reliable and best-effort subscribers.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
# Published once; late subscribers still receive it.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

DIAGNOSTIC_LEVELS = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR}


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, model, back end); the text says why."""


@contextlib.contextmanager
def _entity_errors() -> Iterator[None]:
    """Errors from opening a publisher or subscription (bad name, bad qos_overrides value)
    as StartupError naming the parameter."""
    try:
        yield
    except (ParameterException, NameValidationException, InvalidQosOverridesError) as error:
        raise StartupError(str(error)) from None
    except RuntimeError as error:  # rclpy: "Unexpected QoS override for policy ..."
        if "QoS override" not in str(error):
            raise
        raise StartupError("qos_overrides: %s" % error) from None


class Phase:
    """What the node is doing before it can segment: /diagnostics reports it as WARN with this
    message until the first frame can be served (set in one place, ``_set_phase``)."""
    LOADING_MODEL = "loading model"
    BUILDING_ENGINE = "building TensorRT engine"
    WARMING_UP = "warming up"


class SegmentationNode(LifecycleNodeMixin, Node):
    """segmentation_node as a lifecycle node.

    configure: check the parameters, open the publishers and subscribe to the camera (so that
    DDS matches them with their peers while the model loads), load and warm up the model;
    activate: start the inference thread and take frames; deactivate: stop taking frames (the
    model stays loaded, the subscriptions stay matched); cleanup: close the publishers and
    subscriptions, unload the model. Frames that arrive while the node is not active are not
    segmented, not kept and not counted as received (counted as ``frames_while_inactive``).
    With ``managed:=false`` (default) the node runs configure and activate itself at start
    and offers no lifecycle services; with ``managed:=true`` a lifecycle manager (or
    ``ros2 lifecycle set``) drives it. ``exit_code`` becomes set when the process should end:
    1 after a failed start when unmanaged, 0 once shut down (finalized).
    """

    def __init__(self) -> None:
        Node.__init__(self, NODE_NAME)
        try:
            self._declare_parameters()
        except (ParameterException, NameValidationException) as error:
            raise StartupError(str(error)) from None
        self.managed = bool(self.get_parameter("managed").value)
        LifecycleNodeMixin.__init__(self, enable_communication_interface=self.managed)
        self.config: Optional[NodeConfig] = None
        self.segmenter = None
        self.stats = NodeStats(time.monotonic())
        self.exit_code: Optional[int] = None
        self._phase: Optional[str] = None
        self._phase_reporter: Optional[threading.Thread] = None
        self._stop_reporting = threading.Event()
        self._slot: LatestFrame = LatestFrame()
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._input: Optional[InputType] = None
        self._taking_frames = False  # active: the subscription callback hands frames on
        self._publishers_open: List[object] = []
        self._timers_open: List[object] = []
        self._subscriptions_open: List[object] = []
        self._camera_info: Optional[CameraInfo] = None
        self._unknown_checked = False
        self._ground: Optional[GroundIO] = None

    def _declare_parameters(self) -> None:
        # Read-only: the model and topics are fixed once the node runs, so a later
        # `ros2 param set` is refused instead of silently doing nothing.
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, ParameterDescriptor(
                description=spec.description, read_only=True))

    # -- unmanaged start ------------------------------------------------------------------------
    def bring_up(self) -> None:
        """configure, then activate (``managed:=false``); a failure ends the process with 1.
        A shutdown (SIGINT) in the middle is no failure: ``main`` ends the process with 0."""
        try:
            if (self.trigger_configure() == TransitionCallbackReturn.SUCCESS
                    and self.context.ok()
                    and self.trigger_activate() == TransitionCallbackReturn.SUCCESS):
                return
        except Exception:  # the context or the node went away under a transition
            if self.context.ok():
                raise
        if self.context.ok():
            self.exit_code = 1

    # -- lifecycle transitions ------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as error:
            self.get_logger().error("configure failed: %s" % error)
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop.clear()
        self._slot = LatestFrame()
        self._worker = threading.Thread(target=self._work, name="segmentation", daemon=True)
        self._worker.start()
        self._taking_frames = True
        self._publish_diagnostics()  # taking_frames: true, at once (replay harnesses wait for it)
        self.get_logger().info("active: segmenting %s" % self._input_topic)
        return TransitionCallbackReturn.SUCCESS

    def _subscribe(self, config: NodeConfig) -> None:
        """The camera, its camera_info and the ground side's telemetry; at configure, so that
        matching them with their publishers overlaps the model load."""
        self._subscriptions_open.append(self.create_subscription(
            self._input.msg_type, config.input_topic, self._on_frame, INPUT_QOS[config.input_qos],
            qos_overriding_options=QoSOverridingOptions.with_default_policies()))
        # Best effort takes both best-effort and reliable camera drivers.
        self._camera_info = None
        self._subscriptions_open.append(self.create_subscription(
            CameraInfo, camera_info_topic(self._input_topic), self._on_camera_info,
            qos_profile_sensor_data))
        self._subscriptions_open.extend(self._ground.subscribe())

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._publish_diagnostics()
        self.get_logger().info("inactive: model loaded, not segmenting")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.get_logger().info("unconfigured: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._cleanup()
        self.exit_code = 0
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured, ready to retry

    # -- configure ------------------------------------------------------------------------------
    def _configure(self) -> None:
        """Check parameters, load the model, open the publishers; StartupError says why not."""
        self.config = config = self._read_config()
        self._input = INPUT_TYPES[config.input_type]
        self._input_topic = self.resolve_topic_name(config.input_topic)
        self.stats = NodeStats(time.monotonic(), config.stats_window_s)
        self._diagnostics_pub = self._open(self.create_publisher(
            DiagnosticArray, DIAGNOSTICS_TOPIC, 10))
        self._timers_open.append(self.create_timer(config.diagnostics_period_s,
                                                   self._publish_diagnostics))
        # The class table goes out as LabelInfo wherever vision_msgs is installed, as consumers
        # of class masks (Nav2's semantic layer) expect; only the detections need it asked for.
        try:
            self._vision_msgs = import_vision_msgs()
        except MissingPackageError as error:
            self._vision_msgs = None
            if config.detections_format != "json":
                raise StartupError(str(error)) from None
        # Publishers and subscriptions before the model: DDS matches them with the camera and
        # the listeners (up to seconds) while the model loads, not after.
        with _entity_errors():
            self._open_outputs(config)
            self._subscribe(config)
        self._set_phase(Phase.BUILDING_ENGINE if engine_build_needed(
            config.model_path, config.backend, config.device, config.precision,
            config.engine_cache_dir) else Phase.LOADING_MODEL)
        segmenter = self._load_segmenter(config)
        self._set_phase(Phase.WARMING_UP)
        segmenter.warmup()  # the first camera frame should not pay for lazy allocation
        self.segmenter = segmenter
        self._publish_class_tables()
        self._timers_open.append(self.create_timer(config.log_period_s, self._log_summary))
        self._set_phase(None)
        self._warn_unknown_parameters(config)
        self.get_logger().info(
            "configured: %s on %s (%s back end, %s, %d px input) for %s (%s, %s QoS); "
            "publishing %s" % (config.model_path, self.segmenter.device,
                               self.segmenter.backend_name, self.segmenter.precision,
                               self.segmenter.input_size,
                               self.resolve_topic_name(config.input_topic), config.input_type,
                               config.input_qos, self._mask_pub.topic_name))

    def _set_phase(self, phase: Optional[str]) -> None:
        """Enter a loading phase (or leave it with None): /diagnostics says so at once, and
        every period while it lasts, from a thread of its own, because configure may hold the
        executor (a lifecycle service call) for as long as the model takes to load."""
        self._phase = phase
        if phase is None:
            return
        self._publish_diagnostics()
        if self._phase_reporter is None or not self._phase_reporter.is_alive():
            self._phase_reporter = threading.Thread(target=self._report_phase,
                                                    name="loading-diagnostics", daemon=True)
            self._phase_reporter.start()

    def _report_phase(self) -> None:
        period = self.config.diagnostics_period_s
        while not self._stop_reporting.wait(period) and self._phase is not None:
            try:
                self._publish_diagnostics()
            except Exception:
                if self.context.ok():
                    raise
                return  # shut down (SIGINT) while loading: nothing went wrong

    def _open(self, entity):
        self._publishers_open.append(entity)
        return entity

    def _open_outputs(self, config: NodeConfig) -> None:
        self._mask_pub = self._publisher(Image, config.mask_topic)
        self._color_pub = (self._publisher(Image, config.color_topic)
                           if config.publish_color else None)
        self._overlay_pub = (self._publisher(Image, config.overlay_topic)
                             if config.publish_overlay else None)
        self._detections_pub = self._label_info_pub = self._detection_array_pub = None
        if config.detections_format in ("json", "both"):
            self._detections_pub = self._publisher(String, config.detections_topic)
            self._label_info_pub = self._publisher(String, config.label_info_topic, LATCHED_QOS)
        vision_msgs = self._vision_msgs
        if config.detections_format in ("vision_msgs", "both"):
            self._detection_array_pub = self._publisher(vision_msgs.Detection2DArray,
                                                        config.detection_array_topic)
        self._vision_label_info_pub = None
        if vision_msgs is not None:
            self._vision_label_info_pub = self._publisher(
                vision_msgs.LabelInfo, config.vision_label_info_topic, LATCHED_QOS)
        self._camera_info_pub = self._publisher(CameraInfo, config.camera_info_topic)
        try:
            self._ground = GroundIO(self, config.ground, config.mask_topic,
                                    camera_info_topic(self._input_topic), self._publisher)
        except OSError as error:  # the log cannot be opened (capture folders open lazily)
            raise StartupError("parameter geo_log_path=%r: %s" % (config.ground.geo_log_path,
                                                                  error)) from None

    def _publish_class_tables(self) -> None:
        """The latched class tables, once the model is loaded: listeners take them as the sign
        that the node is configured."""
        if self._label_info_pub is not None:
            self._label_info_pub.publish(String(data=json.dumps({"classes": class_table()})))
        if self._vision_label_info_pub is not None:
            header = {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": ""}
            self._vision_label_info_pub.publish(fill_message(
                self._vision_msgs.LabelInfo, label_info_fields(class_table(), header)))

    def _publisher(self, msg_type: type, topic: str, qos: QoSProfile = OUTPUT_QOS):
        """A publisher whose history, depth and reliability ``qos_overrides`` may change."""
        return self._open(self.create_publisher(
            msg_type, topic, qos,
            qos_overriding_options=QoSOverridingOptions.with_default_policies()))

    def _warn_unknown_parameters(self, config: NodeConfig) -> None:
        """Shared parameter files (``/**:`` sections) carry other nodes' keys: name them once
        and go on. The publishers' and subscriptions' qos_overrides keys are declared by now."""
        if self._unknown_checked:
            return
        self._unknown_checked = True
        unknown = unknown_parameters(getattr(self, "_parameter_overrides", {}),
                                     self.has_parameter)
        if unknown:
            self.get_logger().warning("ignoring parameters this node does not use: %s"
                                      % ", ".join(unknown))

    def _read_config(self) -> NodeConfig:
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        try:
            return check_config(values)
        except ParameterError as error:
            raise StartupError(str(error)) from None

    @staticmethod
    def _load_segmenter(config: NodeConfig):
        from lpcv_segmentation.runtime.segmenter import Segmenter, RuntimeConfigError
        try:
            return Segmenter(config.model_path, backend=config.backend, device=config.device,
                             precision=config.precision, threads=config.threads,
                             engine_cache_dir=config.engine_cache_dir)
        except RuntimeConfigError as error:
            # The runtime's message names the file or the setting at fault.
            raise StartupError("cannot load the model (backend=%s, device=%s, precision=%s): %s"
                               % (config.backend, config.device, config.precision,
                                  error)) from None

    # -- deactivate, cleanup ----------------------------------------------------------------------
    def _deactivate(self) -> None:
        """Stop taking frames and let the inference thread finish the one in hand."""
        self._taking_frames = False
        self.stop()

    def _cleanup(self) -> None:
        """Close what configure opened and unload the model."""
        for subscription in self._subscriptions_open:
            self.destroy_subscription(subscription)
        self._subscriptions_open = []
        self._phase = None
        self._stop_reporting.set()
        if self._phase_reporter is not None:
            self._phase_reporter.join(timeout=5.0)
        self._stop_reporting.clear()
        for timer in self._timers_open:
            self.destroy_timer(timer)
        for publisher in self._publishers_open:
            self.destroy_publisher(publisher)
        self._timers_open, self._publishers_open = [], []
        self.segmenter = None
        if self._ground is not None:
            self._ground.close()
            self._ground = None

    def stop(self) -> None:
        """Stop the inference thread (it finishes the frame in hand); idempotent."""
        self._stop.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    def close(self) -> None:
        """At the process's end: stop the inference thread, then flush and close the ground
        side (its GeoJSON-lines log keeps every line the node wrote)."""
        self.stop()
        if self._ground is not None:
            self._ground.close()
            self._ground = None

    # -- per frame --------------------------------------------------------------------------
    def _on_frame(self, msg) -> None:
        """Subscription callback: count, check the header cheaply, keep only the newest."""
        if not self._taking_frames:  # configuring or inactive: a lifecycle node reads no data
            self.stats.frame_while_inactive()
            return
        self.stats.frame_received(time.monotonic())
        try:
            self._input.check(msg)
        except ImageConversionError as error:
            self._reject(error)
            return
        if self._slot.put(msg):
            self.stats.frame_dropped()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg  # calibration changes rarely: the newest serves every mask

    def _reject(self, error: ImageConversionError) -> None:
        self.stats.frame_rejected(time.monotonic(), error.kind)
        self.get_logger().warning("%s: frame rejected: %s" % (self._input_topic,
                                                              error),
                                  throttle_duration_sec=WARN_THROTTLE_S)

    def _work(self) -> None:
        """Inference thread: newest frame in, outputs out, until shutdown."""
        while not self._stop.is_set():
            msg = self._slot.take(timeout=0.2)
            if msg is None:
                continue
            try:
                self._process(msg)
            except ImageConversionError as error:
                self._reject(error)
            except Exception as error:  # keep serving frames; say what went wrong
                if not self.context.ok():
                    break  # shut down (SIGINT) while publishing: nothing went wrong
                self.stats.frame_rejected(time.monotonic(), "processing_error")
                self.get_logger().error("%s: frame failed: %s: %s"
                                        % (self._input_topic,
                                           type(error).__name__, error),
                                        throttle_duration_sec=WARN_THROTTLE_S)

    def _wanted(self) -> Wanted:
        """The optional outputs someone subscribes to now (the mask is always published)."""
        def listened(*publishers) -> bool:
            return any(p is not None and p.get_subscription_count() > 0 for p in publishers)
        return self._ground.wanted(Wanted(
            color=listened(self._color_pub), overlay=listened(self._overlay_pub),
            detections=listened(self._detections_pub, self._detection_array_pub)))

    def _process(self, msg) -> None:
        config = self.config
        start = time.perf_counter()
        rgb = self._input.to_rgb(msg)
        conversion_ms = (time.perf_counter() - start) * 1000.0
        header = msg.header
        wanted = self._wanted()
        outputs = process_frame(self.segmenter, rgb, header.stamp.sec, header.stamp.nanosec,
                                header.frame_id, config.detection_class_ids,
                                config.min_region_area_px, wanted, config.overlay_alpha,
                                config.visual_max_side)
        ground_ms = self._ground.annotate(outputs, rgb, header, self._camera_info)
        start = time.perf_counter()
        self._mask_pub.publish(numpy_to_image_msg(outputs.labels, "mono8", header))
        camera_info = self._camera_info
        if camera_info is not None:
            height, width = outputs.labels.shape
            self._camera_info_pub.publish(scale_camera_info(camera_info, width, height, header))
        if outputs.color is not None:
            self._color_pub.publish(numpy_to_image_msg(outputs.color, "rgb8", header))
        if outputs.overlay is not None:
            self._overlay_pub.publish(numpy_to_image_msg(outputs.overlay, "rgb8", header))
        if outputs.detections is not None:
            if self._detections_pub is not None:
                self._detections_pub.publish(String(data=json.dumps(outputs.detections)))
            if self._detection_array_pub is not None:
                self._detection_array_pub.publish(fill_message(
                    self._vision_msgs.Detection2DArray,
                    detection2d_array_fields(outputs.detections)))
        self._ground.publish(outputs, header)
        publish_ms = (time.perf_counter() - start) * 1000.0

        stage_ms = dict(outputs.timings_ms, conversion=conversion_ms, publish=publish_ms)
        stage_ms["outputs"] = stage_ms.get("outputs", 0.0) + ground_ms
        built = [name for name in OPTIONAL_OUTPUTS if getattr(wanted, name)]
        self.stats.frame_processed(time.monotonic(), stage_ms, self._age_ms(header.stamp), built)

    def _age_ms(self, stamp) -> Optional[float]:
        """Milliseconds from the frame's stamp to now; None for an unstamped frame."""
        if stamp.sec == 0 and stamp.nanosec == 0:
            return None
        now_ns = self.get_clock().now().nanoseconds
        return (now_ns - (stamp.sec * 1000000000 + stamp.nanosec)) / 1e6

    # -- diagnostics --------------------------------------------------------------------------
    def _status(self):
        summary = self.stats.summary(time.monotonic())
        if self._phase is not None:  # loading: no frame can be served yet, and that is why
            return summary, WARN, self._phase
        if not self._taking_frames:  # configured, not active: nothing is expected of it
            return summary, OK, "inactive"
        level, message = assess(summary, self.config.thresholds)
        findings = [] if self._ground is None else self._ground.side.findings()
        if findings:
            level = max([level] + [found for found, _ in findings])
            message = "; ".join(([] if message == "running" else [message])
                                + [text for _, text in findings])
        return summary, level, message

    def _publish_diagnostics(self) -> None:
        summary, level, message = self._status()
        config, segmenter = self.config, self.segmenter
        values: List[KeyValue] = [KeyValue(key=k, value=v) for k, v in key_values(summary)]
        # Until the model is loaded, what was asked for; then what the back end runs.
        backend = config.backend if segmenter is None else segmenter.backend_name
        values += [KeyValue(key=k, value=str(v)) for k, v in (
            ("backend", backend),
            ("device", config.device if segmenter is None else segmenter.device),
            ("precision", config.precision if segmenter is None else segmenter.precision),
            ("model", config.model_path),
            ("input_topic", self.resolve_topic_name(config.input_topic)),
            ("taking_frames", "true" if self._taking_frames else "false"))]
        if self._ground is not None:
            values += [KeyValue(key=k, value=v) for k, v in self._ground.side.values()]
        status = DiagnosticStatus(level=DIAGNOSTIC_LEVELS[level],
                                  name="%s: segmentation" % self.get_fully_qualified_name(),
                                  message=message, hardware_id=backend, values=values)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def _log_summary(self) -> None:
        summary, level, message = self._status()
        line = log_line(summary, level, message)
        # One call per severity: rclpy ties a severity to each logging call site.
        if level == 0:
            self.get_logger().info(line)
        elif level == 1:
            self.get_logger().warning(line)
        else:
            self.get_logger().error(line)


def _parse_command_line(argv: List[str]) -> None:
    """--help lists the parameters; everything else is given as ROS arguments."""
    parser = argparse.ArgumentParser(
        prog="segmentation_node", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Semantic segmentation of camera frames (LPCV 2023 disaster classes).\n"
                    "Parameters are ROS parameters: --ros-args --params-file FILE -p NAME:=VALUE",
        epilog="parameters (defaults as in config/drone.yaml):\n" + "\n".join(
            "  %s (default: %s)\n      %s" % (spec.name, json.dumps(spec.default),
                                              spec.description) for spec in PARAMETERS)
        + "\n\ntopics: input_topic and the camera_info beside it, fix_topic, the height "
          "source's topic and heading_topic in; mask (and <mask>/compressed), camera_info, "
          "color, overlay, detections, label_info, confidence, detections_geojson topics and "
          "%s out" % DIAGNOSTICS_TOPIC)
    parser.parse_args(remove_ros_args(argv)[1:])


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``; the spin loop ends between two callbacks. rclpy's own
    handler raises KeyboardInterrupt wherever the main thread is, inside rclpy's C++ calls and
    its Task constructor too, where it surfaces as other errors and tracebacks."""
    def handler(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


BRING_UP_JOIN_S = 30.0  # a shutdown waits this long for a model load in progress to end


def main(args: Optional[List[str]] = None) -> int:
    """The node's process: 0 after a clean shutdown (SIGINT at any moment, or the lifecycle
    shutdown transition), 1 when an unmanaged node cannot start.

    SIGINT or SIGTERM ends the spin loop (``_stop_on_signals``; before rclpy is initialised, a
    KeyboardInterrupt), then the context is shut down. The threads that use the node
    (bring-up, inference) end before the node is destroyed, so none of them finds it gone."""
    node: Optional[SegmentationNode] = None
    executor = None
    bring_up: Optional[threading.Thread] = None
    status = 0
    stop = threading.Event()
    try:
        _parse_command_line(sys.argv if args is None else args)
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        _stop_on_signals(stop)
        node = SegmentationNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if not node.managed:
            bring_up = threading.Thread(target=node.bring_up, name="bring-up", daemon=True)
            bring_up.start()
        while node.exit_code is None and rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
        if node.exit_code is not None:
            status = node.exit_code
            time.sleep(0.2)  # let the answer to a shutdown request leave
    except StartupError as error:
        rclpy.logging.get_logger(NODE_NAME).error(str(error))
        status = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()  # a bring-up in progress stops at its next ROS call
        if bring_up is not None:
            bring_up.join(timeout=BRING_UP_JOIN_S)
        if node is not None:
            node.close()
            node.destroy_node()
        if executor is not None:
            executor.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
