"""The segmentation node's parameters: names, defaults, descriptions and checks, in one table.

Pure Python (no rclpy), so the launch-file test and the documentation read the same table
the node declares. ``config/drone.yaml`` sets every one of them.
"""
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from lpcv_segmentation.core.classes import CLASS_NAMES, DETECTION_CLASS_IDS, class_id
from lpcv_segmentation.node.stats import Thresholds
from lpcv_segmentation.zoo.cache import ZooError, resolve_model_path

PACKAGE = "lpcv_segmentation"
NODE_NAME = "segmentation_node"
DEFAULT_MODEL_NAME = "default.onnx"

# The input message types the node subscribes to; aliases accept the ROS type names.
INPUT_TYPE_ALIASES: Dict[str, str] = {
    "raw": "raw",
    "sensor_msgs/Image": "raw",
    "sensor_msgs/msg/Image": "raw",
    "compressed": "compressed",
    "sensor_msgs/CompressedImage": "compressed",
    "sensor_msgs/msg/CompressedImage": "compressed",
}
INPUT_QOS_NAMES = ("best_effort", "reliable")
DETECTIONS_FORMATS = ("json", "vision_msgs", "both")
HEIGHT_SOURCES = ("rel_alt", "range", "fix_altitude")  # as node/telemetry.py reads them
CAPTURE_WHEN_FULL = ("delete_oldest", "stop")  # as node/capture.py applies them


class ParameterError(ValueError):
    """An invalid parameter value; the message names the parameter."""


Check = Callable[[object], Optional[str]]  # a value -> what is wrong with it, or None


def _one_of(choices: Sequence[str]) -> Check:
    def check(value: object) -> Optional[str]:
        if value not in choices:
            return "must be one of %s" % ", ".join(choices)
        return None
    return check


def _non_empty(value: object) -> Optional[str]:
    return "must not be empty" if not str(value).strip() else None


def _positive(value: object) -> Optional[str]:
    return "must be > 0" if value <= 0 else None


def _at_least(minimum: float) -> Check:
    def check(value: object) -> Optional[str]:
        return "must be >= %g" % minimum if value < minimum else None
    return check


def _fraction(value: object) -> Optional[str]:
    return "must lie in [0, 1]" if not 0.0 <= value <= 1.0 else None


def _class_names(value: object) -> Optional[str]:
    unknown = [name for name in value if name not in CLASS_NAMES]
    if unknown:
        return "unknown class names %s; known: %s" % (unknown, ", ".join(CLASS_NAMES))
    return None


def _any(value: object) -> Optional[str]:
    return None


def _between(low: float, high: float) -> Check:
    def check(value: object) -> Optional[str]:
        return "must lie in [%g, %g]" % (low, high) if not low <= value <= high else None
    return check


def _probability(value: object) -> Optional[str]:
    return "must lie in (0, 1]" if not 0.0 < value <= 1.0 else None


class ParamSpec(NamedTuple):
    name: str
    default: object  # its Python type is the parameter's ROS type
    description: str
    check: Check = _any


_DEFAULT_THRESHOLDS = Thresholds()

