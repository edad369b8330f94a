"""Export a checkpoint to ONNX (fp32, fp16 or int8) or to a TensorRT engine, and check it.

    python -m training export --checkpoint RUN/best.safetensors --format onnx --out model.onnx
    python -m training export --checkpoint CKPT --format onnx --fp16 --out model_fp16.onnx
    python -m training export --checkpoint CKPT --format onnx --int8 --calib DATASET --out model_int8.onnx
    python -m training export --checkpoint CKPT --format tensorrt --fp16 --out model.engine
    python -m training export --checkpoint CKPT --format onnx --output-stride native --out model.onnx

The ONNX model takes one float32 input "input" of shape 1x3xSxS (RGB normalised with the
model's mean/std) and returns float32 logits "logits" of shape 1xCxSxS (C = 14 classes).
S defaults to the checkpoint's input size. With ``--output-stride native`` the logits stay at
the decoder's resolution, 1xCx(S/N)x(S/N) with N = 8 for upernet_lite and 4 for upernet (the
model's final bilinear resize is left to the runtime, which upsamples labels or logits;
docs/runtime.md), and the metadata records ``output_stride`` N. The model metadata (class
table, normalisation, input size, precision, parameters, GMACs, the logits' stride) is stored
as the ONNX metadata_props key ``lpcv_segmentation``;
``lpcv_segmentation.runtime.segmenter.Segmenter`` reads it.

Before it reports success the export runs the file in ONNX Runtime (CPU) and in PyTorch on
synthetic scenes, prints the argmax agreement and the largest logit difference, and fails
below 99.9% agreement (fp32) or 99% (fp16). int8 (static post-training quantisation as
``--int8-recipe`` says, calibrated on images of DIR, a dataset in the LPCV layout) also reports its
agreement with fp32 and the mIoU of both on the dataset's val split (or the calibration
images when there is no val split). The file is written only once the check has passed.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from lpcv_segmentation.runtime.engine_cache import tensorrt_version
from lpcv_segmentation.core.fileio import copy_file_atomic
from lpcv_segmentation.core.formatting import fmt
from lpcv_segmentation.runtime.onnx_import import set_metadata  # noqa: F401  (export's API too)
from lpcv_segmentation.runtime.segmenter import (INPUT_NAME, METADATA_KEY, OUTPUT_NAME,
                                                 RuntimeConfigError, Segmenter, preprocess)

FORMATS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUT_STRIDES = ("full", "native")  # logits at the input size, or at the decoder's stride
DEFAULT_OPSET = 18
# Least argmax agreement with PyTorch fp32 on the synthetic check scenes; int8 is reported only.
MIN_AGREEMENT: Dict[str, Optional[float]] = {"fp32": 0.999, "fp16": 0.99, "int8": None}
CALIB_SPLITS = ("train", "val")  # calibration images come from the first split that exists
DEFAULT_CALIB_IMAGES = 32
CHECK_SEED = 20230  # synthetic check scenes are render_scene(CHECK_SEED + i, S)


class ExportError(RuntimeError):
    """An export that cannot be done or that failed its check; the message says which."""


# --------------------------------------------------------------------------------------------
# ONNX building blocks
# --------------------------------------------------------------------------------------------
def native_stride(model: Any, input_size: int) -> int:
    """The stride of ``model(x, full_res=False)``'s logits at an SxS input (8: upernet_lite)."""
    import torch
    with torch.no_grad():
        logits = model.to("cpu", torch.float32).eval()(
            torch.zeros(1, 3, int(input_size), int(input_size)), full_res=False)
    if int(input_size) % int(logits.shape[-1]):
        raise ExportError("logits of %dx%d do not tile a %dx%d input at a whole stride"
                          % (logits.shape[-2], logits.shape[-1], input_size, input_size))
    return int(input_size) // int(logits.shape[-1])


