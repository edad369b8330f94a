"""lpcv_segmentation.runtime.segmenter: pre/post-processing, the back ends on real models, the torch-free
ONNX Runtime path, and the errors for bad back ends, devices, precisions and model files."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lpcv_segmentation.core.classes import NUM_CLASSES, class_table
from lpcv_segmentation.runtime.segmenter import (BACKENDS, METADATA_KEY, OnnxRuntimeBackend,
                                                 RuntimeConfigError, Segmenter, argmax_classes,
                                                 normalize, postprocess, preprocess,
                                                 resolve_backend)

REPO = Path(__file__).resolve().parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def scene(seed: int, height: int, width: int) -> np.ndarray:
    from training.synth import render_scene
    rgb = render_scene(seed, max(height, width))[0]
    return np.ascontiguousarray(rgb[:height, :width])


# --------------------------------------------------------------------------------------------
# Pre- and post-processing
# --------------------------------------------------------------------------------------------
def test_preprocess_normalises_each_channel_and_resizes():
    rgb = np.empty((40, 60, 3), np.uint8)
    rgb[...] = (255, 0, 128)
    x = preprocess(rgb, 32, MEAN, STD)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = [(v / 255.0 - m) / s for v, m, s in zip((255, 0, 128), MEAN, STD)]
    np.testing.assert_allclose(x[0, :, 5, 7], expected, rtol=1e-5)
    np.testing.assert_allclose(x[0].reshape(3, -1).std(axis=1), 0, atol=1e-5)  # flat stays flat


def test_preprocess_matches_training_eval_transform():
    from training.data import EvalTransform
    rgb = scene(3, 100, 150)
    ours = preprocess(rgb, 64, MEAN, STD)[0]
    theirs, _ = EvalTransform(64, MEAN, STD)(rgb, None)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32), "image.png"])
def test_preprocess_rejects_what_is_not_rgb_uint8(bad):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess(bad, 32, MEAN, STD)


def test_postprocess_argmax_nearest_resize_and_confidence():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, NUM_CLASSES, (4, 4))
    logits = rng.normal(0, 0.1, (1, NUM_CLASSES, 4, 4)).astype(np.float32)
    logits[0, coarse, np.arange(4)[:, None], np.arange(4)[None, :]] += 5.0  # a clear winner
    labels, confidence = postprocess(logits, (8, 12), with_confidence=True)
    assert labels.shape == (8, 12) and labels.dtype == np.uint8
    # nearest neighbour: each 4x4 cell becomes a 2x3 block of the same class
    np.testing.assert_array_equal(labels, np.kron(coarse, np.ones((2, 3), int)))
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum(axis=0)
    np.testing.assert_allclose(confidence, np.kron(probs.max(axis=0), np.ones((2, 3))), rtol=1e-5)
    assert confidence.dtype == np.float32

    same_size, none = postprocess(logits, (4, 4))
    np.testing.assert_array_equal(same_size, coarse)
    assert none is None


def test_normalize_is_the_whole_array_formula_bit_for_bit():
    """Channel by channel into the 3xHxW result, the values of ``(x * scale + shift)`` on the
    whole HxWx3 array, transposed: the same float32 bits, so models see the input they did."""
    rgb = scene(5, 37, 53)[5:, 3:]  # a strided crop, as training's augmentation gives
    std = np.asarray(STD, np.float32)
    scale, shift = 1.0 / (255.0 * std), -np.asarray(MEAN, np.float32) / std
    reference = np.ascontiguousarray((rgb.astype(np.float32) * scale + shift).transpose(2, 0, 1))
    ours = normalize(rgb, MEAN, STD)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours.view(np.uint32), reference.view(np.uint32))
    as_float = normalize(rgb.astype(np.float64), MEAN, STD)
    np.testing.assert_array_equal(as_float.view(np.uint32), reference.view(np.uint32))


def test_argmax_classes_is_numpys_argmax_ties_and_nan_included():
    rng = np.random.default_rng(1)
    ties = rng.integers(0, 3, (NUM_CLASSES, 20, 30)).astype(np.float32)  # many equal maxima
    smooth = rng.normal(0, 1, (NUM_CLASSES, 20, 30)).astype(np.float32)
    with_nan = smooth.copy()
    with_nan[3, 2, 5] = with_nan[7, 2, 5] = with_nan[0, 4, 4] = np.nan
    for scores in (ties, smooth, with_nan, -np.inf * np.ones((2, 3, 3), np.float32)):
        expected = scores.argmax(axis=0).astype(np.uint8)
        ours = argmax_classes(scores)
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, expected)


def test_postprocess_rejects_a_batch():
    with pytest.raises(ValueError, match=r"\(1, C, h, w\)"):
        postprocess(np.zeros((2, 14, 4, 4), np.float32), (4, 4))


# --------------------------------------------------------------------------------------------
# Segmenter on real models
# --------------------------------------------------------------------------------------------
def test_onnx_segmenter_reads_metadata_and_segments_at_source_size(tiny_onnx):
    seg = Segmenter(str(tiny_onnx), threads=1)
    assert (seg.backend_name, seg.input_size, seg.num_classes, seg.precision) == (
        "onnxruntime", 128, NUM_CLASSES, "fp32")
    assert seg.runner.providers == ["CPUExecutionProvider"]
    assert seg.class_names == [c["name"] for c in class_table()]
    rgb = scene(7, 90, 170)
    result = seg.segment(rgb, with_confidence=True)
    assert result.labels.shape == (90, 170) and result.labels.dtype == np.uint8
    assert result.labels.max() < NUM_CLASSES
    assert len(np.unique(result.labels)) > 1
    assert result.confidence.shape == (90, 170) and result.confidence.dtype == np.float32
    assert np.all(result.confidence > 1.0 / NUM_CLASSES - 1e-6) and np.all(result.confidence <= 1)
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0 for v in result.timings_ms.values())
    # the label map is the argmax of the logits, resized: recompute it by hand
    logits = seg.infer(seg.preprocess(rgb))
    expected = cv2.resize(logits[0].argmax(0).astype(np.uint8), (170, 90),
                          interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(result.labels, expected)
    # the confidence is the winning class's softmax probability, resized the same way
    # (> 1/C holds for any probability vector, so it is recomputed here by hand too)
    probs = np.exp(logits[0] - logits[0].max(axis=0)).astype(np.float64)
    probs /= probs.sum(axis=0)
    winner = cv2.resize(probs.max(axis=0).astype(np.float32), (170, 90),
                        interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_allclose(result.confidence, winner, rtol=1e-4, atol=1e-6)
    assert seg.segment(rgb).confidence is None


def test_pytorch_and_onnxruntime_back_ends_agree(tiny_checkpoint, tiny_onnx):
    torch_seg = Segmenter(str(tiny_checkpoint), threads=1)
    onnx_seg = Segmenter(str(tiny_onnx), threads=1)
    assert torch_seg.backend_name == "pytorch" and torch_seg.input_size == onnx_seg.input_size
    for seed in (11, 12):
        rgb = scene(seed, 128, 160)
        x = onnx_seg.preprocess(rgb)
        np.testing.assert_allclose(torch_seg.infer(x), onnx_seg.infer(x), atol=1e-3)
        a, b = torch_seg.segment(rgb).labels, onnx_seg.segment(rgb).labels
        assert (a == b).mean() >= 0.999


def test_onnxruntime_path_never_imports_torch(tiny_onnx):
    """The drone's path: import the runtime, load the ONNX model, segment; torch stays out of
    sys.modules, and an import of it would fail loudly (it is blocked)."""
    code = "\n".join([
        "import sys",
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError",
        "import numpy as np",
        "import lpcv_segmentation.runtime.segmenter as runtime",
        "seg = runtime.Segmenter(sys.argv[1], threads=1)",
        "res = seg.segment(np.full((60, 80, 3), 100, np.uint8), with_confidence=True)",
        "assert res.labels.shape == (60, 80), res.labels.shape",
        "del sys.modules['torch']",
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))",
        "print('torch modules:', loaded)",
        "assert not loaded, loaded",
    ])
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_onnx)], cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch modules: []" in proc.stdout


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_unknown_back_end_is_named(tiny_onnx):
    with pytest.raises(RuntimeConfigError, match="unknown back end 'openvino'.*onnxruntime"):
        Segmenter(str(tiny_onnx), backend="openvino")


def test_back_end_from_file_ending():
    assert resolve_backend("m.onnx") == "onnxruntime"
    assert resolve_backend("run/best.safetensors") == "pytorch"
    assert resolve_backend("m.engine") == "tensorrt"
    assert resolve_backend("m.onnx", "pytorch") == "pytorch"
    assert set(BACKENDS) == {"onnxruntime", "pytorch", "tensorrt"}
    with pytest.raises(RuntimeConfigError, match=r"model\.tflite.*'\.tflite'"):
        resolve_backend("model.tflite")


def test_missing_model_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(RuntimeConfigError, match="model file .*nowhere.onnx does not exist"):
        Segmenter(str(missing))


def test_file_that_is_not_onnx_is_named(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(RuntimeConfigError, match="garbage.onnx: ONNX Runtime cannot load it"):
        Segmenter(str(bad))


def _tiny_graph(path: Path, input_shape, meta=None) -> Path:
    """A real one-node ONNX model (a 1x1 conv to 14 channels) with the given input shape."""
    channels = input_shape[1]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [NUM_CLASSES, channels, 1, 1],
                                np.ones(NUM_CLASSES * channels, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       [1, NUM_CLASSES] + list(input_shape[2:]))],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(model, str(path))
    return path


def _meta(input_size=64, **extra):
    return dict({"input_size": input_size, "num_classes": NUM_CLASSES, "mean": list(MEAN),
                 "std": list(STD), "classes": class_table()}, **extra)


def test_hand_built_onnx_model_runs(tmp_path):
    path = _tiny_graph(tmp_path / "ok.onnx", [1, 3, 64, 64], _meta(64))
    result = Segmenter(str(path)).segment(np.zeros((30, 40, 3), np.uint8))
    assert result.labels.shape == (30, 40)


@pytest.mark.parametrize("shape, pattern", [
    ([1, 3, 32, 32], r"wrong\.onnx: input 'input' has shape \[1, 3, 32, 32\].*input_size 64"),
    ([1, 1, 64, 64], r"wrong\.onnx: input 'input' has shape \[1, 1, 64, 64\]"),
])
def test_onnx_input_shape_must_match_its_metadata(tmp_path, shape, pattern):
    path = _tiny_graph(tmp_path / "wrong.onnx", shape, _meta(64))
    with pytest.raises(RuntimeConfigError, match=pattern):
        Segmenter(str(path))


def test_onnx_without_metadata_is_refused(tmp_path):
    path = _tiny_graph(tmp_path / "plain.onnx", [1, 3, 64, 64], meta=None)
    with pytest.raises(RuntimeConfigError, match="plain.onnx has no 'lpcv_segmentation' metadata"):
        Segmenter(str(path))


def test_onnx_with_another_class_table_is_refused(tmp_path):
    table = class_table()
    table[10] = dict(table[10], name="pedestrian")
    path = _tiny_graph(tmp_path / "classes.onnx", [1, 3, 64, 64], _meta(64, classes=table))
    with pytest.raises(RuntimeConfigError, match="classes.onnx: model's class table"):
        Segmenter(str(path))


def test_onnx_precision_request_the_file_cannot_honour(tmp_path):
    path = _tiny_graph(tmp_path / "fp32.onnx", [1, 3, 64, 64], _meta(64, precision="fp32"))
    with pytest.raises(RuntimeConfigError, match="fp32.onnx is a fp32 model.*--fp16"):
        Segmenter(str(path), precision="fp16")
    with pytest.raises(RuntimeConfigError, match="unknown precision 'fp8'"):
        Segmenter(str(path), precision="fp8")


def test_onnxruntime_provider_choice():
    cpu_only = ["CPUExecutionProvider"]
    jetson = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    choose = OnnxRuntimeBackend.choose_providers
    assert choose(jetson, "cpu") == cpu_only
    assert choose(jetson, "cuda") == jetson
    assert choose(["CUDAExecutionProvider", "CPUExecutionProvider"], "auto") == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose(cpu_only, "auto") == cpu_only
    assert choose(jetson, "cuda", ["CUDAExecutionProvider"]) == ["CUDAExecutionProvider"]
    with pytest.raises(RuntimeConfigError, match="no GPU execution provider"):
        choose(cpu_only, "cuda")


def test_provider_that_is_not_installed_is_named(tiny_onnx):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(RuntimeConfigError, match="CUDAExecutionProvider.*not available"):
        Segmenter(str(tiny_onnx), providers=["CUDAExecutionProvider"])
    with pytest.raises(RuntimeConfigError, match="unknown device 'gpu'"):
        Segmenter(str(tiny_onnx), device="gpu")


def test_pytorch_back_end_refuses_fp16_on_cpu_and_int8(tiny_checkpoint):
    with pytest.raises(RuntimeConfigError, match="fp16 needs device cuda"):
        Segmenter(str(tiny_checkpoint), precision="fp16")
    with pytest.raises(RuntimeConfigError, match="int8"):
        Segmenter(str(tiny_checkpoint), precision="int8")


def test_pytorch_back_end_names_a_bad_checkpoint(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(RuntimeConfigError, match="broken.safetensors"):
        Segmenter(str(bad))


def test_tensorrt_back_end_says_tensorrt_is_missing(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(RuntimeConfigError, match="back end 'tensorrt' needs the tensorrt Python "
                                                 "package, which is not installed"):
        Segmenter(str(engine))