PARAMETERS: List[ParamSpec] = [
    ParamSpec("managed", False,
              "lifecycle node driven by a manager (configure loads the model, activate "
              "starts segmenting); false: configure and activate at start"),
    # The model and how to run it.
    ParamSpec("model_path", "",
              "ONNX model (or a checkpoint for the pytorch back end), or zoo:NAME for a model "
              "fetched with python -m lpcv_segmentation.zoo; empty: the model shipped in "
              "share/lpcv_segmentation/models/default.onnx"),
    ParamSpec("backend", "auto",
              "inference back end: auto, onnxruntime, pytorch or tensorrt", _non_empty),
    ParamSpec("device", "cpu", "device for the back end: cpu, cuda, cuda:N or auto", _non_empty),
    ParamSpec("precision", "fp32", "numeric precision: fp32, fp16 or int8 (back end permitting)",
              _non_empty),
    ParamSpec("threads", 0, "CPU threads for inference; 0: the back end's default",
              _at_least(0)),
    ParamSpec("engine_cache_dir", "",
              "folder of the TensorRT engines built from the model; empty: the per-user cache "
              "($XDG_CACHE_HOME or ~/.cache)/lpcv_segmentation"),
    # Input.
    ParamSpec("input_topic", "camera/image_raw", "camera topic to segment", _non_empty),
    ParamSpec("input_type", "raw",
              "input message type: raw (sensor_msgs/msg/Image) or compressed "
              "(sensor_msgs/msg/CompressedImage, JPEG or PNG)",
              _one_of(list(INPUT_TYPE_ALIASES))),
    ParamSpec("input_qos", "best_effort",
              "input reliability: best_effort (REP 2003 sensor data) or reliable",
              _one_of(INPUT_QOS_NAMES)),
    # Outputs.
    ParamSpec("mask_topic", "seg/mask", "mono8 class index per pixel, at the input size",
              _non_empty),
    ParamSpec("color_topic", "seg/color",
              "rgb8 mask in the class colours (at most visual_max_side; built only while "
              "subscribed)", _non_empty),
    ParamSpec("overlay_topic", "seg/overlay", "rgb8 class colours blended over the camera image",
              _non_empty),
    ParamSpec("label_info_topic", "seg/label_info",
              "class table as JSON (std_msgs/String, transient local)", _non_empty),
    ParamSpec("detections_topic", "seg/detections",
              "per-class disaster regions as JSON (std_msgs/String)", _non_empty),
    ParamSpec("detections_format", "json",
              "json (std_msgs/String on detections_topic and label_info_topic), vision_msgs "
              "(vision_msgs/Detection2DArray on detection_array_topic, vision_msgs/LabelInfo on "
              "vision_label_info_topic; needs vision_msgs installed) or both",
              _one_of(DETECTIONS_FORMATS)),
    ParamSpec("detection_array_topic", "seg/detection_array",
              "detections as vision_msgs/Detection2DArray (detections_format vision_msgs, both)",
              _non_empty),
    ParamSpec("vision_label_info_topic", "seg/vision_label_info",
              "class table as vision_msgs/LabelInfo, transient local (wherever vision_msgs "
              "is installed, whatever detections_format says)", _non_empty),
    ParamSpec("camera_info_topic", "seg/camera_info",
              "the camera's camera_info (from <namespace of input_topic>/camera_info) with each "
              "mask's header, scaled to the mask's size; nothing without a camera_info",
              _non_empty),
    ParamSpec("publish_color", True, "publish the colour mask on color_topic"),
    ParamSpec("publish_overlay", True, "publish the overlay on overlay_topic"),
    ParamSpec("overlay_alpha", 0.5, "weight of the class colours in the overlay", _fraction),
    ParamSpec("visual_max_side", 640,
              "longest side (pixels) of the colour mask and overlay; larger frames are drawn "
              "smaller (the mask stays at the input size)", _at_least(16)),
    # Detections.
    ParamSpec("detection_classes", [CLASS_NAMES[i] for i in DETECTION_CLASS_IDS],
              "class names reported on detections_topic", _class_names),
    ParamSpec("min_region_area_px", 64,
              "smallest connected region reported, in input-image pixels", _at_least(1)),
    # Diagnostics and logging.
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics messages", _positive),
    ParamSpec("stats_window_s", 5.0, "window of the rates and latency percentiles", _positive),
    ParamSpec("log_period_s", 10.0, "period of the summary line in the node's log", _positive),
    ParamSpec("diag_latency_warn_ms", _DEFAULT_THRESHOLDS.latency_warn_ms,
              "end-to-end latency p95 above which the status is WARN", _positive),
    ParamSpec("diag_latency_error_ms", _DEFAULT_THRESHOLDS.latency_error_ms,
              "end-to-end latency p95 above which the status is ERROR", _positive),
    ParamSpec("diag_min_output_rate_hz", _DEFAULT_THRESHOLDS.min_output_rate_hz,
              "output rate below which the status is WARN while frames arrive", _at_least(0.0)),
    ParamSpec("diag_rejected_warn_ratio", _DEFAULT_THRESHOLDS.rejected_warn_ratio,
              "share of frames rejected in the window above which the status is WARN",
              _fraction),
    ParamSpec("diag_rejected_error_ratio", _DEFAULT_THRESHOLDS.rejected_error_ratio,
              "share of frames rejected in the window above which the status is ERROR",
              _fraction),
    ParamSpec("diag_input_timeout_s", _DEFAULT_THRESHOLDS.input_timeout_s,
              "seconds without a frame after which the status is WARN", _positive),
    ParamSpec("diag_memory_warn_mb", _DEFAULT_THRESHOLDS.memory_warn_mb,
              "resident memory (MiB) above which the status is WARN", _positive),
    # Detections on the ground: fix, height above ground, heading, camera mount.
    ParamSpec("fix_topic", "/mavros/global_position/global",
              "GNSS fix (sensor_msgs/NavSatFix); empty: no ground positions", _any),
    ParamSpec("height_source", "rel_alt",
              "height of the camera above the ground: rel_alt (std_msgs/Float64 on "
              "rel_alt_topic, m), range (sensor_msgs/Range on range_topic, pointing down) or "
              "fix_altitude (the fix's altitude minus ground_elevation_m)",
              _one_of(HEIGHT_SOURCES)),
    ParamSpec("rel_alt_topic", "/mavros/global_position/rel_alt",
              "height above the take-off point (std_msgs/Float64, metres)", _non_empty),
    ParamSpec("range_topic", "/mavros/rangefinder/rangefinder",
              "downward rangefinder (sensor_msgs/Range)", _non_empty),
    ParamSpec("ground_elevation_m", 0.0,
              "ground altitude in the fix's datum (height_source fix_altitude)", _any),
    ParamSpec("heading_topic", "/mavros/global_position/compass_hdg",
              "heading of the vehicle's front (std_msgs/Float64, degrees clockwise from north)",
              _non_empty),
    ParamSpec("geo_sync_tolerance_s", 0.5,
              "largest time between a frame's stamp and the fix, height and heading paired "
              "with it; older or newer inputs give no position (the reason is reported)",
              _positive),
    ParamSpec("mount_roll_deg", 0.0,
              "camera mount roll from nadir (degrees; > 0 tilts the view to the left)",
              _between(-180.0, 180.0)),
    ParamSpec("mount_pitch_deg", 0.0,
              "camera mount pitch from nadir (degrees; > 0 tilts the view to the front, 90: "
              "looking forward)", _between(-180.0, 180.0)),
    ParamSpec("mount_yaw_deg", 0.0,
              "camera mount yaw (degrees; > 0 turns the image's top clockwise from the "
              "vehicle's front)", _between(-180.0, 180.0)),
    ParamSpec("geojson_topic", "seg/detections_geojson",
              "GeoJSON FeatureCollection of the confirmed tracks with a ground position "
              "(std_msgs/String; built only while subscribed)", _non_empty),
    ParamSpec("geo_log_path", "",
              "append-only GeoJSON-lines log of tracked objects on the ground (one Feature "
              "per line; each frame's lines written and fsynced by a thread of its own); "
              "empty: no log", _any),
    # Tracking.
    ParamSpec("track_min_frames", 3,
              "frames a region must be matched in before its track is confirmed and gets an id",
              _at_least(1)),
    ParamSpec("track_max_missed", 5,
              "frames in a row a track may go unmatched before it is dropped", _at_least(0)),
    ParamSpec("track_min_iou", 0.1,
              "smallest box overlap (IoU) that matches a region to a track in the image",
              _probability),
    ParamSpec("track_max_distance_m", 5.0,
              "largest ground distance that matches a region to a track (with positions)",
              _positive),
    # Outputs a radio link can carry.
    ParamSpec("confidence_topic", "seg/confidence",
              "mono8 confidence of the predicted class, 255 = certain, at the mask's size "
              "(built only while subscribed)", _non_empty),
    ParamSpec("mask_png_level", 1,
              "zlib level (0-9) of the lossless PNG mask on <mask_topic>/compressed (built "
              "only while subscribed)", _between(0, 9)),
    # Frames to label next.
    ParamSpec("capture_dir", "",
              "save unsure frames with the predicted mask as a pre-label here (IMG/train, "
              "GT/train, meta/); empty: no capture", _any),
    ParamSpec("capture_min_mean_confidence", 0.6,
              "a frame whose mean confidence is below this is unsure", _fraction),
    ParamSpec("capture_low_confidence", 0.5,
              "a pixel whose confidence is below this counts as low-confidence", _fraction),
    ParamSpec("capture_max_low_share", 0.2,
              "a frame whose share of low-confidence pixels is above this is unsure",
              _fraction),
    ParamSpec("capture_min_interval_s", 5.0, "at most one frame saved this often",
              _at_least(0.0)),
    ParamSpec("capture_max_mb", 1024.0, "cap on the captured files (MiB)", _positive),
    ParamSpec("capture_when_full", "delete_oldest",
              "at the cap: delete_oldest (make room) or stop (save nothing more, warn)",
              _one_of(CAPTURE_WHEN_FULL)),
]

PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)


class GroundConfig(NamedTuple):
    """Checked values of the ground-position, tracking, link and capture parameters."""
    fix_topic: Optional[str]
    height_source: str
    rel_alt_topic: str
    range_topic: str
    ground_elevation_m: float
    heading_topic: str
    geo_sync_tolerance_s: float
    mount_deg: Tuple[float, float, float]  # roll, pitch, yaw
    geojson_topic: str
    geo_log_path: Optional[str]
    track_min_frames: int
    track_max_missed: int
    track_min_iou: float
    track_max_distance_m: float
    confidence_topic: str
    mask_png_level: int
    capture_dir: Optional[str]
    capture_min_mean_confidence: float
    capture_low_confidence: float
    capture_max_low_share: float
    capture_min_interval_s: float
    capture_max_mb: float
    capture_when_full: str


def ground_config(values: Dict[str, object]) -> GroundConfig:
    """The ground part of checked parameter values."""
    return GroundConfig(
        fix_topic=str(values["fix_topic"]).strip() or None,
        height_source=str(values["height_source"]),
        rel_alt_topic=str(values["rel_alt_topic"]),
        range_topic=str(values["range_topic"]),
        ground_elevation_m=float(values["ground_elevation_m"]),
        heading_topic=str(values["heading_topic"]),
        geo_sync_tolerance_s=float(values["geo_sync_tolerance_s"]),
        mount_deg=(float(values["mount_roll_deg"]), float(values["mount_pitch_deg"]),
                   float(values["mount_yaw_deg"])),
        geojson_topic=str(values["geojson_topic"]),
        geo_log_path=str(values["geo_log_path"]).strip() or None,
        track_min_frames=int(values["track_min_frames"]),
        track_max_missed=int(values["track_max_missed"]),
        track_min_iou=float(values["track_min_iou"]),
        track_max_distance_m=float(values["track_max_distance_m"]),
        confidence_topic=str(values["confidence_topic"]),
        mask_png_level=int(values["mask_png_level"]),
        capture_dir=str(values["capture_dir"]).strip() or None,
        capture_min_mean_confidence=float(values["capture_min_mean_confidence"]),
        capture_low_confidence=float(values["capture_low_confidence"]),
        capture_max_low_share=float(values["capture_max_low_share"]),
        capture_min_interval_s=float(values["capture_min_interval_s"]),
        capture_max_mb=float(values["capture_max_mb"]),
        capture_when_full=str(values["capture_when_full"]),
    )