def onnx_metadata(model: Any, meta: Dict[str, Any], input_size: int, precision: str,
                  checkpoint_path: Optional[str] = None, stride: int = 1) -> Dict[str, Any]:
    """The checkpoint's metadata for an ONNX file: without ``structure`` (the graph has the
    shapes), with ``input_size``, ``precision``, ``params`` and ``gmacs`` at that size, and
    ``output_stride`` when the logits are left at a ``stride`` (the runtime upsamples them)."""
    from lpcv_segmentation.model.cost import count_macs, count_params
    out = {k: v for k, v in meta.items() if k not in ("structure", "output_stride")}
    out.update(input_size=int(input_size), precision=precision, params=count_params(model),
               gmacs=round(count_macs(model, int(input_size)), 4))
    if stride != 1:
        out["output_stride"] = int(stride)
    if checkpoint_path:
        out["source"] = os.path.basename(os.fspath(checkpoint_path))
    return out


def model_to_onnx(model: Any, input_size: int, opset: int = DEFAULT_OPSET,
                  timm_mobilevit: bool = False, full_res: bool = True) -> Any:
    """ONNX ModelProto of ``model`` (eval mode, CPU, fp32) for a fixed 1x3xSxS input, with the
    dynamo exporter (the TorchScript one fails on adaptive pooling at sizes like 512);
    ``full_res=False`` exports ``model(x, full_res=False)``: the logits at the decoder's stride.

    MobileViT blocks are exported through ``training.mobilevit_export`` (the same outputs, a
    graph that moves less data; docs/runtime.md) unless ``timm_mobilevit`` asks for timm's own."""
    import torch
    import warnings

    from training.mobilevit_export import export_friendly
    model = model.to("cpu", torch.float32).eval()
    x = torch.zeros(1, 3, int(input_size), int(input_size))
    rewrite = contextlib.nullcontext(model) if timm_mobilevit else export_friendly(model)
    with warnings.catch_warnings(), torch.no_grad(), rewrite as exported:
        warnings.simplefilter("ignore")  # exporter deprecation chatter, not about this model
        # full_res is passed only when False: other modules (an encoder alone) take x only
        program = torch.onnx.export(exported, (x,), kwargs=None if full_res else {"full_res": False},
                                    dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], opset_version=int(opset),
                                    verbose=False, external_data=False)
    return program.model_proto


def to_fp16(proto: Any) -> Any:
    """fp16 weights and activations, float32 input and output (``keep_io_types``).

    ONNX Runtime's own converter: unlike onnxconverter-common 1.16 it keeps the output float32
    when the graph ends in a Resize, and it does not force Resize back to fp32. It appends the
    input Cast at the end of the node list, so the nodes are sorted again for onnx.checker.
    """
    import warnings

    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "value truncated to fp16 range" for tiny weights
        converted = OnnxModel(convert_float_to_float16(proto, keep_io_types=True))
    converted.topological_sort()
    return converted.model


