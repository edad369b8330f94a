"""Build a TensorRT engine from an exported ONNX model, once, into the engine cache.

    python -m lpcv_segmentation.runtime.build_engine --model models/default.onnx --precision fp16 --build-only
    python -m lpcv_segmentation.runtime.build_engine --model M.onnx --cache-dir /data/engines   # build + time
    python -m lpcv_segmentation.runtime.build_engine --model M.onnx --out M.engine             # a named file

Run it on the Jetson before flight: building takes minutes there, and the node (back end
``tensorrt`` on the same ``.onnx`` file, same precision and ``engine_cache_dir``) then finds
the engine in the cache and starts in seconds. The cache layout and key (model bytes,
precision, TensorRT version, GPU) are ``lpcv_segmentation.runtime.engine_cache``'s. Needs the
``tensorrt`` package (JetPack's ``python3-libnvinfer``) and onnxruntime (to read the model's
metadata); never torch. Where TensorRT is missing it says so in one line and exits 1.
Runs on Python 3.8+.
"""
import argparse
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from lpcv_segmentation.runtime.engine_cache import (ENGINE_METADATA_SUFFIX, EngineError, EngineKey,
                                                    check_writable, engine_path, model_sha256,
                                                    read_engine_metadata, resolve_cache_dir)
from lpcv_segmentation.core.fileio import write_bytes_atomic, write_json_atomic

__all__ = ["ENGINE_PRECISIONS", "tensorrt_version", "gpu_identity", "engine_key",
           "onnx_metadata", "build_engine", "ensure_engine", "main"]

_logger = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("fp32", "fp16")  # int8 engines need a calibrator: use fp16 on the GPU
DEFAULT_WORKSPACE_MB = 1024  # builder scratch memory; a 4 GB Nano shares it with the system


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as error:
        raise EngineError("building a TensorRT engine needs the tensorrt Python package, which "
                          "is not installed (%s); it comes with JetPack (apt install "
                          "python3-libnvinfer) or NVIDIA's TensorRT for desktop GPUs" % error)
    return tensorrt


def tensorrt_version() -> Optional[str]:
    """The installed TensorRT version, or None without the tensorrt package."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def gpu_identity(device_id: int = 0) -> str:
    """e.g. "Orin (sm_87)"; "" when cuda-python or the GPU is not there (then only the
    TensorRT version tells engines apart, which is enough on one Jetson)."""
    try:
        from cuda import cudart
        error, props = cudart.cudaGetDeviceProperties(device_id)
    except Exception:  # noqa: BLE001  no cuda-python, no driver, no device: all mean unknown
        return ""
    if int(error) != 0:
        return ""
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else props.name
    return "%s (sm_%d%d)" % (str(name).strip("\0 "), props.major, props.minor)


def engine_key(model_path: str, precision: str, for_onnxruntime: bool = False) -> EngineKey:
    """The cache key of ``model_path`` at ``precision`` on this machine.

    For ONNX Runtime's TensorRT provider without the tensorrt Python package, the onnxruntime
    version stands in for the TensorRT version (each onnxruntime-gpu build links one TensorRT).
    Raises EngineError when neither is known."""
    version = tensorrt_version()
    if version is None and for_onnxruntime:
        try:
            import onnxruntime
            version = "onnxruntime-%s" % onnxruntime.__version__
        except ImportError:
            version = None
    if version is None:
        _import_tensorrt()  # raises the one-line "needs the tensorrt Python package"
    return EngineKey(model_sha256(model_path), precision, str(version), gpu_identity())


def onnx_metadata(model_path: str) -> Dict[str, Any]:
    """The model's ``lpcv_segmentation`` metadata, read with ONNX Runtime on the CPU."""
    from lpcv_segmentation.runtime.segmenter import OnnxRuntimeBackend
    backend = OnnxRuntimeBackend(model_path, device="cpu")  # RuntimeConfigError names the file
    return dict(backend.metadata)


def _effective_precision(requested: str, file_precision: str) -> str:
    if requested not in ENGINE_PRECISIONS:
        raise EngineError("TensorRT engines are built here in %s, not %s (int8 needs a "
                          "calibrator; use fp16 on the GPU)" % (" or ".join(ENGINE_PRECISIONS),
                                                                requested))
    if file_precision == "int8":
        raise EngineError("the model is an int8 (QDQ) ONNX file for ONNX Runtime on the CPU; "
                          "build the engine from the fp32 or fp16 export")
    return "fp16" if "fp16" in (requested, file_precision) else "fp32"


