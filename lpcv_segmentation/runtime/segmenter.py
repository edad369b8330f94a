"""Inference runtime: one ``Segmenter`` for the node, the evaluator, bag replay and benchmarks.

    segmenter = Segmenter("models/default.onnx")          # back end chosen by file type
    result = segmenter.segment(rgb, with_confidence=True)  # rgb: HxWx3 uint8
    result.labels        # HxW uint8 class indices at the source image size
    result.confidence    # HxW float32 softmax probability of the chosen class (or None)
    result.timings_ms    # {"preprocess", "inference", "postprocess"}

A ``Segmenter`` is three steps around a back end:
  preprocess   resize to the model's SxS input (bilinear), scale to [0, 1], normalise with the
               mean/std the model was trained with (read from the model's metadata)
  back end     ``run(x: (1,3,S,S) float32) -> (1,C,h,w) logits``; one of ``BACKENDS``
  postprocess  argmax over classes, nearest-neighbour resize of the label map to the source
               size, optional per-pixel confidence (softmax maximum)

Strided models: a model whose metadata records ``output_stride`` N returns its logits at
S/N x S/N (the decoder's own resolution; ``python -m training export --output-stride native``)
and every back end checks that its output has that shape. The runtime then upsamples them as
``upsample=`` says (default: the metadata's ``upsample``, else ``"labels"``):
  labels       argmax at the stride, nearest-neighbour resize of the label map (the cheapest)
  logits       bilinear resize of the logits to the source size, then argmax (what a model
               with the resize in its graph computes, at the price of the resize)
A model without ``output_stride`` has its logits at the input size and is post-processed as
before, whatever ``upsample`` says.

Back ends (``backend=`` or from the file name with ``"auto"``):
  onnxruntime  ``.onnx``; execution providers from ``providers=`` or the best installed for
               ``device`` (TensorRT > CUDA > CPU). Needs numpy, OpenCV and onnxruntime only:
               importing this module and running an ONNX model never imports torch.
  pytorch      ``.safetensors``/``.pt`` checkpoints; CPU or CUDA, fp32 or fp16 (CUDA only).
  tensorrt     ``.engine``/``.plan`` files, or an ``.onnx`` file whose engine is built once
               into ``engine_cache_dir`` (``lpcv_segmentation.runtime.engine``); needs the ``tensorrt``
               and ``cuda-python`` packages (imported only when this back end is chosen).

Engines built from an ONNX file (back end tensorrt, or ONNX Runtime's TensorRT provider) live
in ``engine_cache_dir`` (default ``~/.cache/lpcv_segmentation``), keyed by the model's bytes,
precision, TensorRT version and GPU (``lpcv_segmentation.runtime.engine_cache``).

Precision: a PyTorch checkpoint runs at the precision asked for. An ONNX file or engine runs at
the precision it was exported with (its metadata says which): ``precision="fp32"`` (the default)
accepts any file, ``"fp16"``/``"int8"`` ask for that precision and are refused for a file that
does not have it, unless ONNX Runtime's TensorRT provider can build it (it then gets
``trt_fp16_enable``/``trt_int8_enable``).

Runs on Python 3.8+.
"""
import logging
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from lpcv_segmentation.core.classes import NUM_CLASSES
from lpcv_segmentation.core.metadata import IMAGENET_MEAN, IMAGENET_STD, METADATA_KEY  # noqa: F401  (re-exported)
from lpcv_segmentation.runtime.model_file import (RuntimeConfigError, check_metadata, check_output_shape,
                                                  output_stride, session_metadata)
from lpcv_segmentation.runtime.engine_cache import (EngineError, check_writable, engine_key,
                                                    ort_trt_cache_path, read_engine_metadata)

_logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp32", "fp16", "int8")
UPSAMPLING = ("labels", "logits")  # how a strided model's logits reach the source size
DEVICES = ("cpu", "cuda", "auto")

# ONNX Runtime execution providers, best first, for device "cuda"/"auto".
GPU_PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                           "CPUExecutionProvider")


class SegResult(NamedTuple):
    labels: np.ndarray                      # HxW uint8 class indices, source image size
    confidence: Optional[np.ndarray]        # HxW float32 in (0, 1], or None
    timings_ms: Dict[str, float]            # preprocess, inference, postprocess


