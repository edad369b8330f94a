"""launch/drone.launch.py, config/drone.yaml and the DDS profile.

Read as Python source, the launch file must name an executable the package installs, a
parameters file that exists, and the launch arguments the README documents; the parameters file
and the node must agree on every parameter name and type. Where ``../shared/ros2cli`` exists
(test/shared_tools.py installs it once per machine), the package is built in a colcon workspace
and ``ros2 launch`` runs it for real: ``--show-args`` lists every argument of the README's
table, and a managed node in a namespace is driven with ``ros2 lifecycle set`` until
``ros2 topic echo --once`` prints a mask (~40 s); without it that test skips and says why.
"""
import ast
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

from lpcv_segmentation.node.config import (NODE_NAME, PACKAGE, PARAMETER_NAMES, PARAMETERS,
                                           ParameterError, check_config, default_model_path)

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "drone.launch.py"
PARAMS = REPO / "config" / "drone.yaml"
PROFILE = REPO / "config" / "fastdds_large_frames.xml"


def _calls(tree: ast.AST, name: str):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == name]


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    raise AssertionError("%s(...) has no %s=" % (getattr(call.func, "id", "?"), name))


@pytest.fixture(scope="module")
def launch_tree() -> ast.AST:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


@pytest.fixture(scope="module")
def node_parameters() -> dict:
    """The parameters config/drone.yaml gives the node (whatever key matches it)."""
    document = yaml.safe_load(PARAMS.read_text())
    assert len(document) == 1, "one node section expected"
    (key, section), = document.items()
    assert key.split("/")[-1] == NODE_NAME
    return section["ros__parameters"]


def _value(tree: ast.Module, node: ast.AST):
    """A literal, or a module-level NAME = literal (the launch file's PACKAGE)."""
    if isinstance(node, ast.Name):
        for statement in tree.body:
            if (isinstance(statement, ast.Assign)
                    and any(getattr(t, "id", None) == node.id for t in statement.targets)):
                return ast.literal_eval(statement.value)
        raise AssertionError("%s is not a module-level constant" % node.id)
    return ast.literal_eval(node)


def _console_scripts() -> dict:
    tree = ast.parse((REPO / "setup.py").read_text())
    entry_points = ast.literal_eval(_keyword(_calls(tree, "setup")[0], "entry_points"))
    return dict(line.replace(" ", "").split("=") for line in entry_points["console_scripts"])


def test_launch_starts_an_installed_executable(launch_tree):
    nodes = _calls(launch_tree, "Node")
    assert len(nodes) == 1
    assert _value(launch_tree, _keyword(nodes[0], "package")) == PACKAGE
    executable = _value(launch_tree, _keyword(nodes[0], "executable"))
    scripts = _console_scripts()
    assert executable in scripts
    # The entry imports the node inside main(), so that a SIGINT during the imports is clean.
    assert scripts[executable] == "lpcv_segmentation.node.__main__:main"
    from lpcv_segmentation.node import __main__ as entry
    assert callable(entry.main)
    assert _value(launch_tree, _keyword(nodes[0], "name")) == NODE_NAME


def test_launch_arguments(launch_tree):
    declared = {ast.literal_eval(call.args[0])
                for call in _calls(launch_tree, "DeclareLaunchArgument")}
    assert {"model_path", "backend", "camera_topic", "params_file", "namespace",
            "large_frames_profile", "use_sim_time", "log_level", "managed", "device",
            "precision", "input_type"} <= declared
    used = {ast.literal_eval(call.args[0]) for call in _calls(launch_tree, "LaunchConfiguration")}
    assert used == declared  # none declared and forgotten, none used undeclared
    assert any(isinstance(statement, ast.FunctionDef)
               and statement.name == "generate_launch_description"
               for statement in launch_tree.body)


def test_launch_arguments_reach_the_node(launch_tree):
    (node,) = _calls(launch_tree, "Node")
    # parameters=[params_file, {name: ParameterValue(LaunchConfiguration(argument),
    #                                                value_type=TYPE)}]
    overrides = next(e for e in _keyword(node, "parameters").elts if isinstance(e, ast.Dict))
    types = {spec.name: type(spec.default).__name__ for spec in PARAMETERS}
    types["use_sim_time"] = "bool"  # rclpy's own parameter
    passed = {}
    for key, value in zip(overrides.keys, overrides.values):
        name = ast.literal_eval(key)
        (config,) = _calls(value, "LaunchConfiguration")
        passed[name] = ast.literal_eval(config.args[0])
        assert _keyword(value, "value_type").id == types[name], name
    assert passed == {"model_path": "model_path", "backend": "backend", "device": "device",
                      "precision": "precision", "engine_cache_dir": "engine_cache_dir",
                      "input_topic": "camera_topic",
                      "input_type": "input_type", "managed": "managed",
                      "use_sim_time": "use_sim_time"}
    ros_arguments = _keyword(node, "ros_arguments")
    assert ast.literal_eval(ros_arguments.elts[0]) == "--log-level"
    assert ast.literal_eval(_calls(ros_arguments, "LaunchConfiguration")[0].args[0]) \
        == "log_level"


