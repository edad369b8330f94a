"""Strided models end to end: ``export --output-stride native`` leaves the logits at the
decoder's stride and records it; the runtime recognises such a file by its metadata and its
output shape, and upsamples labels or logits to the image size; the PyTorch back end runs a
checkpoint that records the stride the same way; ``training evaluate --upsample`` scores both."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from lpcv_segmentation.core.classes import NUM_CLASSES, class_table
from lpcv_segmentation.runtime.segmenter import (METADATA_KEY, RuntimeConfigError, Segmenter,
                                                 postprocess)
from training.__main__ import main as training_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

STRIDE = 4  # the fixture's decoder is upernet: logits at 1/4


def scene(seed: int, height: int, width: int) -> np.ndarray:
    from training.synth import render_scene
    rgb = render_scene(seed, max(height, width))[0]
    return np.ascontiguousarray(rgb[:height, :width])


@pytest.fixture(scope="module")
def strided_onnx(tiny_strided_onnx) -> Path:
    """The tiny checkpoint exported with its logits at the decoder's stride, by the command
    (``fixtures_model.tiny_strided_onnx``)."""
    return tiny_strided_onnx


def onnx_meta(path: Path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY])


def test_export_leaves_the_logits_at_the_stride_and_records_it(strided_onnx, tiny_onnx):
    model = onnx.load(str(strided_onnx))
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, NUM_CLASSES, 128 // STRIDE, 128 // STRIDE]
    meta = onnx_meta(strided_onnx)
    assert meta["output_stride"] == STRIDE and meta["input_size"] == 128
    assert "output_stride" not in onnx_meta(tiny_onnx)  # the full-size export is unchanged
    assert [n.op_type for n in model.graph.node].count("Resize") < \
        [n.op_type for n in onnx.load(str(tiny_onnx)).graph.node].count("Resize")


def test_both_upsamplings_give_the_source_size_and_agree_with_torch(strided_onnx, tiny_checkpoint):
    from lpcv_segmentation.model.checkpoint import load_checkpoint
    model, _ = load_checkpoint(str(tiny_checkpoint))
    model.eval()
    by_labels = Segmenter(str(strided_onnx), threads=1, upsample="labels")
    by_logits = Segmenter(str(strided_onnx), threads=1, upsample="logits")
    assert by_labels.output_stride == STRIDE and by_labels.upsample == "labels"
    assert Segmenter(str(strided_onnx), threads=1).upsample == "labels"  # the default
    for seed, (h, w) in ((21, (128, 128)), (22, (90, 170))):
        rgb = scene(seed, h, w)
        with torch.no_grad():  # what a full-size model computes: bilinear logits, argmax
            full = model(torch.from_numpy(by_labels.preprocess(rgb)))[0].numpy()
        reference = postprocess(full[None], (h, w))[0]
        labels = by_labels.segment(rgb, with_confidence=True)
        logits = by_logits.segment(rgb, with_confidence=True)
        for result in (labels, logits):
            assert result.labels.shape == (h, w) and result.labels.dtype == np.uint8
            assert result.confidence.shape == (h, w)
            assert np.all(result.confidence > 1.0 / NUM_CLASSES - 1e-6)
        assert len(np.unique(reference)) > 2  # not a comparison of constant maps
        assert (labels.labels == reference).mean() > 0.7  # random weights: many class borders
        # the logits resized bilinearly are the graph's own resize: the same labels at 128x128
        assert (logits.labels == reference).mean() > (0.999 if (h, w) == (128, 128) else 0.95)
        assert (logits.labels == reference).mean() >= (labels.labels == reference).mean()


def test_full_size_models_ignore_the_upsampling_setting(tiny_onnx):
    rgb = scene(23, 90, 170)
    a = Segmenter(str(tiny_onnx), threads=1).segment(rgb).labels
    b = Segmenter(str(tiny_onnx), threads=1, upsample="logits").segment(rgb).labels
    np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeConfigError, match="unknown upsample 'cubic'"):
        Segmenter(str(tiny_onnx), upsample="cubic")


def test_postprocess_upsamples_logits_bilinearly():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, (1, NUM_CLASSES, 4, 4)).astype(np.float32)
    labels, confidence = postprocess(logits, (16, 16), True, upsample="logits")
    up = torch.nn.functional.interpolate(torch.from_numpy(logits), size=(16, 16), mode="bilinear",
                                         align_corners=False)[0]
    np.testing.assert_array_equal(labels, up.argmax(0).numpy())
    np.testing.assert_allclose(confidence, up.softmax(0).max(0).values.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="upsample must be one of labels, logits"):
        postprocess(logits, (16, 16), upsample="nearest")


def _graph_with_output(path: Path, out_side: int, meta: dict) -> Path:
    """A real ONNX model: 64x64 input, a strided 1x1 conv to 14 classes of out_side x out_side."""
    stride = 64 // out_side
    weight = helper.make_tensor("w", TensorProto.FLOAT, [NUM_CLASSES, 3, 1, 1],
                                np.ones(NUM_CLASSES * 3, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"], strides=[stride, stride])], "s",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       [1, NUM_CLASSES, out_side, out_side])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(dict(
        {"input_size": 64, "num_classes": NUM_CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3,
         "classes": class_table()}, **meta))
    onnx.save(model, str(path))
    return path


def test_a_matching_hand_built_strided_model_runs(tmp_path):
    path = _graph_with_output(tmp_path / "s8.onnx", 8, {"output_stride": 8})
    assert Segmenter(str(path)).segment(np.zeros((50, 70, 3), np.uint8)).labels.shape == (50, 70)


@pytest.mark.parametrize("side, meta, pattern", [
    (16, {"output_stride": 8}, r"wrong\.onnx: output 'logits' has shape \[1, 14, 16, 16\], but "
                               r"its metadata says output_stride 8 at input_size 64, so the "
                               r"logits should be 8x8"),
    (8, {}, r"wrong\.onnx: output 'logits' has shape \[1, 14, 8, 8\], but its metadata records "
            r"no output_stride.*--output-stride native"),
    (8, {"output_stride": 3}, r"wrong\.onnx: metadata output_stride must be a positive whole "
                              r"number that divides input_size 64, got 3"),
])
def test_output_shape_that_disagrees_with_the_metadata_names_the_file(tmp_path, side, meta,
                                                                      pattern):
    path = _graph_with_output(tmp_path / "wrong.onnx", side, meta)
    with pytest.raises(RuntimeConfigError, match=pattern):
        Segmenter(str(path))


def test_pytorch_back_end_runs_a_checkpoint_that_records_the_stride(tmp_path, tiny_checkpoint,
                                                                    strided_onnx):
    from lpcv_segmentation.model.checkpoint import load_checkpoint, save_checkpoint
    model, meta = load_checkpoint(str(tiny_checkpoint))
    strided = tmp_path / "strided.safetensors"
    save_checkpoint(str(strided), model, dict(meta, output_stride=STRIDE))
    torch_seg = Segmenter(str(strided), threads=1)
    onnx_seg = Segmenter(str(strided_onnx), threads=1)
    x = onnx_seg.preprocess(scene(24, 128, 128))
    assert torch_seg.infer(x).shape == (1, NUM_CLASSES, 128 // STRIDE, 128 // STRIDE)
    np.testing.assert_allclose(torch_seg.infer(x), onnx_seg.infer(x), atol=1e-3)
    # such a checkpoint (default-model's, with a strided export) exports strided unless told otherwise
    from training.export import export_onnx
    exported = tmp_path / "from_strided.onnx"
    assert export_onnx(str(strided), str(exported), verify_images=1)["output_stride"] == STRIDE
    assert onnx_meta(exported)["output_stride"] == STRIDE
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(str(wrong), model, dict(meta, output_stride=8))
    with pytest.raises(RuntimeConfigError, match=r"wrong\.safetensors: output 'logits' has shape "
                                                 r"\[1, 14, 32, 32\].*output_stride 8"):
        Segmenter(str(wrong))


def test_evaluate_scores_a_strided_file_with_either_upsampling(strided_onnx, synth_dataset,
                                                               tmp_path):
    results = {}
    for upsample in ("labels", "logits"):
        out = tmp_path / ("%s.json" % upsample)
        assert training_main(["evaluate", "--checkpoint", str(strided_onnx), "--data",
                              str(synth_dataset), "--split", "val", "--json", str(out),
                              "--limit", "2", "--warmup", "0", "--upsample", upsample]) == 0
        results[upsample] = json.loads(out.read_text())
    for upsample, result in results.items():
        assert result["output_stride"] == STRIDE and result["upsample"] == upsample
        assert 0.0 <= result["miou"] <= 1.0 and result["postprocess_ms"] >= 0
    assert results["labels"]["per_class_iou"] != results["logits"]["per_class_iou"]