# --------------------------------------------------------------------------------------------
# Pre- and post-processing (pure numpy/OpenCV; the same code for every back end)
# --------------------------------------------------------------------------------------------
def preprocess(rgb: np.ndarray, size: int, mean: Sequence[float],
               std: Sequence[float]) -> np.ndarray:
    """RGB uint8 HxWx3 -> normalised float32 (1, 3, size, size).

    Bilinear resize, then ``normalize``. Training's validation (``training.data.EvalTransform``)
    calls this same function, so a model is scored on exactly the input the drone gives it.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("expected an RGB image as a HxWx3 uint8 array, got %s"
                         % _describe_array(rgb))
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError("image is empty: %s" % (rgb.shape,))
    size = int(size)
    if rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    return normalize(rgb, mean, std)[None]


def normalize(rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 3xHxW, ``(x / 255 - mean) / std`` as one multiply-add per
    pixel (``preprocess`` after its resize; training's augmented crops)."""
    std_arr = np.asarray(std, np.float32)
    scale = 1.0 / (255.0 * std_arr)
    shift = -np.asarray(mean, np.float32) / std_arr
    if rgb.dtype != np.uint8:
        rgb = rgb.astype(np.float32)
    # Written one channel at a time into the 3xHxW result: the same float32 multiply and add
    # per value as on the whole array, without its HxWx3 temporaries and the transposing copy.
    x = np.empty((3,) + rgb.shape[:2], np.float32)
    for channel in range(3):
        np.multiply(rgb[..., channel], scale[channel], out=x[channel])
        np.add(x[channel], shift[channel], out=x[channel])
    return x


def _max_softmax(scores: Sequence[np.ndarray], top: Optional[np.ndarray] = None) -> np.ndarray:
    """(C, h, w) float32 logits (or C (h, w) maps) -> (h, w) float32 softmax probability of the
    top class, ``1 / sum_c exp(l_c - l_max)``, summed one class at a time: two (h, w) buffers
    instead of two (C, h, w) temporaries, whose allocation a worker thread's malloc arena gives
    back and faults in again at every frame (same values, same order of addition). ``top``:
    the per-pixel maximum when the caller has it already."""
    if top is None:
        top = scores.max(axis=0)
    total = np.exp(scores[0] - top)
    term = np.empty_like(top)
    for row in scores[1:]:
        np.subtract(row, top, out=term)
        np.exp(term, out=term)
        total += term
    return np.divide(1.0, total, out=total)


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """(C, h, w) float32 scores -> (h, w) uint8 index of the top class, the first one on a tie,
    as ``scores.argmax(axis=0)``: compared one class at a time, about 3x faster than numpy's
    argmax over the first axis, which copies the scores to a class-last layout first."""
    if scores.shape[0] > 256:
        return scores.argmax(axis=0).astype(np.uint8)  # wraps as it always did
    labels, best = _running_argmax(scores)
    if np.isnan(best).any():  # np.maximum spreads NaN; numpy's argmax takes the first NaN
        return scores.argmax(axis=0).astype(np.uint8)
    return labels