def test_launch_files_exist_and_are_installed(launch_tree):
    names = {c.value for c in ast.walk(launch_tree)
             if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    assert PARAMS.name in names and (REPO / "config" / PARAMS.name).is_file()
    assert PROFILE.name in names and PROFILE.is_file()
    env = _calls(launch_tree, "SetEnvironmentVariable")
    assert [ast.literal_eval(call.args[0]) for call in env] == ["FASTDDS_DEFAULT_PROFILES_FILE"]
    _keyword(env[0], "condition")  # large_frames_profile:=false turns it off
    setup = (REPO / "setup.py").read_text()
    assert 'glob("config/*.yaml") + glob("config/*.xml")' in setup
    assert 'glob("launch/*.py")' in setup


def test_params_file_and_node_agree(node_parameters):
    assert set(node_parameters) == set(PARAMETER_NAMES)
    for spec in PARAMETERS:
        value = node_parameters[spec.name]
        # rclpy refuses a value whose type differs from the declared default's (1 vs 1.0).
        assert type(value) is type(spec.default), spec.name
        if not isinstance(value, list):
            assert value == spec.default, "%s: the file and the node's default differ" % spec.name
    for spec in PARAMETERS:
        assert spec.description, spec.name


def test_params_file_passes_the_node_checks(node_parameters, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not checked here")
    config = check_config(dict(node_parameters, model_path=str(model)))
    assert config.input_type == "raw" and config.input_qos == "best_effort"
    assert len(config.detection_class_ids) == 11


@pytest.mark.parametrize("name, value, words", [
    ("input_qos", "sometimes", "best_effort, reliable"),
    ("input_type", "sensor_msgs/msg/PointCloud2", "compressed"),
    ("overlay_alpha", 1.5, "[0, 1]"),
    ("detection_classes", ["person", "dragon"], "dragon"),
    ("min_region_area_px", 0, ">= 1"),
    ("diagnostics_period_s", 0.0, "> 0"),
    ("diag_latency_error_ms", 10.0, "diag_latency_warn_ms"),
    ("model_path", "/no/such/model.onnx", "/no/such/model.onnx"),
])
def test_bad_values_are_refused_naming_the_parameter(node_parameters, tmp_path, name, value,
                                                     words):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    values = dict(node_parameters, model_path=str(model))
    values[name] = value
    with pytest.raises(ParameterError) as error:
        check_config(values)
    assert name in str(error.value) and words in str(error.value)


def test_default_model_path_is_the_repo_models_dir_here():
    assert default_model_path() == REPO / "models" / "default.onnx"


def test_dds_profile_carries_large_frames():
    root = ElementTree.parse(PROFILE).getroot()
    ns = {"dds": "http://www.eprosima.com"}
    transports = {d.findtext("dds:transport_id", namespaces=ns): d
                  for d in root.iterfind(".//dds:transport_descriptor", ns)}
    types = {tid: d.findtext("dds:type", namespaces=ns) for tid, d in transports.items()}
    assert sorted(types.values()) == ["SHM", "UDPv4"]
    shm = next(d for d in transports.values() if d.findtext("dds:type", namespaces=ns) == "SHM")
    assert int(shm.findtext("dds:segment_size", namespaces=ns)) >= 32 * 1024 * 1024
    participant = root.find(".//dds:participant", ns)
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext(".//dds:useBuiltinTransports", namespaces=ns) == "false"
    used = [e.text for e in participant.iterfind(".//dds:userTransports/dds:transport_id", ns)]
    assert sorted(used) == sorted(transports)


def test_every_parameter_is_documented():
    doc = (REPO / "docs" / "node.md").read_text()  # the parameter table lives in the node reference
    for name in PARAMETER_NAMES:
        assert "| `%s` |" % name in doc, name


def test_node_help_lists_every_parameter():
    result = subprocess.run([sys.executable, "-m", "lpcv_segmentation.node.segmentation_node", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in PARAMETER_NAMES:
        assert "\n  %s (default: " % name in result.stdout, name


# -- ros2 launch, for real ------------------------------------------------------------------------
CLI_TIMEOUT_S = 120  # one ros2 command: ~2 s idle, up to ~15 s measured on 2 busy cores
READY_S = 120  # the node's start-up under ros2 launch: ~5 s idle, ~30 s on 2 busy cores


def readme_launch_arguments() -> list:
    """The first column of the README's launch-argument table (header ``| argument |``)."""
    names, in_table = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0] == "argument":
            in_table = True
        elif in_table and line.lstrip().startswith("|"):
            if not set(cells[0]) <= set("-: "):
                names.append(cells[0].strip("`"))
        elif in_table:
            break
    return names


def test_the_readme_table_of_launch_arguments_is_the_launch_files(launch_tree):
    declared = [_value(launch_tree, call.args[0])
                for call in _calls(launch_tree, "DeclareLaunchArgument")]
    assert sorted(readme_launch_arguments()) == sorted(declared)


class Ros2:
    """``ros2`` commands in a shell that sourced the workspace, in one ROS domain."""

    def __init__(self, workspace: Path, env: dict) -> None:
        self.workspace, self.env = workspace, env

    def command(self, args: str) -> list:
        return ["bash", "-c", "set +u; source install/setup.bash; exec ros2 " + args]

    def run(self, args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(args), cwd=str(self.workspace), env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, args: str, log: Path) -> subprocess.Popen:
        handle = open(log, "w")
        try:
            return subprocess.Popen(self.command(args), cwd=str(self.workspace), env=self.env,
                                    stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            handle.close()


def _poll(what: str, found, timeout: float, processes=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = found()
        if result:
            return result
        for process, log in processes:
            assert process.poll() is None, "%s: exited\n%s" % (what, log.read_text()[-3000:])
        time.sleep(0.2)
    raise AssertionError("timed out waiting for %s" % what)


@pytest.mark.ros
@pytest.mark.slow
def test_ros2_launch_runs_a_managed_node_in_a_namespace(colcon_workspace, tmp_path):
    from ros_helpers import HELPERS, random_domain_id, ros_env, start, stop
    from shared_tools import ros2cli_env

    base = ros_env(random_domain_id())
    base.pop("PYTHONPATH")  # the installed package, not this checkout, as a user runs it
    ros2 = Ros2(colcon_workspace, ros2cli_env(base))  # skips without ../shared/ros2cli
    shown = ros2.run("launch lpcv_segmentation drone.launch.py --show-args")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    table = readme_launch_arguments()
    assert len(table) >= 10 and "managed" in table and "namespace" in table
    missing = [name for name in table if "'%s':" % name not in shown.stdout]
    assert not missing, "README arguments not in --show-args: %s\n%s" % (missing, shown.stdout)

    node = "/uav7/segmentation_node"
    launch_log = tmp_path / "launch.log"
    launch = ros2.start("launch lpcv_segmentation drone.launch.py namespace:=uav7 managed:=true",
                        launch_log)
    watched = [(launch, launch_log)]
    echo = None
    try:
        # The node's lifecycle state, asked until it answers (no fixed wait for start-up).
        def lifecycle_state():
            answer = ros2.run("lifecycle get --no-daemon %s" % node).stdout
            return re.search(r"^(\w+) \[\d+\]$", answer, re.M)
        state = _poll("the node's lifecycle services", lifecycle_state, READY_S, watched)
        assert state.group(1) == "unconfigured"
        for transition, after in (("configure", "inactive"), ("activate", "active")):
            # A fresh ros2 process may not have discovered the node yet: it says so; ask again.
            result = _poll("ros2 lifecycle set %s" % transition, lambda: [
                r for r in [ros2.run("lifecycle set --no-daemon %s %s" % (node, transition))]
                if "Node not found" not in r.stdout + r.stderr], READY_S, watched)[0]
            assert "Transitioning successful" in result.stdout, result.stdout + result.stderr
            state = _poll("the node's state", lifecycle_state, READY_S, watched)
            assert state.group(1) == after
        echo_log = tmp_path / "echo.log"
        echo = ros2.start("topic echo --once --no-arr /uav7/seg/mask sensor_msgs/msg/Image",
                          echo_log)
        camera_log = tmp_path / "camera.log"
        # The camera waits for the node's subscription; frames until the echo has printed one.
        for attempt in range(10):
            sent = start([sys.executable, str(HELPERS), "camera", "--topic",
                          "/uav7/camera/image_raw", "--width", "160", "--height", "120",
                          "--count", "3", "--rate", "5", "--frame-id", "launched"],
                         ros_env(int(base["ROS_DOMAIN_ID"])), camera_log)
            assert sent.wait(timeout=CLI_TIMEOUT_S) == 0, camera_log.read_text()
            if echo.poll() is not None:
                break
        assert echo.wait(timeout=CLI_TIMEOUT_S) == 0, echo_log.read_text()
        printed = echo_log.read_text()
        assert "frame_id: launched" in printed and "encoding: mono8" in printed, printed
        assert "height: 120" in printed and "width: 160" in printed, printed
    finally:
        if echo is not None and echo.poll() is None:
            os.killpg(echo.pid, signal.SIGINT)
            echo.wait(timeout=CLI_TIMEOUT_S)
        code = stop(launch, timeout=CLI_TIMEOUT_S)  # ros2 launch's SIGINT: what Ctrl-C sends
    text = launch_log.read_text()
    assert code == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert re.search(r"segmentation_node-\d+\]: process has finished cleanly", text), text[-3000:]
