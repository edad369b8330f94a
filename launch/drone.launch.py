"""Start segmentation_node on the drone with config/drone.yaml.

    ros2 launch lpcv_segmentation drone.launch.py
    ros2 launch lpcv_segmentation drone.launch.py model_path:=/data/model.onnx backend:=tensorrt \\
        camera_topic:=/camera/color/image_raw namespace:=uav1
    ros2 launch lpcv_segmentation drone.launch.py managed:=true use_sim_time:=true log_level:=debug

The Fast DDS profile config/fastdds_large_frames.xml (shared memory with a 32 MiB segment)
is applied to every process this file starts (SetEnvironmentVariable comes before them),
because Fast DDS's default transports lose most full-size frames sent over best effort. The
camera driver needs the same profile (the sender's transport decides): include this file
from the bring-up that starts the driver, or export the same FASTDDS_DEFAULT_PROFILES_FILE
before starting it. large_frames_profile:=false leaves the middleware's own defaults.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "lpcv_segmentation"


def generate_launch_description() -> LaunchDescription:
    config_dir = PathJoinSubstitution([FindPackageShare(PACKAGE), "config"])
    arguments = [
        DeclareLaunchArgument(
            "model_path", default_value="",
            description="ONNX model (or checkpoint), or zoo:NAME (python -m "
                        "lpcv_segmentation.zoo); empty: share/lpcv_segmentation/models/"
                        "default.onnx"),
        DeclareLaunchArgument(
            "backend", default_value="auto",
            description="inference back end: auto, onnxruntime, pytorch or tensorrt"),
        DeclareLaunchArgument(
            "device", default_value="cpu", description="device: cpu, cuda, cuda:N or auto"),
        DeclareLaunchArgument(
            "precision", default_value="fp32",
            description="numeric precision: fp32, fp16 or int8 (back end permitting)"),
        DeclareLaunchArgument(
            "engine_cache_dir", default_value="",
            description="folder of the TensorRT engines; empty: ~/.cache/lpcv_segmentation"),
        DeclareLaunchArgument(
            "camera_topic", default_value="camera/image_raw",
            description="image topic to segment (relative names resolve in the namespace)"),
        DeclareLaunchArgument(
            "input_type", default_value="raw",
            description="raw (sensor_msgs/msg/Image) or compressed "
                        "(sensor_msgs/msg/CompressedImage)"),
        DeclareLaunchArgument(
            "managed", default_value="false",
            description="true: a lifecycle node, started unconfigured (ros2 lifecycle set "
                        "/segmentation_node configure, then activate)"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false",
            description="use /clock (bag replay, simulation) instead of the system clock"),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            description="the node's log level: debug, info, warn, error or fatal"),
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([config_dir, "drone.yaml"]),
            description="segmentation_node parameters"),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="namespace of the node and of its relative topics"),
        DeclareLaunchArgument(
            "large_frames_profile", default_value="true",
            description="apply config/fastdds_large_frames.xml (Fast DDS shared memory, 32 MiB)"),
        DeclareLaunchArgument(
            "dds_profile_file",
            default_value=PathJoinSubstitution([config_dir, "fastdds_large_frames.xml"]),
            description="the Fast DDS XML profile applied when large_frames_profile is true"),
    ]
    large_frames = SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("dds_profile_file"),
        condition=IfCondition(LaunchConfiguration("large_frames_profile")))
    node = Node(
        package=PACKAGE,
        executable="segmentation_node",
        name="segmentation_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        parameters=[
            LaunchConfiguration("params_file"),
            # The launch arguments override the file (their defaults are the file's values).
            # value_type=str: keep "" and names as strings instead of parsing them as YAML.
            {"model_path": ParameterValue(LaunchConfiguration("model_path"), value_type=str),
             "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
             "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
             "precision": ParameterValue(LaunchConfiguration("precision"), value_type=str),
             "engine_cache_dir": ParameterValue(LaunchConfiguration("engine_cache_dir"),
                                                value_type=str),
             "input_topic": ParameterValue(LaunchConfiguration("camera_topic"),
                                           value_type=str),
             "input_type": ParameterValue(LaunchConfiguration("input_type"), value_type=str),
             "managed": ParameterValue(LaunchConfiguration("managed"), value_type=bool),
             "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"),
                                            value_type=bool)},
        ],
    )
    return LaunchDescription(arguments + [large_frames, node])