def _running_argmax(maps: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(labels uint8, maximum float32) over the (h, w) ``maps``, one class at a time."""
    best = maps[0].copy()
    labels = np.zeros(best.shape, np.uint8)
    higher = np.empty(best.shape, bool)
    for index in range(1, len(maps)):
        np.greater(maps[index], best, out=higher)  # strictly: a tie keeps the earlier class
        np.copyto(labels, np.uint8(index), where=higher)
        np.maximum(best, maps[index], out=best)
    return labels, best


def postprocess(logits: np.ndarray, out_hw: Tuple[int, int], with_confidence: bool = False,
                confidence_at_logits: bool = False, upsample: str = "labels"
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(1, C, h, w) logits -> (labels HxW uint8, confidence HxW float32 or None) at ``out_hw``.

    ``upsample="labels"``: the argmax is taken at the logits' resolution and the label map is
    resized with nearest neighbour (pixel-centre aligned, ``INTER_NEAREST_EXACT``), so labels
    stay class indices. ``upsample="logits"``: the logits are resized bilinearly to ``out_hw``
    first (pixel-centre aligned, as ``torch.nn.functional.interpolate(align_corners=False)``),
    then the argmax. Confidence is the softmax probability of the chosen class at the labels'
    resolution, resized with nearest neighbour (left at the logits' resolution with
    ``confidence_at_logits``: the node's regions need no more).
    """
    if upsample not in UPSAMPLING:
        raise ValueError("upsample must be one of %s, got %r" % (", ".join(UPSAMPLING), upsample))
    logits = np.asarray(logits)
    if logits.ndim != 4 or logits.shape[0] != 1:
        raise ValueError("expected logits of shape (1, C, h, w), got %s" % (logits.shape,))
    scores = logits[0]
    if scores.dtype != np.float32:
        scores = scores.astype(np.float32)
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if upsample == "logits" and scores.shape[1:] != (out_h, out_w):
        return _upsample_logits(scores, (out_h, out_w), with_confidence, confidence_at_logits)
    labels = argmax_classes(scores)
    confidence = None
    if with_confidence:
        confidence = _max_softmax(scores)
    if labels.shape != (out_h, out_w):
        labels = cv2.resize(labels, (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT)
        if confidence is not None and not confidence_at_logits:
            confidence = cv2.resize(confidence, (out_w, out_h),
                                    interpolation=cv2.INTER_NEAREST_EXACT)
    return labels, confidence


def _upsample_logits(scores: np.ndarray, out_hw: Tuple[int, int], with_confidence: bool,
                     confidence_at_logits: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(C, h, w) float32 logits -> labels (and confidence) from the logits resized bilinearly
    to ``out_hw``, one class at a time with a running maximum: a third of the time of one
    (H, W, C) resize and an argmax over its last axis, the same labels (the first class wins
    a tie, as argmax)."""
    size = (int(out_hw[1]), int(out_hw[0]))
    resized = [cv2.resize(channel, size, interpolation=cv2.INTER_LINEAR) for channel in scores]
    labels, best = _running_argmax(resized)
    confidence = None
    if with_confidence:
        confidence = _max_softmax(scores) if confidence_at_logits else _max_softmax(resized, best)
    return labels, confidence


def _describe_array(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return "%s array of shape %s" % (value.dtype, value.shape)
    return type(value).__name__


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise RuntimeConfigError("unknown precision %r; choose from %s"
                                 % (precision, ", ".join(PRECISIONS)))
    return precision


def _check_device(device: str) -> str:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise RuntimeConfigError("unknown device %r; choose from cpu, cuda, cuda:N, auto" % device)
    return device


def _check_file_precision(model_path: str, file_precision: str, requested: str,
                          can_convert: bool) -> None:
    """An exported file runs at its own precision; refuse a request it cannot honour."""
    if requested in ("fp32", file_precision) or can_convert:
        return
    flag = {"fp16": "--fp16", "int8": "--int8 --calib DIR"}[requested]
    raise RuntimeConfigError(
        "%s is a %s model and this back end runs a file at the precision it was exported with; "
        "export a %s model (python -m training export ... %s) or use precision fp32"
        % (model_path, file_precision, requested, flag))


# --------------------------------------------------------------------------------------------
# Back ends: each takes (model_path, device, precision, threads, providers,
# engine_cache_dir), exposes
# ``metadata`` (dict), ``input_size`` (int), ``precision`` (str), ``device`` (str) and
# ``run(x) -> logits``.
# --------------------------------------------------------------------------------------------
class OnnxRuntimeBackend:
    """ONNX Runtime session over an exported ``.onnx`` file (numpy in, numpy out; no torch)."""

    name = "onnxruntime"

    def __init__(self, model_path: str, device: str = "cpu", precision: str = "fp32",
                 threads: Optional[int] = None, providers: Optional[List[str]] = None,
                 engine_cache_dir: Optional[str] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise RuntimeConfigError("back end 'onnxruntime' needs the onnxruntime package "
                                     "(pip install onnxruntime, or onnxruntime-gpu): %s" % error)
        self.model_path = model_path
        self.device = device
        self.engine_cache_dir = engine_cache_dir
        chosen = self.choose_providers(ort.get_available_providers(), device, providers)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                model_path, options,
                providers=self._provider_options(chosen, precision, model_path))
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RuntimeConfigError("%s: ONNX Runtime cannot load it: %s"
                                     % (model_path, str(error).strip().splitlines()[0]))
        self.providers = self.session.get_providers()
        self.metadata = session_metadata(self.session, model_path)
        self.input_size = int(self.metadata["input_size"])
        self.precision = str(self.metadata.get("precision", "fp32"))
        _check_file_precision(model_path, self.precision, precision,
                              can_convert="TensorrtExecutionProvider" in self.providers)
        self._check_io(self.session, model_path, self.metadata)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @staticmethod
    def choose_providers(available: Sequence[str], device: str,
                         requested: Optional[Sequence[str]] = None) -> List[str]:
        """The providers to ask for: ``requested`` (all must be installed), else CPU for
        device "cpu", else the installed ones in ``GPU_PROVIDER_PREFERENCE`` order."""
        if requested:
            missing = [p for p in requested if p not in available]
            if missing:
                raise RuntimeConfigError("ONNX Runtime execution provider(s) %s not available in "
                                         "this onnxruntime build; available: %s"
                                         % (", ".join(missing), ", ".join(available)))
            return list(requested)
        if device == "cpu":
            return ["CPUExecutionProvider"]
        chosen = [p for p in GPU_PROVIDER_PREFERENCE if p in available]
        if device.startswith("cuda") and not any(p != "CPUExecutionProvider" for p in chosen):
            raise RuntimeConfigError("device %r asked for, but this onnxruntime build has no GPU "
                                     "execution provider (available: %s); install onnxruntime-gpu "
                                     "or use device cpu" % (device, ", ".join(available)))
        return chosen

    def _provider_options(self, providers: List[str], precision: str, model_path: str
                          ) -> List[Any]:
        """Provider names, with options where the provider takes some."""
        out: List[Any] = []
        device_id = int(self.device.split(":")[1]) if self.device.startswith("cuda:") else 0
        for name in providers:
            if name == "TensorrtExecutionProvider":
                # Engine builds take minutes on a Jetson: cache them per model, precision and
                # TensorRT version, in a folder of their own so a stale one is never loaded.
                cache_dir = self._ort_trt_cache_dir(model_path, precision)
                out.append((name, {"device_id": device_id,
                                   "trt_fp16_enable": precision == "fp16",
                                   "trt_int8_enable": precision == "int8",
                                   "trt_engine_cache_enable": True,
                                   "trt_engine_cache_path": cache_dir}))
            elif name == "CUDAExecutionProvider":
                out.append((name, {"device_id": device_id}))
            else:
                out.append(name)
        return out

    def _ort_trt_cache_dir(self, model_path: str, precision: str) -> str:
        try:
            folder = ort_trt_cache_path(self.engine_cache_dir or "", model_path,
                                        engine_key(model_path, precision, for_onnxruntime=True))
            if not (os.path.isdir(folder) and any(n.endswith(".engine")
                                                  for n in os.listdir(folder))):
                check_writable(folder)  # a read-only cache that holds the engine is fine
        except EngineError as error:
            raise RuntimeConfigError(str(error))
        return folder

    @staticmethod
    def _check_io(session: Any, model_path: str, meta: Dict[str, Any]) -> None:
        size = int(meta["input_size"])
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise RuntimeConfigError("%s: expected one input and one output, found %d and %d"
                                     % (model_path, len(inputs), len(outputs)))
        shape = list(inputs[0].shape)
        expected = [1, 3, size, size]
        # A dimension may be symbolic (a str or None): accept it; a number must match.
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape, expected)):
            raise RuntimeConfigError("%s: input %r has shape %s, but its metadata says input_size "
                                     "%d, so it should be %s"
                                     % (model_path, inputs[0].name, shape, size, expected))
        if inputs[0].type != "tensor(float)":
            raise RuntimeConfigError("%s: input %r is %s; expected tensor(float) (normalised RGB)"
                                     % (model_path, inputs[0].name, inputs[0].type))
        # Logits at a stride the metadata does not record would be taken for another model's.
        check_output_shape(model_path, outputs[0].name, outputs[0].shape, meta)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


class PyTorchBackend:
    """A checkpoint rebuilt with ``lpcv_segmentation.model.segmodel``; torch is imported here only."""

    name = "pytorch"

    def __init__(self, model_path: str, device: str = "cpu", precision: str = "fp32",
                 threads: Optional[int] = None, providers: Optional[List[str]] = None,
                 engine_cache_dir: Optional[str] = None) -> None:
        try:
            import torch
            from lpcv_segmentation.model.checkpoint import CheckpointError, load_checkpoint
        except ImportError as error:
            raise RuntimeConfigError("back end 'pytorch' needs torch and timm installed (%s); "
                                     "use an ONNX model with back end onnxruntime instead" % error)
        if providers:
            raise RuntimeConfigError("providers are an onnxruntime setting; back end 'pytorch' "
                                     "got providers=%r" % (providers,))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeConfigError("device %r asked for, but torch sees no CUDA device" % device)
        if precision == "int8":
            raise RuntimeConfigError("back end 'pytorch' runs fp32 or fp16; for int8 export an "
                                     "ONNX model (python -m training export --int8 --calib DIR)")
        if precision == "fp16" and device == "cpu":
            raise RuntimeConfigError("precision fp16 needs device cuda with back end 'pytorch' "
                                     "(half-precision kernels are slow or missing on CPUs); use "
                                     "fp32 on the CPU, or an fp16 ONNX model")
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: PyTorch has one intra-op pool
        try:
            model, meta = load_checkpoint(model_path, device=device)
        except CheckpointError as error:
            raise RuntimeConfigError(str(error))
        self._torch = torch
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(dtype=self.dtype).eval()
        self.metadata = check_metadata(dict(meta), model_path)
        self.input_size = int(self.metadata["input_size"])
        self.precision = precision
        self.device = device
        # A checkpoint whose metadata records output_stride runs without the model's own resize,
        # as its strided ONNX export does; one forward pass checks the stride is the decoder's.
        self.full_res = output_stride(self.metadata) == 1
        if not self.full_res:
            size = self.input_size
            shape = self.run(np.zeros((1, 3, size, size), np.float32)).shape
            check_output_shape(model_path, "logits", shape, self.metadata)

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            tensor = torch.from_numpy(x).to(self.device, self.dtype)
            logits = self.model(tensor, full_res=self.full_res)
            return logits.float().cpu().numpy()  # .cpu() waits for the GPU


class TensorRTBackend:
    """A serialised TensorRT engine (TensorRT 8.5+ tensor API), with the model metadata in
    ``MODEL.engine.json`` beside it; or an ``.onnx`` file, whose engine is taken from
    ``engine_cache_dir`` or built there first (``engine.ensure_engine``; ``built_engine`` says
    which). Device buffers via cuda-python's ``cudart``."""

    name = "tensorrt"

    def __init__(self, model_path: str, device: str = "cuda", precision: str = "fp32",
                 threads: Optional[int] = None, providers: Optional[List[str]] = None,
                 engine_cache_dir: Optional[str] = None) -> None:
        try:
            import tensorrt as trt
        except ImportError as error:
            raise RuntimeConfigError(
                "back end 'tensorrt' needs the tensorrt Python package, which is not installed "
                "(%s); it ships with JetPack / NVIDIA's TensorRT. Without it, use an ONNX model "
                "with back end onnxruntime" % error)
        try:
            from cuda import cudart
        except ImportError as error:
            raise RuntimeConfigError("back end 'tensorrt' needs cuda-python for device buffers "
                                     "(pip install cuda-python): %s" % error)
        if device == "cpu":
            raise RuntimeConfigError("back end 'tensorrt' runs on a GPU; got device 'cpu'")
        self.model_path, self.device = model_path, "cuda"
        self.engine_path, self.built_engine = model_path, False
        try:
            if model_path.lower().endswith(".onnx"):
                from lpcv_segmentation.runtime.engine import ensure_engine
                self.engine_path, self.built_engine = ensure_engine(model_path, precision,
                                                                    engine_cache_dir)
            self.metadata = check_metadata(read_engine_metadata(self.engine_path), model_path)
        except EngineError as error:
            raise RuntimeConfigError(str(error))
        self.input_size = int(self.metadata["input_size"])
        self.precision = str(self.metadata.get("precision", "fp32"))
        _check_file_precision(self.engine_path, self.precision, precision, can_convert=False)
        self._cudart = cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(self.engine_path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeConfigError("%s: TensorRT cannot deserialise it (built with another "
                                     "TensorRT version or GPU?)" % self.engine_path)
        self.context = self.engine.create_execution_context()
        self._stream = self._check(cudart.cudaStreamCreate())
        self._buffers: Dict[str, Tuple[int, Tuple[int, ...], Any]] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:  # a dynamic input (-1) runs at the metadata's 1x3xSxS
            if (self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                    and -1 in tuple(self.engine.get_tensor_shape(name))):
                self.context.set_input_shape(name, (1, 3, self.input_size, self.input_size))
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            pointer = self._check(cudart.cudaMalloc(nbytes))
            self.context.set_tensor_address(name, pointer)
            self._buffers[name] = (pointer, shape, dtype)
        self.input_name = INPUT_NAME if INPUT_NAME in self._buffers else next(iter(self._buffers))
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in self._buffers else list(self._buffers)[-1]
        expected = (1, 3, self.input_size, self.input_size)
        if self._buffers[self.input_name][1] != expected:
            raise RuntimeConfigError("%s: engine input %s, but its metadata says %s"
                                     % (model_path, self._buffers[self.input_name][1], expected))
        check_output_shape(model_path, self.output_name, self._buffers[self.output_name][1],
                           self.metadata)

    def _check(self, result: Tuple[Any, ...]) -> Any:
        error, value = result[0], result[1:]
        if int(error) != 0:
            raise RuntimeError("CUDA call failed in the TensorRT back end: %s" % (error,))
        return value[0] if value else None

    def run(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        kind = cudart.cudaMemcpyKind
        in_ptr, _, in_dtype = self._buffers[self.input_name]
        x = np.ascontiguousarray(x, dtype=in_dtype)
        self._check(cudart.cudaMemcpyAsync(in_ptr, x.ctypes.data, x.nbytes,
                                           kind.cudaMemcpyHostToDevice, self._stream))
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError("%s: TensorRT execution failed" % self.model_path)
        out_ptr, out_shape, out_dtype = self._buffers[self.output_name]
        out = np.empty(out_shape, dtype=out_dtype)
        self._check(cudart.cudaMemcpyAsync(out.ctypes.data, out_ptr, out.nbytes,
                                           kind.cudaMemcpyDeviceToHost, self._stream))
        self._check(cudart.cudaStreamSynchronize(self._stream))
        return out.astype(np.float32, copy=False)

    def __del__(self) -> None:
        for pointer, _, _ in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(pointer)


BACKENDS: Dict[str, Callable[..., Any]] = {
    "onnxruntime": OnnxRuntimeBackend,
    "pytorch": PyTorchBackend,
    "tensorrt": TensorRTBackend,
}

# File name ending -> back end, for backend="auto".
SUFFIX_BACKENDS: Dict[str, str] = {
    ".onnx": "onnxruntime",
    ".safetensors": "pytorch",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}


def resolve_backend(model_path: str, backend: str = "auto") -> str:
    """The back-end name for a model file: ``backend`` itself, or from the file's ending."""
    if backend == "auto":
        suffix = os.path.splitext(model_path)[1].lower()
        if suffix not in SUFFIX_BACKENDS:
            raise RuntimeConfigError("cannot tell the back end of %s from its ending %r (known: %s); "
                                     "pass backend= one of %s"
                                     % (model_path, suffix, ", ".join(sorted(SUFFIX_BACKENDS)),
                                        ", ".join(BACKENDS)))
        return SUFFIX_BACKENDS[suffix]
    if backend not in BACKENDS:
        raise RuntimeConfigError("unknown back end %r for %s; choose from auto, %s"
                                 % (backend, model_path, ", ".join(BACKENDS)))
    return backend


# --------------------------------------------------------------------------------------------
# Segmenter
# --------------------------------------------------------------------------------------------
class Segmenter:
    """Pre-processing + back end + post-processing for one model file.

    Attributes: ``input_size`` (S of the SxS model input), ``metadata`` (the model's JSON
    metadata), ``backend_name`` (the back end chosen), ``num_classes``, ``precision``,
    ``output_stride`` (1: logits at the input size), ``upsample`` (how strided logits are
    upsampled, one of ``UPSAMPLING``), ``runner`` (that back end's object, whose ``run(x)``
    benchmarks time on their own).
    """

    def __init__(self, model_path: str, backend: str = "auto", device: str = "cpu",
                 precision: str = "fp32", threads: Optional[int] = None,
                 providers: Optional[List[str]] = None,
                 engine_cache_dir: Optional[str] = None,
                 upsample: Optional[str] = None) -> None:
        from lpcv_segmentation.zoo.cache import ZooError, resolve_model_path
        try:
            model_path = resolve_model_path(os.fspath(model_path))  # zoo:NAME -> the cached file
        except ZooError as error:
            raise RuntimeConfigError(str(error))
        name = resolve_backend(model_path, backend)
        _check_device(device)
        _check_precision(precision)
        if upsample is not None and upsample not in UPSAMPLING:
            raise RuntimeConfigError("unknown upsample %r; choose from %s"
                                     % (upsample, ", ".join(UPSAMPLING)))
        if threads is not None and int(threads) < 0:
            raise RuntimeConfigError("threads must be >= 0 (0 or None: the back end's default), "
                                     "got %r" % (threads,))
        if not os.path.isfile(model_path):
            raise RuntimeConfigError("model file %s does not exist" % model_path)
        self.model_path = model_path
        self.backend_name = name
        self.runner = BACKENDS[name](model_path, device=device, precision=precision,
                                     threads=threads, providers=providers,
                                     engine_cache_dir=engine_cache_dir)
        self.metadata: Dict[str, Any] = self.runner.metadata
        self.input_size: int = int(self.runner.input_size)
        self.num_classes: int = int(self.metadata["num_classes"])
        self.precision: str = self.runner.precision
        self.device: str = self.runner.device
        self._mean = [float(v) for v in self.metadata["mean"]]
        self._std = [float(v) for v in self.metadata["std"]]
        self.output_stride: int = output_stride(self.metadata)
        self.upsample: str = upsample or str(self.metadata.get("upsample", "labels"))
        if self.upsample not in UPSAMPLING:
            raise RuntimeConfigError("%s: metadata upsample %r is not one of %s"
                                     % (model_path, self.upsample, ", ".join(UPSAMPLING)))
        # Logits at the input size are post-processed as they always were, whatever upsample says.
        self._upsample = self.upsample if self.output_stride > 1 else "labels"
        if self.num_classes != NUM_CLASSES:
            _logger.warning("%s predicts %d classes; the package's class table has %d",
                            model_path, self.num_classes, NUM_CLASSES)
        _logger.info("loaded %s: back end %s (%s, %s), input %dx%d, logits at stride %d%s",
                     model_path, name, self.device, self.precision, self.input_size,
                     self.input_size, self.output_stride,
                     " (%s upsampled)" % self.upsample if self.output_stride > 1 else "")

    @property
    def class_names(self) -> List[str]:
        """Class names in index order, from the model's own table."""
        return [str(c["name"]) for c in self.metadata.get("classes", [])]

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess(rgb, self.input_size, self._mean, self._std)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Logits of an already pre-processed (1, 3, S, S) input."""
        return self.runner.run(x)

    # Blank frames run by ``warmup()`` (the node calls it before taking frames).
    WARMUP_ITERATIONS = 2

    def warmup(self, iterations: Optional[int] = None) -> None:
        """Run ``iterations`` (default WARMUP_ITERATIONS) blank frames so the first real frame
        does not pay for lazy allocation (and engine building with ONNX Runtime's TensorRT
        provider)."""
        if iterations is None:
            iterations = self.WARMUP_ITERATIONS
        x = np.zeros((1, 3, self.input_size, self.input_size), np.float32)
        for _ in range(max(0, int(iterations))):
            self.runner.run(x)

    def segment(self, rgb: np.ndarray, with_confidence: bool = False,
                confidence_at_logits: bool = False) -> SegResult:
        """Label map (and optional confidence) of one RGB uint8 HxWx3 image at its own size."""
        t0 = time.perf_counter()
        x = self.preprocess(rgb)
        t1 = time.perf_counter()
        logits = self.runner.run(x)
        t2 = time.perf_counter()
        labels, confidence = postprocess(logits, rgb.shape[:2], with_confidence,
                                         confidence_at_logits, self._upsample)
        t3 = time.perf_counter()
        return SegResult(labels, confidence, {"preprocess": 1e3 * (t1 - t0),
                                              "inference": 1e3 * (t2 - t1),
                                              "postprocess": 1e3 * (t3 - t2)})

    def __repr__(self) -> str:
        return "Segmenter(%r, backend=%r, device=%r, precision=%r, input_size=%d)" % (
            self.model_path, self.backend_name, self.device, self.precision, self.input_size)
