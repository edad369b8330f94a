"""Every GPU option on a machine without TensorRT or CUDA stops with one line naming what is
missing, no traceback: the commands (subprocesses: stderr and exit code) and the node (a real
node process started with the option). Where the GPU piece is installed the refusal cannot
happen, so that case skips and says why; bench/gpu_check.sh exercises the GPU paths."""
import importlib.util
import sys
from pathlib import Path
from typing import List

import pytest

from ros_helpers import REPO, random_domain_id, ros_env, start

PARAMS = REPO / "config" / "drone.yaml"
TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
NO_TENSORRT = pytest.mark.skipif(TENSORRT_INSTALLED, reason="tensorrt is installed here, so it "
                                 "is not refused; bench/gpu_check.sh runs the TensorRT paths")


def _ort_has_gpu() -> bool:
    import onnxruntime
    available = onnxruntime.get_available_providers()  # CPU builds list Azure's, not a GPU
    return any(p in available for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))


def _torch_has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _one_error_line(text: str, prefix: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), text
    return lines[0]


def _run(args: List[str], tmp_path: Path, name: str) -> "tuple[int, str]":
    log = tmp_path / ("%s.log" % name)
    process = start([sys.executable] + args, ros_env(random_domain_id()), log)
    code = process.wait(timeout=120)
    return code, log.read_text()


@NO_TENSORRT
def test_export_format_tensorrt_names_the_missing_package(tiny_checkpoint, tmp_path):
    out = tmp_path / "m.engine"
    code, output = _run(["-m", "training", "export", "--checkpoint", str(tiny_checkpoint),
                         "--format", "tensorrt", "--fp16", "--out", str(out)], tmp_path, "export")
    line = _one_error_line(output, "export: error:")
    assert code == 1 and "needs the tensorrt Python package" in line
    assert "lpcv_segmentation.runtime.build_engine --model MODEL.onnx --precision fp16" in line
    assert not out.exists()


@NO_TENSORRT
def test_engine_build_command_names_the_missing_package(tiny_onnx, tmp_path):
    cache = tmp_path / "cache"
    code, output = _run(["-m", "lpcv_segmentation.runtime.build_engine", "--model", str(tiny_onnx),
                         "--precision", "fp16", "--cache-dir", str(cache), "--build-only"],
                        tmp_path, "engine")
    line = _one_error_line(output, "engine: error:")
    assert code == 1 and "needs the tensorrt Python package" in line
    assert not cache.exists()  # nothing half-built left behind


def test_engine_build_command_refuses_what_is_not_an_onnx_file(tmp_path):
    code, output = _run(["-m", "lpcv_segmentation.runtime.build_engine", "--model",
                         str(REPO / "models" / "default.safetensors"), "--build-only"],
                        tmp_path, "engine_checkpoint")
    line = _one_error_line(output, "engine: error:")
    assert code == 1 and "default.safetensors: give the .onnx export" in line


# name -> (parameters, model fixture, what the one error line must name, skip reason or None)
NODE_CASES = {
    "backend tensorrt": (["backend:=tensorrt", "device:=cuda"], "tiny_onnx",
                         "needs the tensorrt Python package",
                         "tensorrt is installed here" if TENSORRT_INSTALLED else None),
    "onnxruntime on cuda": (["device:=cuda"], "tiny_onnx", "no GPU execution provider",
                            lambda: "onnxruntime has a GPU provider here" if _ort_has_gpu()
                            else None),
    "pytorch fp16 on cpu": (["backend:=pytorch", "precision:=fp16", "device:=cpu"],
                            "tiny_checkpoint", "precision fp16 needs device cuda", None),
    "pytorch on cuda": (["backend:=pytorch", "device:=cuda"], "tiny_checkpoint",
                        "torch sees no CUDA device",
                        lambda: "torch sees a CUDA device here" if _torch_has_cuda() else None),
}


def _skip_reason(case: str):
    reason = NODE_CASES[case][3]
    return reason() if callable(reason) else reason


@pytest.fixture(scope="module")
def refused_nodes(request, tmp_path_factory):
    """One node process per case that can be refused here, all started at once (each takes
    seconds to import its back end); returns {case: (exit code, log text)}."""
    work = tmp_path_factory.mktemp("refused_nodes")
    env = ros_env(random_domain_id())
    processes = {}
    for name, (params, model_fixture, _, _) in NODE_CASES.items():
        if _skip_reason(name):
            continue
        model = request.getfixturevalue(model_fixture)
        args = ["-p", "model_path:=%s" % model]
        for param in params:
            args += ["-p", param]
        processes[name] = start([sys.executable, "-m", "lpcv_segmentation.node.segmentation_node", "--ros-args",
                                 "--params-file", str(PARAMS)] + args, env,
                                work / ("%s.log" % name.replace(" ", "_")))
    results = {}
    for name, process in processes.items():
        code = process.wait(timeout=120)
        results[name] = (code, (work / ("%s.log" % name.replace(" ", "_"))).read_text())
    return results


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.parametrize("case", list(NODE_CASES))
def test_node_refuses_the_gpu_option_in_one_line(case, refused_nodes):
    reason = _skip_reason(case)
    if reason:
        pytest.skip("%s: %s, so the node is not refused" % (case, reason))
    code, output = refused_nodes[case]
    missing = NODE_CASES[case][2]
    assert code != 0, "%s: exit code 0\n%s" % (case, output)
    assert "Traceback" not in output, "%s:\n%s" % (case, output)
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and missing in errors[0], "%s:\n%s" % (case, output)
