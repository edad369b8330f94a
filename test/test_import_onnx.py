"""training.import_onnx: a foreign ONNX segmentation model (made here with onnx.helper, in the
shape of an mmsegmentation export: its own tensor names, dynamic batch, logits at stride 8,
mean/std on 0-255 pixels) imported and run by the project's runtime and evaluator."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lpcv_segmentation.core.classes import NUM_CLASSES, class_table
from lpcv_segmentation.runtime.segmenter import METADATA_KEY, RuntimeConfigError, Segmenter
from training.__main__ import main as training_main
from training.import_onnx import ImportOnnxError, normalisation_to_unit_scale

SIZE = 64
MEAN_255 = (123.675, 116.28, 103.53)  # mmsegmentation's, on 0-255 pixel values
STD_255 = (58.395, 57.12, 57.375)


def foreign_model(path: Path, classes: int = NUM_CLASSES, convs: int = 3, conv_stride: int = 2,
                  input_dims=("N", 3, SIZE, SIZE), opset: int = 11, seed: int = 0) -> Path:
    """Three 3x3 stride-2 convs (stride 8 logits), input "img", output "seg", as an
    mmsegmentation-style export would name them; random weights that give varied labels."""
    rng = np.random.default_rng(seed)
    nodes, weights, channels, name = [], [], 3, "img"
    for i in range(convs):
        out = classes if i == convs - 1 else 12
        w = (rng.standard_normal((out, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
        b = (rng.standard_normal(out) * 0.1).astype(np.float32)
        weights += [numpy_helper.from_array(w, "w%d" % i), numpy_helper.from_array(b, "b%d" % i)]
        conv = "conv%d" % i
        nodes.append(helper.make_node("Conv", [name, "w%d" % i, "b%d" % i], [conv],
                                      kernel_shape=[3, 3], strides=[conv_stride] * 2, pads=[1] * 4))
        name = conv
        if i < convs - 1:
            nodes.append(helper.make_node("Relu", [conv], ["relu%d" % i]))
            name = "relu%d" % i
        channels = out
    nodes.append(helper.make_node("Identity", [name], ["seg"]))
    graph = helper.make_graph(
        nodes, "foreign",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, list(input_dims))],
        [helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["N", classes, "h", "w"])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def run_import(foreign: Path, out: Path, *extra: str) -> int:
    return training_main(["import-onnx", "--onnx", str(foreign), "--out", str(out),
                          "--input-size", str(SIZE), "--mean", *map(str, MEAN_255),
                          "--std", *map(str, STD_255), "--classes", "lpcv", *extra])


def by_hand(foreign: Path, rgb: np.ndarray) -> np.ndarray:
    """The foreign model's own inference, written out: resize to SxS, (x - mean) / std on 0-255
    values, its logits, bilinear upsampling (PyTorch, align_corners=False), argmax, then the
    label map back to the image size (nearest)."""
    import torch
    x = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    x = ((x - np.float32(MEAN_255)) / np.float32(STD_255)).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(foreign), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"img": np.ascontiguousarray(x, np.float32)})[0]
    assert logits.shape == (1, NUM_CLASSES, SIZE // 8, SIZE // 8)
    up = torch.nn.functional.interpolate(torch.from_numpy(logits), size=(SIZE, SIZE),
                                         mode="bilinear", align_corners=False)
    labels = up[0].argmax(0).numpy().astype(np.uint8)
    return cv2.resize(labels, rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST_EXACT)


def test_stride8_model_runs_in_the_runtime_as_its_own_code_would(tmp_path, capsys):
    foreign = foreign_model(tmp_path / "foreign.onnx")
    out = tmp_path / "imported.onnx"
    assert run_import(foreign, out, "--output-stride", "8") == 0
    assert "stride 8 (bilinear upsampling appended)" in capsys.readouterr().out

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in model.graph.input] == [("input", [1, 3, SIZE, SIZE])]
    assert [(o.name, dims(o)) for o in model.graph.output] == [
        ("logits", [1, NUM_CLASSES, SIZE, SIZE])]
    assert model.graph.node[-1].op_type == "Resize"
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta["classes"] == class_table() and meta["input_size"] == SIZE
    np.testing.assert_allclose(meta["mean"], np.array(MEAN_255) / 255)
    np.testing.assert_allclose(meta["std"], np.array(STD_255) / 255)
    assert meta["imported"]["output_stride"] == 8 and meta["imported"]["onnx"] == "foreign.onnx"

    segmenter = Segmenter(str(out))  # a real ONNX Runtime session, as the node builds it
    rng = np.random.default_rng(1)
    for shape in ((SIZE, SIZE, 3), (90, 150, 3)):
        rgb = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (9, 9), 3)
        labels = segmenter.segment(rgb).labels
        expected = by_hand(foreign, rgb)
        assert labels.shape == expected.shape
        assert (labels == expected).mean() > 0.999
        assert len(np.unique(expected)) > 2  # the comparison is not between two constant maps


def test_keep_stride_leaves_the_upsampling_to_the_runtime(tmp_path, capsys):
    foreign = foreign_model(tmp_path / "foreign.onnx")
    out = tmp_path / "strided.onnx"
    assert run_import(foreign, out, "--output-stride", "8", "--keep-stride") == 0
    assert "stride 8 (kept; the runtime upsamples)" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert "Resize" not in [n.op_type for n in model.graph.node]
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert (meta["output_stride"], meta["upsample"]) == (8, "logits")
    assert meta["imported"]["upsampled_in_graph"] is False
    segmenter = Segmenter(str(out))
    assert segmenter.output_stride == 8 and segmenter.upsample == "logits"
    rgb = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3),
                                                             dtype=np.uint8), (9, 9), 3)
    expected = by_hand(foreign, rgb)  # the foreign model's own inference
    assert len(np.unique(expected)) > 2 and (segmenter.segment(rgb).labels == expected).mean() > 0.999


def test_imported_model_is_evaluated_by_training_evaluate(tmp_path, synth_dataset, capsys):
    foreign = foreign_model(tmp_path / "foreign.onnx")
    out = tmp_path / "imported.onnx"
    assert run_import(foreign, out) == 0  # stride read from the model
    report = tmp_path / "eval.json"
    assert training_main(["evaluate", "--checkpoint", str(out), "--data", str(synth_dataset),
                          "--split", "val", "--json", str(report), "--limit", "3",
                          "--warmup", "1"]) == 0
    result = json.loads(report.read_text())
    assert result["images"] == 3 and 0.0 <= result["miou"] <= 1.0
    assert result["params"] == sum(int(np.prod(t.dims))
                                   for t in onnx.load(str(foreign)).graph.initializer)


def test_full_resolution_logits_are_kept_without_a_resize(tmp_path):
    foreign = foreign_model(tmp_path / "full.onnx", convs=1, conv_stride=1)
    out = tmp_path / "imported.onnx"
    assert run_import(foreign, out) == 0
    model = onnx.load(str(out))
    assert [n.op_type for n in model.graph.node] == ["Conv", "Identity"]
    assert model.graph.output[0].name == "logits"
    labels = Segmenter(str(out)).segment(np.zeros((SIZE, SIZE, 3), np.uint8)).labels
    assert labels.shape == (SIZE, SIZE)


def test_mean_and_std_scales():
    unit = normalisation_to_unit_scale(MEAN_255, STD_255, 255)
    np.testing.assert_allclose(unit["mean"], [0.485, 0.456, 0.406], atol=1e-12)
    np.testing.assert_allclose(unit["std"], [0.229, 0.224, 0.225], atol=1e-12)
    same = normalisation_to_unit_scale((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1)
    assert same == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    # The same normalised value either way: (x - m) / s == (x/255 - m/255) / (s/255).
    x = np.arange(256, dtype=np.float64)
    np.testing.assert_allclose((x / 255 - unit["mean"][0]) / unit["std"][0],
                               (x - MEAN_255[0]) / STD_255[0])
    with pytest.raises(ImportOnnxError,
                       match="look like values for RGB in \\[0, 1\\].*--norm-scale 1"):
        normalisation_to_unit_scale((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255)
    with pytest.raises(ImportOnnxError, match="look like values on 0-255 pixels.*--norm-scale 255"):
        normalisation_to_unit_scale(MEAN_255, STD_255, 1)
    with pytest.raises(ImportOnnxError, match="--std must be positive"):
        normalisation_to_unit_scale(MEAN_255, (58.0, 0.0, 57.0), 255)


def test_unit_scale_values_on_the_command_line(tmp_path):
    foreign = foreign_model(tmp_path / "foreign.onnx")
    out = tmp_path / "imported.onnx"
    assert training_main(["import-onnx", "--onnx", str(foreign), "--out", str(out),
                          "--input-size", str(SIZE), "--mean", "0.485", "0.456", "0.406",
                          "--std", "0.229", "0.224", "0.225", "--norm-scale", "1"]) == 0
    assert Segmenter(str(out)).metadata["mean"] == [0.485, 0.456, 0.406]


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a protobuf at all")
    return path


@pytest.mark.parametrize("make, extra, pattern", [
    (lambda p: foreign_model(p, classes=13), [], r"output has 13 channels, but the class table "
                                                 r"'lpcv' has 14"),
    (lambda p: foreign_model(p, input_dims=(3, SIZE, SIZE)), [], r"3 dimensions .* 4-D NCHW"),
    (lambda p: foreign_model(p, input_dims=(1, 3, 32, 32)), [], r"does not take a 1x3x64x64"),
    (foreign_model, ["--classes", "coco"], r"unknown class table 'coco'; known: lpcv"),
    (_garbage, [], r"not a valid ONNX model"),
    (foreign_model, ["--output-stride", "4"], r"--output-stride 4, but the logits are 8x8 .* "
                                              r"stride 8"),
    (lambda p: foreign_model(p, opset=10), [], r"opset 10; import needs opset 11"),
])
def test_refusals_name_the_file_and_write_nothing(tmp_path, capsys, make, extra, pattern):
    foreign = make(tmp_path / "foreign_model.onnx")
    out = tmp_path / "imported.onnx"
    assert run_import(foreign, out, *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("import-onnx: error: %s: " % foreign), err
    assert len(err.strip().splitlines()) == 1  # one clear line, no traceback
    assert re.search(pattern, err), err
    assert not out.exists() and list(tmp_path.iterdir()) == [foreign]


def test_runtime_refuses_logits_smaller_than_the_input(tmp_path):
    """A strided model given the metadata by hand, without the upsampling import adds: the
    runtime says how to import it instead of resizing a blocky label map."""
    from training.export import set_metadata
    model = onnx.load(str(foreign_model(tmp_path / "foreign.onnx", input_dims=(1, 3, SIZE, SIZE))))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(
        "seg", TensorProto.FLOAT, [1, NUM_CLASSES, SIZE // 8, SIZE // 8]))
    set_metadata(model, {"input_size": SIZE, "num_classes": NUM_CLASSES, "mean": [0.5] * 3,
                         "std": [0.25] * 3, "classes": class_table()})
    path = tmp_path / "strided.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RuntimeConfigError, match=r"strided\.onnx: output 'seg' has shape "
                                                 r"\[1, 14, 8, 8\].*import-onnx"):
        Segmenter(str(path))


def test_imported_model_serves_as_an_onnx_teacher(tmp_path):
    """`--teacher imported.onnx`: the teacher sees the training batch re-normalised to the
    foreign model's own 0-255 mean/std, and its logits equal the foreign model's, upsampled."""
    import torch
    from training.onnx_teacher import OnnxTeacher
    foreign = foreign_model(tmp_path / "foreign.onnx")
    out = tmp_path / "imported.onnx"
    assert run_import(foreign, out) == 0
    train_mean, train_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, [0, 1]
    teacher = OnnxTeacher(str(out), torch.device("cpu"), train_mean, train_std)

    noise = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    rgb = cv2.GaussianBlur(noise, (9, 9), 3)
    batch = ((rgb.astype(np.float32) / 255 - np.float32(train_mean)) / np.float32(train_std))
    batch = torch.from_numpy(batch.transpose(2, 0, 1)[None].copy())  # (1, 3, S, S)
    logits = teacher.logits(batch, (SIZE // 4, SIZE // 4))

    x = ((rgb.astype(np.float32) - np.float32(MEAN_255)) / np.float32(STD_255))
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)
    own = ort.InferenceSession(str(foreign), providers=["CPUExecutionProvider"]).run(
        None, {"img": x})[0]  # (1, C, S/8, S/8)
    up = torch.nn.functional.interpolate(torch.from_numpy(own), size=(SIZE, SIZE),
                                         mode="bilinear", align_corners=False)
    expected = torch.nn.functional.interpolate(up, size=(SIZE // 4, SIZE // 4),
                                               mode="bilinear", align_corners=False)
    assert logits.shape == (1, NUM_CLASSES, SIZE // 4, SIZE // 4)
    torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-3)
