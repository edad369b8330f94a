"""Wrap a foreign ONNX segmentation model so that this project's runtime runs it unchanged.

The graph surgery behind ``python -m training import-onnx`` and the model zoo
(``lpcv_segmentation.zoo``), which wraps every model it fetches: on the drone side so that a
drone or ground station can install a zoo model without the training package or torch. Needs
the ``onnx`` package (protobuf handling; imported inside the functions that edit a graph) and
ONNX Runtime.

The copy written has:
  - the input renamed ``input`` and fixed to 1x3xSxS float32;
  - logits ``logits`` of shape 1xCxSxS: when the foreign model's logits are smaller than its
    input (a stride, e.g. 8), a bilinear Resize (half-pixel centres, i.e. PyTorch's
    ``align_corners=False``, mmsegmentation's default) to SxS is appended to the graph, so that
    ``Segmenter``'s post-processing (argmax, nearest resize to the image) does what the foreign
    model's own inference code does (upsample the logits bilinearly, then argmax), and a GPU back
    end runs the upsampling with the rest of the graph; or, with ``keep_stride``
    (``import-onnx --keep-stride``), the logits left at their stride and the stride recorded as
    the metadata's ``output_stride`` (with ``upsample: logits``, what the foreign model's own
    inference does), so that the runtime upsamples them (docs/runtime.md: strided models);
  - this project's metadata (``metadata_props["lpcv_segmentation"]``, as ``training export``
    writes it): class table, input size, mean and std for RGB scaled to [0, 1], precision, the
    parameter count and where the file came from.

Normalisation: mean/std are read on the scale ``norm_scale`` names (255: on 0-255 pixel values,
as most model zoos publish them, mmsegmentation's 123.675 ...; 1: on [0, 1], 0.485 ...); they
are divided by it for the metadata, which normalises RGB in [0, 1]. Values that look like the
other scale are refused rather than guessed.

The foreign model is run once in ONNX Runtime on a blank input to learn its real output shape;
the stride is the input size over the logits' size and must match ``output_stride`` when given.
Before the copy is written it is loaded through ``Segmenter`` and its logits are checked against
the foreign model's own, upsampled. Every refusal names the file.

Runs on Python 3.8+.
"""
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lpcv_segmentation.core.classes import class_table
from lpcv_segmentation.core.fileio import atomic_path, file_sha256
from lpcv_segmentation.runtime.segmenter import (INPUT_NAME, METADATA_KEY, OUTPUT_NAME,
                                                 RuntimeConfigError, Segmenter, preprocess)

__all__ = ["ImportOnnxError", "CLASS_TABLES", "NORM_SCALES", "normalisation_to_unit_scale",
           "import_onnx", "upsample_logits", "set_metadata"]


CLASS_TABLES = {"lpcv": class_table}  # --classes name -> the table it stands for
NORM_SCALES = (255.0, 1.0)
MIN_OPSET = 11  # Resize with sizes, half_pixel coordinates
# Largest |logit| difference accepted between the imported copy and the foreign model upsampled
# in numpy (float32 rounding in two bilinear implementations).
CHECK_ATOL = 1e-3


class ImportOnnxError(ValueError):
    """A foreign model or option that cannot be imported; the message names the file."""