class NodeConfig(NamedTuple):
    """Checked parameter values (``input_type`` normalised to raw or compressed)."""
    managed: bool
    model_path: str
    backend: str
    device: str
    precision: str
    threads: Optional[int]
    engine_cache_dir: Optional[str]
    input_topic: str
    input_type: str
    input_qos: str
    mask_topic: str
    color_topic: str
    overlay_topic: str
    label_info_topic: str
    detections_topic: str
    detections_format: str
    detection_array_topic: str
    vision_label_info_topic: str
    camera_info_topic: str
    publish_color: bool
    publish_overlay: bool
    overlay_alpha: float
    visual_max_side: int
    detection_class_ids: List[int]
    min_region_area_px: int
    diagnostics_period_s: float
    stats_window_s: float
    log_period_s: float
    thresholds: Thresholds
    ground: GroundConfig


def package_share_dir() -> Optional[Path]:
    """share/lpcv_segmentation of an installed package (colcon), or None when not installed."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError, ValueError):
        return None


def default_model_path() -> Path:
    """The shipped model: share/lpcv_segmentation/models/ when installed, else the repo's."""
    share = package_share_dir()
    if share is not None and (share / "models" / DEFAULT_MODEL_NAME).is_file():
        return share / "models" / DEFAULT_MODEL_NAME
    return Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL_NAME


