"""lpcv_segmentation.runtime.engine_cache: where TensorRT engines live and when one must be built.

The key and path logic is pure Python and runs here; building an engine needs TensorRT and a
GPU (bench/gpu_check.sh does that on a CUDA machine)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lpcv_segmentation.runtime.engine_cache import (EngineError, EngineKey, check_writable,
                                                    default_cache_dir, engine_build_needed,
                                                    engine_path, model_sha256, ort_trt_cache_path,
                                                    read_engine_metadata, resolve_cache_dir,
                                                    uses_tensorrt)

ROOT = Path(__file__).resolve().parents[1]
KEY = EngineKey("ab" * 32, "fp16", "8.5.2.2", "Orin (sm_87)")
TRT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_each_part_of_the_key_changes_the_engine_file(tmp_path):
    paths = {engine_path(str(tmp_path), "m.onnx", key) for key in [
        KEY, KEY._replace(model_sha256="cd" * 32), KEY._replace(precision="fp32"),
        KEY._replace(tensorrt_version="10.3.0"), KEY._replace(gpu="Xavier (sm_72)"),
        KEY._replace(gpu="")]}
    assert len(paths) == 6
    assert all(Path(p).parent == tmp_path / "tensorrt" for p in paths)


def test_same_inputs_give_the_same_path_in_another_process(tmp_path):
    here = engine_path(str(tmp_path), "/models/default.onnx", KEY)
    code = ("from lpcv_segmentation.runtime.engine_cache import EngineKey, engine_path; "
            "print(engine_path(%r, '/other/dir/default.onnx', EngineKey(*%r)))"
            % (str(tmp_path), tuple(KEY)))
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=ROOT, check=True).stdout.strip()
    assert here == there
    assert os.path.basename(here).startswith("default-fp16-") and here.endswith(".engine")


def test_model_bytes_key_the_engine(tmp_path):
    a, b, a_copy = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "sub" / "a.onnx"
    a.write_bytes(b"model one")
    b.write_bytes(b"model two")
    a_copy.parent.mkdir()
    a_copy.write_bytes(b"model one")
    assert model_sha256(str(a)) == model_sha256(str(a_copy)) != model_sha256(str(b))
    key_a = KEY._replace(model_sha256=model_sha256(str(a)))
    key_b = KEY._replace(model_sha256=model_sha256(str(b)))
    assert engine_path("", str(a), key_a) == engine_path("", str(a_copy), key_a)
    assert engine_path("", str(a), key_a) != engine_path("", str(a), key_b)
    with pytest.raises(EngineError, match="gone.onnx"):
        model_sha256(str(tmp_path / "gone.onnx"))


def test_default_cache_is_per_user_and_never_the_package(tmp_path, monkeypatch):
    assert default_cache_dir({"XDG_CACHE_HOME": "/x/cache"}) == "/x/cache/lpcv_segmentation"
    home = os.path.expanduser("~")
    assert default_cache_dir({}) == os.path.join(home, ".cache", "lpcv_segmentation")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_cache_dir(None) == resolve_cache_dir("") == str(tmp_path / "lpcv_segmentation")
    assert resolve_cache_dir("~/engines") == os.path.join(home, "engines")
    for path in (engine_path("", str(ROOT / "models" / "default.onnx"), KEY),
                 ort_trt_cache_path("", str(ROOT / "models" / "default.onnx"), KEY)):
        assert path.startswith(str(tmp_path)) and "share" not in Path(path).parts


def test_missing_cache_folder_is_created(tmp_path):
    folder = tmp_path / "a" / "b" / "engines"
    assert check_writable(str(folder)) == str(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []  # the write probe is removed


def test_a_file_in_the_way_is_named(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(EngineError, match="%s.*cannot be created.*engine_cache_dir"
                       % (blocker / "tensorrt")):
        check_writable(str(blocker / "tensorrt"))


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # root writes through file modes; /sys/kernel refuses new files even to root
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("running as root and no /sys/kernel to stand for a read-only folder")
    return Path("/sys/kernel")


def test_read_only_cache_folder_is_refused_with_its_name(tmp_path):
    folder = _read_only_folder(tmp_path)
    with pytest.raises(EngineError, match="%s is not writable.*--build-only" % folder):
        check_writable(str(folder))


def test_tensorrt_is_used_only_for_onnx_files_on_a_gpu():
    assert uses_tensorrt("m.onnx", "tensorrt", "cuda")
    assert not uses_tensorrt("m.engine", "tensorrt", "cuda")  # built already: nothing to build
    assert not uses_tensorrt("m.onnx", "onnxruntime", "cpu", TRT_PROVIDERS)
    assert uses_tensorrt("m.onnx", "onnxruntime", "cuda", TRT_PROVIDERS)
    assert uses_tensorrt("m.onnx", "auto", "auto", TRT_PROVIDERS)
    assert not uses_tensorrt("m.onnx", "onnxruntime", "cuda", TRT_PROVIDERS[1:])
    assert not uses_tensorrt("m.safetensors", "pytorch", "cuda", TRT_PROVIDERS)
    assert not uses_tensorrt("m.safetensors", "auto", "cuda", TRT_PROVIDERS)


def test_build_needed_follows_the_onnx_runtime_tensorrt_cache(tmp_path):
    """ONNX Runtime's provider path keys with the onnxruntime version where the tensorrt
    package is absent (as here), so the whole decision runs on this machine."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    cache = str(tmp_path / "cache")

    def needed(precision="fp16", providers=TRT_PROVIDERS):
        return engine_build_needed(str(model), "onnxruntime", "cuda", precision, cache,
                                   available_providers=providers)

    assert needed()
    from lpcv_segmentation.runtime.engine_cache import engine_key
    folder = Path(ort_trt_cache_path(cache, str(model), engine_key(str(model), "fp16", True)))
    folder.mkdir(parents=True)
    assert needed()  # an empty folder (a build killed half way) is no engine
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_0.engine").write_bytes(b"engine")
    assert not needed()
    assert needed(precision="fp32")
    model.write_bytes(b"retrained model bytes")
    assert needed()
    assert not needed(providers=TRT_PROVIDERS[1:])


def test_build_needed_is_false_for_everything_that_is_not_tensorrt(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert not engine_build_needed(str(model), "onnxruntime", "cpu", "fp32", str(tmp_path))
    assert not engine_build_needed(str(tmp_path / "gone.onnx"), "tensorrt", "cuda", "fp16")
    assert not engine_build_needed(str(ROOT / "models" / "default.safetensors"), "pytorch",
                                   "cuda", "fp16")
    try:
        import tensorrt  # noqa: F401
    except ImportError:  # without TensorRT nothing is built; loading says what is missing
        assert not engine_build_needed(str(model), "tensorrt", "cuda", "fp16", str(tmp_path))


def test_engine_metadata_errors_name_the_file(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(EngineError, match="m.engine.json"):
        read_engine_metadata(str(engine))
    (tmp_path / "m.engine.json").write_text("[1, 2]")
    with pytest.raises(EngineError, match="expected a JSON object"):
        read_engine_metadata(str(engine))
    (tmp_path / "m.engine.json").write_text('{"input_size": 256}')
    assert read_engine_metadata(str(engine)) == {"input_size": 256}