def normalisation_to_unit_scale(mean: Sequence[float], std: Sequence[float], scale: float,
                                source: str = "--mean/--std") -> Dict[str, List[float]]:
    """Mean and std for RGB in [0, 1] from values given on the ``scale`` (255 or 1) pixel range.

    Refuses values that cannot be on that scale: with 255, all of mean <= 1 and std <= 1 look
    like [0, 1] values (mmsegmentation's are 123.675 ... and 58.395 ...); with 1, a mean above 1
    or a std above 1 looks like 0-255 values."""
    if float(scale) not in NORM_SCALES:
        raise ImportOnnxError("%s: --norm-scale must be 255 or 1, got %r" % (source, scale))
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3:
        raise ImportOnnxError("%s: --mean and --std need 3 values each (R G B), got %d and %d"
                              % (source, len(mean), len(std)))
    if any(s <= 0 for s in std):
        raise ImportOnnxError("%s: --std must be positive, got %s" % (source, std))
    if scale == 255.0 and max(mean + std) <= 1.0:
        raise ImportOnnxError("%s: mean %s and std %s look like values for RGB in [0, 1], but "
                              "--norm-scale is 255; pass --norm-scale 1" % (source, mean, std))
    if scale == 1.0 and (max(mean) > 1.0 or max(std) > 1.0):
        raise ImportOnnxError("%s: mean %s and std %s look like values on 0-255 pixels, but "
                              "--norm-scale is 1; pass --norm-scale 255" % (source, mean, std))
    return {"mean": [m / scale for m in mean], "std": [s / scale for s in std]}


def upsample_logits(logits: np.ndarray, size: int) -> np.ndarray:
    """(1, C, h, w) -> (1, C, S, S) float32, bilinear with half-pixel centres (what the
    appended Resize computes; OpenCV's INTER_LINEAR on enlargement is the same rule)."""
    import cv2
    if logits.shape[2:] == (size, size):
        return logits.astype(np.float32)
    channels = [cv2.resize(np.ascontiguousarray(c, np.float32), (size, size),
                           interpolation=cv2.INTER_LINEAR) for c in logits[0]]
    return np.stack(channels)[None]


# --------------------------------------------------------------------------------------------
# Graph surgery
# --------------------------------------------------------------------------------------------
def _load(path: str) -> Any:
    import onnx
    if not os.path.isfile(path):
        raise ImportOnnxError("%s: no such file" % path)
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as error:  # noqa: BLE001  DecodeError, ValidationError, OSError ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ImportOnnxError("%s: not a valid ONNX model (%s: %s)"
                              % (path, type(error).__name__, first))
    return proto


def _graph_inputs(proto: Any) -> List[Any]:
    """The real inputs: graph inputs that are not initializers (old exporters list both)."""
    weights = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in weights]


def _opset(proto: Any) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename a tensor everywhere it is produced or consumed."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.name == old:
            info.name = new


def _check_input(proto: Any, path: str, size: int) -> Any:
    import onnx
    inputs = _graph_inputs(proto)
    if len(inputs) != 1:
        raise ImportOnnxError("%s: expected one image input, found %d (%s)"
                              % (path, len(inputs), ", ".join(i.name for i in inputs)))
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ImportOnnxError("%s: input %r is %s; expected float32 (normalised RGB)"
                              % (path, inputs[0].name,
                                 onnx.TensorProto.DataType.Name(tensor.elem_type)))
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if len(dims) != 4:
        raise ImportOnnxError("%s: input %r has %d dimensions %s; expected a 4-D NCHW image "
                              "(1, 3, H, W)" % (path, inputs[0].name, len(dims), dims))
    expected = [1, 3, size, size]
    wrong = [(i, d) for i, (d, e) in enumerate(zip(dims, expected)) if d not in (None, e)]
    if wrong:
        raise ImportOnnxError("%s: input %r has shape %s, which does not take a 1x3x%dx%d image "
                              "(--input-size %d)" % (path, inputs[0].name, dims, size, size, size))
    return inputs[0]