def unknown_parameters(overrides: Iterable[str], is_declared: Callable[[str], bool]
                       ) -> List[str]:
    """The override names (from parameter files and ``-p``) the node never declared, sorted."""
    return sorted(name for name in overrides if not is_declared(name))


def check_config(values: Dict[str, object]) -> NodeConfig:
    """Parameter values by name -> NodeConfig; ParameterError names the first bad parameter."""
    missing = [name for name in PARAMETER_NAMES if name not in values]
    if missing:
        raise ParameterError("parameters not set: %s" % ", ".join(missing))
    for spec in PARAMETERS:
        problem = spec.check(values[spec.name])
        if problem:
            raise ParameterError("parameter %s=%r: %s" % (spec.name, values[spec.name], problem))
    if values["diag_latency_error_ms"] < values["diag_latency_warn_ms"]:
        raise ParameterError("parameter diag_latency_error_ms=%r: must be >= diag_latency_warn_ms"
                             " (%r)" % (values["diag_latency_error_ms"],
                                        values["diag_latency_warn_ms"]))
    model_path = str(values["model_path"]) or str(default_model_path())
    try:
        model_path = os.path.expanduser(resolve_model_path(model_path))  # zoo:NAME -> its file
    except ZooError as error:
        raise ParameterError("parameter model_path: %s" % error)
    if not os.path.isfile(model_path):
        raise ParameterError("parameter model_path: no model file at %s" % model_path)
    thresholds = Thresholds(
        latency_warn_ms=float(values["diag_latency_warn_ms"]),
        latency_error_ms=float(values["diag_latency_error_ms"]),
        min_output_rate_hz=float(values["diag_min_output_rate_hz"]),
        rejected_warn_ratio=float(values["diag_rejected_warn_ratio"]),
        rejected_error_ratio=float(values["diag_rejected_error_ratio"]),
        input_timeout_s=float(values["diag_input_timeout_s"]),
        memory_warn_mb=float(values["diag_memory_warn_mb"]),
    )
    return NodeConfig(
        managed=bool(values["managed"]),
        model_path=model_path,
        backend=str(values["backend"]),
        device=str(values["device"]),
        precision=str(values["precision"]),
        threads=int(values["threads"]) or None,
        engine_cache_dir=str(values["engine_cache_dir"]) or None,
        input_topic=str(values["input_topic"]),
        input_type=INPUT_TYPE_ALIASES[str(values["input_type"])],
        input_qos=str(values["input_qos"]),
        mask_topic=str(values["mask_topic"]),
        color_topic=str(values["color_topic"]),
        overlay_topic=str(values["overlay_topic"]),
        label_info_topic=str(values["label_info_topic"]),
        detections_topic=str(values["detections_topic"]),
        detections_format=str(values["detections_format"]),
        detection_array_topic=str(values["detection_array_topic"]),
        vision_label_info_topic=str(values["vision_label_info_topic"]),
        camera_info_topic=str(values["camera_info_topic"]),
        publish_color=bool(values["publish_color"]),
        publish_overlay=bool(values["publish_overlay"]),
        overlay_alpha=float(values["overlay_alpha"]),
        visual_max_side=int(values["visual_max_side"]),
        detection_class_ids=[class_id(name) for name in values["detection_classes"]],
        min_region_area_px=int(values["min_region_area_px"]),
        diagnostics_period_s=float(values["diagnostics_period_s"]),
        stats_window_s=float(values["stats_window_s"]),
        log_period_s=float(values["log_period_s"]),
        thresholds=thresholds,
        ground=ground_config(values),
    )