class ArrayCalibrationReader(CalibrationDataReader):
    """Calibration inputs for onnxruntime.quantization: pre-processed (1,3,S,S) arrays."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._arrays = list(arrays)
        self._iter: Iterator[np.ndarray] = iter(self._arrays)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        x = next(self._iter, None)
        return None if x is None else {INPUT_NAME: x}

    def rewind(self) -> None:
        self._iter = iter(self._arrays)


@dataclass(frozen=True)
class Int8Recipe:
    """How onnxruntime.quantization quantises a model: QDQ (QuantizeLinear/DequantizeLinear
    pairs that ONNX Runtime fuses into integer kernels) or QOperator (QLinearConv and friends
    written into the graph), per-channel or per-tensor weights, and which operator types are
    quantised (every other operator stays fp32)."""
    quant_format: str  # "qdq" | "qoperator"
    per_channel: bool
    op_types: Tuple[str, ...]


_ELEMENTWISE = ("Sigmoid", "Mul", "Add", "Concat", "AveragePool", "GlobalAveragePool", "Relu", "Clip")
# The variants measured by bench/int8.py (docs/compression.md has the table and the choice).
INT8_RECIPES: Dict[str, Int8Recipe] = {
    "qdq_conv_elementwise": Int8Recipe("qdq", True, ("Conv",) + _ELEMENTWISE),
    "qdq_conv": Int8Recipe("qdq", True, ("Conv",)),
    "qdq_conv_per_tensor": Int8Recipe("qdq", False, ("Conv",)),
    "qdq_conv_matmul": Int8Recipe("qdq", True, ("Conv", "MatMul")),
    "qoperator_conv": Int8Recipe("qoperator", True, ("Conv",)),
    "qoperator_conv_matmul": Int8Recipe("qoperator", True, ("Conv", "MatMul")),
    "qoperator_conv_elementwise": Int8Recipe("qoperator", True, ("Conv",) + _ELEMENTWISE),
}
DEFAULT_INT8_RECIPE = "qoperator_conv"
CALIB_METHODS = ("percentile", "minmax", "entropy")


def quantize_int8(fp32_path: str, out_path: str, calibration: Sequence[np.ndarray],
                  method: str = "percentile", recipe: str = DEFAULT_INT8_RECIPE) -> None:
    """Static post-training quantisation for ONNX Runtime on the CPU as ``INT8_RECIPES[recipe]``
    says: int8 weights, uint8 activations whose ranges come from running the ``calibration``
    inputs (``method``: percentile clips the 0.001% outliers, minmax keeps them, entropy
    minimises the KL divergence)."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ExportError("unknown calibration method %r; choose from %s"
                          % (method, ", ".join(CALIB_METHODS)))
    if recipe not in INT8_RECIPES:
        raise ExportError("unknown int8 recipe %r; choose from %s" % (recipe, ", ".join(INT8_RECIPES)))
    if not calibration:
        raise ExportError("int8 quantisation needs at least one calibration image")
    chosen = INT8_RECIPES[recipe]
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # Shape inference + graph optimisation first, as onnxruntime recommends for quantisation.
        try:
            quant_pre_process(fp32_path, prepared, skip_symbolic_shape=False)
        except Exception as error:  # noqa: BLE001  the pre-pass is an optimisation only
            print("export: quantisation pre-processing skipped (%s)" % error, file=sys.stderr)
            shutil.copyfile(fp32_path, prepared)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # per-tensor chatter from the quantiser on the root logger
        try:
            # the histogram calibrators print progress to stdout: keep stdout for reports
            with contextlib.redirect_stdout(sys.stderr):
                quantize_static(prepared, out_path, ArrayCalibrationReader(calibration),
                                quant_format=formats[chosen.quant_format],
                                per_channel=chosen.per_channel,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=list(chosen.op_types),
                                calibrate_method=methods[method])
        finally:
            root.setLevel(level)
    # quantize_static keeps metadata_props only on some versions: copy ours across.
    meta = dict((p.key, p.value) for p in onnx.load(fp32_path, load_external_data=False).metadata_props)
    proto = onnx.load(out_path)
    set_metadata(proto, dict(json.loads(meta[METADATA_KEY]), precision="int8", int8_recipe=recipe))
    onnx.save(proto, out_path)


def check_onnx(proto: Any, what: str) -> None:
    """onnx.checker (with shape inference); its failure becomes an ExportError."""
    import onnx
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError("the %s ONNX model fails onnx.checker: %s"
                          % (what, str(error).strip().splitlines()[0]))


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> Tuple[int, int, float]:
    """(pixels whose argmax agrees, pixels, largest absolute logit difference)."""
    agree = int((reference.argmax(axis=1) == candidate.argmax(axis=1)).sum())
    pixels = reference.shape[0] * reference.shape[2] * reference.shape[3]
    return agree, pixels, float(np.abs(reference.astype(np.float32) - candidate).max())


def check_scenes(count: int, size: int) -> List[np.ndarray]:
    """``count`` deterministic synthetic UAV scenes (RGB uint8, SxS) for the agreement check."""
    from training.synth import render_scene
    return [render_scene(CHECK_SEED + i, int(size))[0] for i in range(int(count))]


def verify_against_torch(model: Any, onnx_path: str, images: Sequence[np.ndarray]
                         ) -> Dict[str, Any]:
    """Run the ONNX file through the runtime (ONNX Runtime, CPU) and ``model`` in PyTorch fp32
    on the same pre-processed images; argmax agreement over all pixels, largest logit gap. A
    strided file (metadata ``output_stride``) is compared at its stride with
    ``model(x, full_res=False)``."""
    import torch
    segmenter = Segmenter(onnx_path, backend="onnxruntime", device="cpu")
    model = model.to("cpu", torch.float32).eval()
    full_res = segmenter.output_stride == 1
    agree = pixels = 0
    max_diff = 0.0
    for rgb in images:
        x = segmenter.preprocess(rgb)
        with torch.no_grad():
            reference = model(torch.from_numpy(x), full_res=full_res).numpy()
        a, n, d = compare_logits(reference, segmenter.infer(x))
        agree, pixels, max_diff = agree + a, pixels + n, max(max_diff, d)
    return {"images": len(images), "agreement": agree / max(pixels, 1), "max_abs_diff": max_diff}