def _output_shape(proto: Any, path: str, size: int) -> List[int]:
    """The real shape of the first output on a blank 1x3xSxS input (ONNX Runtime, CPU)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        out = session.run([session.get_outputs()[0].name],
                          {session.get_inputs()[0].name: np.zeros((1, 3, size, size), np.float32)})
    except Exception as error:  # noqa: BLE001  onnxruntime's own error types
        raise ImportOnnxError("%s: ONNX Runtime cannot run it on a 1x3x%dx%d input: %s"
                              % (path, size, size, str(error).strip().splitlines()[0]))
    return list(out[0].shape)


def _stride(shape: List[int], path: str, size: int, num_classes: int, classes: str,
            output_stride: Optional[int]) -> int:
    if len(shape) != 4 or shape[0] != 1:
        raise ImportOnnxError("%s: output has shape %s; expected (1, C, h, w) logits"
                              % (path, shape))
    if shape[1] != num_classes:
        raise ImportOnnxError("%s: output has %d channels, but the class table %r has %d classes"
                              % (path, shape[1], classes, num_classes))
    h, w = shape[2], shape[3]
    if h != w or size % h:
        raise ImportOnnxError("%s: logits of %dx%d do not tile a %dx%d input at a whole stride"
                              % (path, h, w, size, size))
    stride = size // h
    if output_stride is not None and output_stride != stride:
        raise ImportOnnxError("%s: --output-stride %d, but the logits are %dx%d for a %dx%d "
                              "input: stride %d" % (path, output_stride, h, w, size, size, stride))
    return stride


def _append_resize(proto: Any, logits: str, num_classes: int, size: int) -> None:
    """Bilinear Resize (half-pixel, as F.interpolate(align_corners=False)) to 1xCxSxS."""
    import onnx
    from onnx import helper, numpy_helper
    graph = proto.graph
    names = {"roi": "lpcv_import_resize_roi", "scales": "lpcv_import_resize_scales",
             "sizes": "lpcv_import_resize_sizes"}
    graph.initializer.extend([
        numpy_helper.from_array(np.zeros(0, np.float32), names["roi"]),  # required before opset 13
        numpy_helper.from_array(np.zeros(0, np.float32), names["scales"]),
        numpy_helper.from_array(np.array([1, num_classes, size, size], np.int64), names["sizes"]),
    ])
    graph.node.append(helper.make_node(
        "Resize", [logits, names["roi"], names["scales"], names["sizes"]], [OUTPUT_NAME],
        name="lpcv_import_upsample", mode="linear", coordinate_transformation_mode="half_pixel"))
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT,
                                                      [1, num_classes, size, size]))


def import_onnx(onnx_path: str, out_path: str, input_size: int, mean: Sequence[float],
                std: Sequence[float], classes: str = "lpcv", norm_scale: float = 255.0,
                output_stride: Optional[int] = None, source_name: Optional[str] = None,
                extra: Optional[Dict[str, Any]] = None, keep_stride: bool = False) -> Dict[str, Any]:
    """Write ``out_path``: ``onnx_path`` with this project's I/O names, upsampled logits (or,
    with ``keep_stride``, strided logits and their ``output_stride``) and metadata (see the
    module docstring). ``source_name``: the file name the metadata records
    (default: ``onnx_path``'s; the zoo wraps a temporary copy of a published file); ``extra``:
    more metadata entries (the zoo's record). Returns a report; ImportOnnxError names what is
    wrong."""
    import onnx

    onnx_path, out_path = os.fspath(onnx_path), os.fspath(out_path)
    if classes not in CLASS_TABLES:
        raise ImportOnnxError("%s: unknown class table %r; known: %s"
                              % (onnx_path, classes, ", ".join(CLASS_TABLES)))
    if int(input_size) < 1:
        raise ImportOnnxError("%s: --input-size must be positive, got %s" % (onnx_path, input_size))
    if output_stride is not None and int(output_stride) < 1:
        raise ImportOnnxError("%s: --output-stride must be positive, got %s"
                              % (onnx_path, output_stride))
    size = int(input_size)
    source_name = source_name or os.path.basename(onnx_path)
    norm = normalisation_to_unit_scale(mean, std, norm_scale, onnx_path)
    table = CLASS_TABLES[classes]()
    num_classes = len(table)

    proto = _load(onnx_path)
    opset = _opset(proto)
    if opset < MIN_OPSET:
        raise ImportOnnxError("%s: opset %d; import needs opset %d or newer (re-export the model, "
                              "or convert it with onnx.version_converter)"
                              % (onnx_path, opset, MIN_OPSET))
    if len(proto.graph.output) < 1:
        raise ImportOnnxError("%s: the graph has no output" % onnx_path)
    image = _check_input(proto, onnx_path, size)
    foreign = {"input": image.name, "output": proto.graph.output[0].name}
    foreign_shape = _output_shape(proto, onnx_path, size)
    stride = _stride(foreign_shape, onnx_path, size, num_classes, classes, output_stride)

    graph = proto.graph
    del graph.output[1:]  # the runtime reads one output: the logits
    for dim, value in zip(image.type.tensor_type.shape.dim, (1, 3, size, size)):
        dim.Clear()
        dim.dim_value = value
    _rename(graph, image.name, INPUT_NAME)
    upsampled = stride != 1 and not keep_stride
    if not upsampled:
        _rename(graph, foreign["output"], OUTPUT_NAME)
    else:
        graph.value_info.append(graph.output[0])  # keep the stride logits' shape as value_info
        del graph.output[0]
        _append_resize(proto, foreign["output"], num_classes, size)
    params = int(sum(np.prod(t.dims) for t in graph.initializer
                     if not t.name.startswith("lpcv_import_")))
    meta = {
        "format": "lpcv-seg/1", "arch": "imported", "num_classes": num_classes,
        "input_size": size, "mean": norm["mean"], "std": norm["std"], "classes": table,
        "precision": "fp32", "params": params, "source": source_name,
        "imported": {"onnx": source_name, "sha256": file_sha256(onnx_path),
                     "input": foreign["input"], "output": foreign["output"],
                     "output_stride": stride, "upsampled_in_graph": upsampled,
                     "mean_given": [float(v) for v in mean], "std_given": [float(v) for v in std],
                     "norm_scale": float(norm_scale), "class_table": classes},
    }
    if stride != 1 and not upsampled:
        meta.update(output_stride=stride, upsample="logits")
    meta.update(extra or {})
    set_metadata(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ImportOnnxError("%s: the imported copy fails onnx.checker: %s"
                              % (onnx_path, str(error).strip().splitlines()[0]))

    with atomic_path(out_path, suffix=".onnx") as tmp:
        onnx.save(proto, tmp)
        check = _check_copy(onnx_path, tmp, size, norm, upsampled)  # raises: nothing is written
    return {"onnx": onnx_path, "out": out_path, "input_size": size, "output_stride": stride,
            "foreign_output_shape": foreign_shape, "upsampled_in_graph": upsampled,
            "mean": norm["mean"], "std": norm["std"], "params": params, "opset": opset,
            "classes": classes, "max_abs_diff": check, "bytes": os.path.getsize(out_path)}


def _check_copy(foreign_path: str, copy_path: str, size: int, norm: Dict[str, List[float]],
                upsampled: bool = True) -> float:
    """Load the copy through the runtime and compare its logits with the foreign model's own
    (upsampled here when the copy upsamples them) on a deterministic noise image; the largest
    |difference|."""
    import onnxruntime as ort
    try:
        segmenter = Segmenter(copy_path, backend="onnxruntime", device="cpu")
    except RuntimeConfigError as error:
        raise ImportOnnxError("%s: the imported copy does not load in the runtime: %s"
                              % (foreign_path, error))
    rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    x = preprocess(rgb, size, norm["mean"], norm["std"])
    session = ort.InferenceSession(foreign_path, providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: x})[0]
    if upsampled:
        reference = upsample_logits(reference, size)
    diff = float(np.abs(segmenter.infer(x) - reference).max())
    if not diff <= CHECK_ATOL * max(1.0, float(np.abs(reference).max())):
        raise ImportOnnxError("%s: the imported copy's logits differ from the foreign model's by "
                              "%.3g; nothing written" % (foreign_path, diff))
    return diff


def set_metadata(proto: Any, meta: Dict[str, Any]) -> Any:
    """Store ``meta`` as JSON under metadata_props["lpcv_segmentation"] (replacing it)."""
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == METADATA_KEY:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, default=str)
    return proto