def build_engine(onnx_path: str, out_path: str, precision: str = "fp16",
                 metadata: Optional[Dict[str, Any]] = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB) -> Dict[str, Any]:
    """Parse ``onnx_path`` with TensorRT, build at ``precision`` and write the engine to
    ``out_path`` and ``metadata`` (plus ``precision``) to ``out_path + ".json"``, both
    atomically. Returns the metadata written."""
    trt = _import_tensorrt()
    meta = dict(metadata if metadata is not None else onnx_metadata(onnx_path))
    precision = _effective_precision(precision, str(meta.get("precision", "fp32")))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError("%s: TensorRT cannot parse it: %s" % (onnx_path, errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    size = int(meta.get("input_size", 0))
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:  # an ONNX file with symbolic dimensions: build for the 1x3xSxS the node sends
        if size < 1:
            raise EngineError("%s has dynamic input dimensions and no input_size in its "
                              "metadata" % onnx_path)
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            profile.set_shape(tensor.name, *[(1, 3, size, size)] * 3)  # min, opt, max
        config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("%s: TensorRT failed to build a %s engine (see its log above)"
                          % (onnx_path, precision))
    meta.update(precision=precision, tensorrt_version=str(trt.__version__),
                source_model=os.path.abspath(onnx_path),
                build_seconds=round(time.perf_counter() - start, 1))
    write_bytes_atomic(out_path, bytes(serialized))
    write_json_atomic(out_path + ENGINE_METADATA_SUFFIX, meta)
    return meta


def ensure_engine(model_path: str, precision: str = "fp32",
                  engine_cache_dir: Optional[str] = None) -> Tuple[str, bool]:
    """The cached engine of ``model_path`` (an ``.onnx`` file) at ``precision``, built first if
    the cache has none for this model, precision, TensorRT and GPU. Returns (path, built).

    The key holds the precision asked for; the engine's own (fp16 for an fp16 ONNX file) is
    in its metadata. A cache hit never opens the ONNX file beyond hashing it."""
    _effective_precision(precision, "fp32")  # refuse int8 before hashing anything
    key = engine_key(model_path, precision)
    path = engine_path(engine_cache_dir or "", model_path, key)
    if os.path.isfile(path) and os.path.isfile(path + ENGINE_METADATA_SUFFIX):
        return path, False
    check_writable(os.path.dirname(path))
    _logger.warning("building TensorRT engine for %s into %s (minutes on a Jetson)",
                    model_path, path)
    meta = onnx_metadata(model_path)
    build_engine(model_path, path, precision, dict(meta, engine_key=key.as_dict()))
    return path, True


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lpcv_segmentation.runtime.build_engine",
        description="Build the TensorRT engine of an ONNX model into the engine cache (or "
                    "--out FILE), then time it unless --build-only.")
    parser.add_argument("--model", required=True, metavar="M.onnx",
                        help="ONNX model exported by python -m training export")
    parser.add_argument("--precision", choices=ENGINE_PRECISIONS, default="fp16",
                        help="engine precision (default %(default)s; an fp16 ONNX file gives "
                             "an fp16 engine either way)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="engine cache folder, the node's engine_cache_dir (default %s)"
                             % resolve_cache_dir(None))
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the engine to FILE (and FILE.json) instead of the cache")
    parser.add_argument("--build-only", action="store_true",
                        help="build (or find) the engine and stop; no timing run")
    parser.add_argument("--iterations", type=int, default=50, metavar="N",
                        help="timed inferences after the build (default %(default)s)")
    return parser


def _time_engine(path: str, iterations: int) -> str:
    import numpy as np
    from lpcv_segmentation.runtime.segmenter import Segmenter
    segmenter = Segmenter(path, backend="tensorrt", device="cuda")
    x = np.zeros((1, 3, segmenter.input_size, segmenter.input_size), np.float32)
    segmenter.warmup()
    times: List[float] = []
    for _ in range(max(1, iterations)):
        t0 = time.perf_counter()
        segmenter.infer(x)
        times.append(1e3 * (time.perf_counter() - t0))
    return "inference %.2f ms median over %d runs (%s, %dx%d input)" % (
        float(np.median(times)), len(times), segmenter.precision, segmenter.input_size,
        segmenter.input_size)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from lpcv_segmentation.runtime.segmenter import RuntimeConfigError
    try:
        if not os.path.isfile(args.model):
            raise EngineError("model file %s does not exist" % args.model)
        if not args.model.lower().endswith(".onnx"):
            raise EngineError("%s: give the .onnx export; an engine is built from it" % args.model)
        _import_tensorrt()  # before reading the model: the missing piece is said first
        start = time.perf_counter()
        if args.out:
            build_engine(args.model, args.out, args.precision)
            path, built = os.fspath(args.out), True
        else:
            path, built = ensure_engine(args.model, args.precision, args.cache_dir)
        meta = read_engine_metadata(path)
        print("%s %s: %s engine, TensorRT %s (%.0f s)"
              % ("built" if built else "cache hit:", path, meta.get("precision"),
                 meta.get("tensorrt_version"), time.perf_counter() - start))
        if not args.build_only:
            print(_time_engine(path, args.iterations))
    except (EngineError, RuntimeConfigError) as error:
        print("engine: error: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