# --------------------------------------------------------------------------------------------
# Calibration and accuracy data for int8
# --------------------------------------------------------------------------------------------
def dataset_pairs(root: str, limit: int) -> Tuple[List[Tuple[Path, Path]], str,
                                                  List[Tuple[Path, Path]], str]:
    """(calibration pairs, their split, evaluation pairs, their split) of an LPCV-layout
    dataset: calibration from train (or val when there is no train), at most ``limit`` spread
    evenly over the split; evaluation from val (or the calibration pairs)."""
    from training.data import DatasetError, find_pairs
    found: Dict[str, List[Tuple[Path, Path]]] = {}
    for split in CALIB_SPLITS:
        try:
            found[split] = find_pairs(root, split)
        except DatasetError:
            continue
    if not found:
        raise ExportError("--calib %s: no %s split with images in the LPCV layout "
                          "(IMG/<split>/*.png with labels in GT/<split>)"
                          % (root, " or ".join(CALIB_SPLITS)))
    calib_split = next(s for s in CALIB_SPLITS if s in found)
    pairs = found[calib_split]
    if len(pairs) > limit:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)]
    eval_split = "val" if "val" in found and calib_split != "val" else calib_split
    eval_pairs = found["val"][:limit] if eval_split == "val" and calib_split != "val" else pairs
    return pairs, calib_split, eval_pairs, eval_split


def evaluate_files(onnx_paths: Dict[str, str], pairs: Sequence[Tuple[Path, Path]],
                   reference: str = "fp32") -> Dict[str, Any]:
    """mIoU (lpcv_segmentation.core.metrics) of each ONNX file over ``pairs`` at the labels' size,
    and each file's pixel agreement with the ``reference`` file's labels."""
    from tqdm import tqdm

    from lpcv_segmentation.core.metrics import SegmentationMetrics
    from training.data import read_image, read_label
    segmenters = {k: Segmenter(p, backend="onnxruntime") for k, p in onnx_paths.items()}
    metrics = {k: SegmentationMetrics() for k in segmenters}
    agree = {k: 0 for k in segmenters}
    pixels = 0
    for image_path, label_path in tqdm(pairs, desc="int8 accuracy", unit="img", leave=False):
        rgb, gt = read_image(image_path), read_label(label_path)
        labels = {k: s.segment(rgb).labels for k, s in segmenters.items()}
        for k in segmenters:
            metrics[k].update(labels[k], gt)
            agree[k] += int((labels[k] == labels[reference]).sum())
        pixels += gt.size
    return {k: {"miou": metrics[k].summary()["miou"], "agreement_with_%s" % reference:
                agree[k] / max(pixels, 1)} for k in segmenters}


# --------------------------------------------------------------------------------------------
# The export itself
# --------------------------------------------------------------------------------------------
def _load(checkpoint_path: str, input_size: Optional[int]) -> Tuple[Any, Dict[str, Any], int]:
    from lpcv_segmentation.model.checkpoint import load_checkpoint
    from lpcv_segmentation.model.segmodel import check_input_size
    model, meta = load_checkpoint(checkpoint_path)  # CheckpointError names the file
    size = int(input_size or meta["input_size"])
    try:
        check_input_size(meta["arch"], size)
    except ValueError as error:
        raise ExportError("--input-size: %s" % error)
    if getattr(model, "fixed_input_size", False) and size != int(meta["input_size"]):
        raise ExportError("--input-size %d: %s was built for %d input and cannot be exported at "
                          "another size" % (size, meta["arch"], int(meta["input_size"])))
    return model, meta, size


@dataclass(frozen=True)
class Calibration:
    """Static int8 calibration: ``images`` of the train split of ``data`` (a dataset root in
    the LPCV layout), ``method`` one of CALIB_METHODS, ``recipe`` one of INT8_RECIPES."""
    data: str
    images: int = DEFAULT_CALIB_IMAGES
    method: str = "percentile"
    recipe: str = DEFAULT_INT8_RECIPE


@dataclass(frozen=True)
class OnnxGraph:
    """How the graph is written: the ONNX ``opset``, ``timm_mobilevit`` to export timm's
    MobileViT blocks as they are (see ``model_to_onnx``), and ``output_stride``: "full"
    (logits at the input size) or "native" (at the decoder's stride, recorded in the
    metadata); None: "native" for a checkpoint whose metadata records an ``output_stride``
    (``default-model`` with a strided export ships one), else "full"."""
    opset: int = DEFAULT_OPSET
    timm_mobilevit: bool = False
    output_stride: Optional[str] = None  # one of OUTPUT_STRIDES; None: the checkpoint's


def export_onnx(checkpoint_path: str, out_path: str, input_size: Optional[int] = None,
                precision: str = "fp32", calibration: Optional[Calibration] = None,
                verify_images: int = 4, min_agreement: Optional[float] = None,
                graph: OnnxGraph = OnnxGraph()) -> Dict[str, Any]:
    """Export ``checkpoint_path`` to ``out_path`` and check it; returns the report.

    ``precision``: fp32, fp16 or int8 (int8 needs ``calibration``).
    ``min_agreement`` overrides the precision's threshold (``MIN_AGREEMENT``).
    Raises CheckpointError for a refused checkpoint and ExportError for anything else; nothing
    is written to ``out_path`` unless the check passed.
    """
    import onnx

    if precision not in PRECISIONS:
        raise ExportError("unknown precision %r; choose from %s" % (precision, ", ".join(PRECISIONS)))
    if precision == "int8" and not (calibration and calibration.data):
        raise ExportError("int8 export needs calibration images: pass --calib DIR (a dataset root)")
    if calibration and precision != "int8":
        raise ExportError("--calib is used by --int8 only")
    if verify_images < 1:
        raise ExportError("verify_images must be at least 1, got %d" % verify_images)
    if graph.output_stride not in OUTPUT_STRIDES + (None,):
        raise ExportError("unknown output stride %r; choose from %s"
                          % (graph.output_stride, ", ".join(OUTPUT_STRIDES)))
    start = time.perf_counter()
    model, meta, size = _load(checkpoint_path, input_size)
    full_res = (graph.output_stride == "full" if graph.output_stride
                else int(meta.get("output_stride", 1)) == 1)
    stride = 1 if full_res else native_stride(model, size)
    calib = None
    if precision == "int8":  # read the data first: a bad --calib fails before the slow export
        calib = dataset_pairs(os.fspath(calibration.data), int(calibration.images))
    report: Dict[str, Any] = {"checkpoint": os.fspath(checkpoint_path), "out": os.fspath(out_path),
                              "format": "onnx", "precision": precision, "input_size": size,
                              "opset": int(graph.opset), "arch": meta.get("arch"),
                              "mobilevit_graph": ("timm" if graph.timm_mobilevit
                                                  else "export-friendly"),
                              "output_stride": stride}
    with tempfile.TemporaryDirectory(prefix="lpcv_export_") as tmp:
        fp32_path = os.path.join(tmp, "fp32.onnx")
        try:
            proto = model_to_onnx(model, size, graph.opset, timm_mobilevit=graph.timm_mobilevit,
                                  full_res=full_res)
        except Exception as error:  # noqa: BLE001  exporter errors are many types
            raise ExportError("ONNX export of %s failed: %s: %s"
                              % (checkpoint_path, type(error).__name__, error))
        fp32_meta = onnx_metadata(model, meta, size, "fp32", checkpoint_path, stride)
        report.update(params=fp32_meta["params"], gmacs=fp32_meta["gmacs"])
        set_metadata(proto, fp32_meta)
        check_onnx(proto, "fp32")
        onnx.save(proto, fp32_path)
        final = fp32_path
        if precision == "fp16":
            final = os.path.join(tmp, "fp16.onnx")
            proto16 = to_fp16(proto)
            set_metadata(proto16, dict(fp32_meta, precision="fp16"))
            check_onnx(proto16, "fp16")
            onnx.save(proto16, final)
        elif precision == "int8":
            final = os.path.join(tmp, "int8.onnx")
            calib_pairs, calib_split, eval_pairs, eval_split = calib
            from training.data import read_image
            arrays = [preprocess(read_image(p), size, fp32_meta["mean"], fp32_meta["std"])
                      for p, _ in calib_pairs]
            quantize_int8(fp32_path, final, arrays, calibration.method, calibration.recipe)
            accuracy = evaluate_files({"fp32": fp32_path, "int8": final}, eval_pairs)
            report["int8"] = {
                "calib_dir": os.fspath(calibration.data), "calib_split": calib_split,
                "calib_method": calibration.method, "recipe": calibration.recipe,
                "calib_images": len(calib_pairs), "eval_split": eval_split,
                "eval_images": len(eval_pairs),
                "agreement_with_fp32": accuracy["int8"]["agreement_with_fp32"],
                "miou_fp32": accuracy["fp32"]["miou"], "miou_int8": accuracy["int8"]["miou"],
            }
        check = verify_against_torch(model, final, check_scenes(verify_images, size))
        threshold = MIN_AGREEMENT[precision] if min_agreement is None else min_agreement
        check.update(threshold=threshold,
                     passed=threshold is None or check["agreement"] >= threshold)
        report["check"] = check
        if not check["passed"]:
            raise ExportError(
                "%s export of %s disagrees with PyTorch: argmax agreement %.3f%% < %.2f%% on %d "
                "synthetic scenes (largest logit difference %.3g); nothing written to %s"
                % (precision, checkpoint_path, 100 * check["agreement"], 100 * threshold,
                   check["images"], check["max_abs_diff"], out_path))
        copy_file_atomic(final, out_path)
    report["bytes"] = os.path.getsize(out_path)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def export_tensorrt(checkpoint_path: str, out_path: str, input_size: Optional[int] = None,
                    precision: str = "fp32", verify_images: int = 4,
                    opset: int = DEFAULT_OPSET, output_stride: Optional[str] = None
                    ) -> Dict[str, Any]:
    """Build a TensorRT engine (fp32 or fp16) from the checked ONNX export with
    ``lpcv_segmentation.runtime.engine.build_engine``; the metadata goes to ``OUT.json`` beside it.
    Needs the tensorrt package (ExportError says so, before any work, when it is missing)."""
    from lpcv_segmentation.runtime.engine import ENGINE_PRECISIONS, build_engine
    from lpcv_segmentation.runtime.engine_cache import EngineError

    if precision not in ENGINE_PRECISIONS:
        raise ExportError("--format tensorrt builds fp32 or fp16 engines, not %s" % precision)
    if tensorrt_version() is None:
        raise ExportError(
            "--format tensorrt needs the tensorrt Python package, which is not installed here. "
            "Engines are specific to the GPU and TensorRT version, so build it on the target: "
            "python -m training export --format onnx --out MODEL.onnx here, then python -m "
            "lpcv_segmentation.runtime.build_engine --model MODEL.onnx --precision %s --build-only there"
            % precision)
    with tempfile.TemporaryDirectory(prefix="lpcv_export_") as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        report = export_onnx(checkpoint_path, onnx_path, input_size, "fp32",
                             verify_images=verify_images,
                             graph=OnnxGraph(opset, output_stride=output_stride))
        try:
            meta = build_engine(onnx_path, os.fspath(out_path), precision)
        except EngineError as error:
            raise ExportError(str(error))
    report.update(out=os.fspath(out_path), format="tensorrt", precision=meta["precision"],
                  bytes=os.path.getsize(out_path), tensorrt_version=meta["tensorrt_version"])
    return report


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint to export (.safetensors or .pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default onnx)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file (.onnx or .engine)")
    parser.add_argument("--input-size", type=int, default=None, metavar="S",
                        help="input side S of the exported model (default: the checkpoint's)")
    reduced = parser.add_mutually_exclusive_group()
    reduced.add_argument("--fp16", action="store_true", help="half-precision weights and "
                         "activations (float32 input and output)")
    reduced.add_argument("--int8", action="store_true", help="static int8 quantisation for ONNX "
                         "Runtime on the CPU (needs --calib)")
    parser.add_argument("--calib", metavar="DIR", default=None,
                        help="dataset root in the LPCV layout for int8 calibration (train split, "
                             "or val if there is no train) and its accuracy report (val)")
    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, metavar="N",
                        help="calibration images, spread over the split (default %(default)s)")
    parser.add_argument("--int8-recipe", choices=list(INT8_RECIPES), default=DEFAULT_INT8_RECIPE,
                        help="what --int8 quantises and how (default %(default)s, the fastest "
                             "measured by bench/int8.py; see docs/compression.md)")
    parser.add_argument("--calib-method", choices=CALIB_METHODS, default="percentile",
                        help="how int8 activation ranges are chosen (default %(default)s)")
    parser.add_argument("--verify-images", type=int, default=4, metavar="N",
                        help="synthetic scenes for the check against PyTorch (default %(default)s)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help="ONNX opset (default %(default)s; at least 17)")
    parser.add_argument("--timm-mobilevit", action="store_true",
                        help="export timm's own MobileViT blocks instead of the export-friendly "
                             "rewrite with the same outputs (for comparison; docs/runtime.md)")
    parser.add_argument("--output-stride", choices=OUTPUT_STRIDES, default=None,
                        help="full: logits resized to the input size in the graph; native: "
                             "logits left at the decoder's stride (1/8 for upernet_lite), "
                             "recorded as output_stride in the metadata, upsampled by the runtime "
                             "(labels or logits; docs/runtime.md). Default: native for a "
                             "checkpoint whose metadata records output_stride (what default-model "
                             "ships with a strided export), else full")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON")


def print_report(report: Dict[str, Any]) -> None:
    stride = int(report.get("output_stride", 1))
    print("exported %s (%.2fM parameters, %.2f GMACs at %dx%d) to %s: %s %s, opset %d, logits %s, "
          "%.1f MB, %.0f s"
          % (report.get("arch"), report["params"] / 1e6, report["gmacs"], report["input_size"],
             report["input_size"], report["out"], report["format"], report["precision"],
             report["opset"], "at stride %d" % stride if stride > 1 else "at the input size",
             report["bytes"] / 1e6, report.get("seconds", 0)))
    check = report["check"]
    verdict = ("needs >= %.2f%%: passed" % (100 * check["threshold"])
               if check["threshold"] is not None else "reported only")
    print("check against PyTorch fp32 on %d synthetic scenes: argmax agreement %.3f%%, largest "
          "|logit difference| %.3g (%s)" % (check["images"], 100 * check["agreement"],
                                            check["max_abs_diff"], verdict))
    int8 = report.get("int8")
    if int8:
        print("int8 (%s): calibrated (%s) on %d %s images of %s; on %d %s images: agreement with "
              "fp32 %.2f%%, mIoU fp32 %s, int8 %s"
              % (int8["recipe"], int8["calib_method"], int8["calib_images"], int8["calib_split"],
                 int8["calib_dir"],
                 int8["eval_images"], int8["eval_split"], 100 * int8["agreement_with_fp32"],
                 fmt(int8["miou_fp32"]), fmt(int8["miou_int8"])))


def main(args: argparse.Namespace) -> int:
    from lpcv_segmentation.model.checkpoint import CheckpointError
    from training.data import DatasetError

    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    try:
        if args.opset < 17:
            raise ExportError("--opset must be at least 17 (LayerNormalization), got %d" % args.opset)
        if args.format == "tensorrt":
            if args.int8:
                raise ExportError("--int8 is for --format onnx (ONNX Runtime on the CPU)")
            report = export_tensorrt(args.checkpoint, args.out, args.input_size, precision,
                                     args.verify_images, args.opset, args.output_stride)
        else:
            calibration = (Calibration(args.calib, args.calib_images, args.calib_method,
                                       args.int8_recipe) if args.calib else None)
            report = export_onnx(args.checkpoint, args.out, args.input_size, precision,
                                 calibration, args.verify_images,
                                 graph=OnnxGraph(args.opset, args.timm_mobilevit,
                                                 args.output_stride))
    except (CheckpointError, ExportError, RuntimeConfigError, DatasetError) as error:
        print("export: error: %s" % error, file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
