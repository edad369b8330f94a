"""Build a TensorRT engine from an exported ONNX model into the engine cache (``ensure_engine``)
or a named file (``build_engine``). The command is ``python -m
lpcv_segmentation.runtime.build_engine``. The cache layout and key (model bytes, precision,
TensorRT version, GPU) are ``lpcv_segmentation.runtime.engine_cache``'s. Needs the ``tensorrt``
package (JetPack's ``python3-libnvinfer``) and onnxruntime (to read the model's metadata);
never torch. Runs on Python 3.8+.
"""
import logging
import os
import time
from typing import Any, Dict, Optional, Tuple

from lpcv_segmentation.core.fileio import write_bytes_atomic, write_json_atomic
from lpcv_segmentation.runtime.engine_cache import (ENGINE_METADATA_SUFFIX, EngineError,
                                                    check_writable, engine_key, engine_path,
                                                    import_tensorrt)
from lpcv_segmentation.runtime.model_file import read_onnx_metadata

__all__ = ["ENGINE_PRECISIONS", "build_engine", "ensure_engine"]

_logger = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("fp32", "fp16")  # int8 engines need a calibrator: use fp16 on the GPU
DEFAULT_WORKSPACE_MB = 1024  # builder scratch memory; a 4 GB Nano shares it with the system


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
    trt = import_tensorrt()
    meta = dict(metadata if metadata is not None else read_onnx_metadata(onnx_path))
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
    meta = read_onnx_metadata(model_path)
    build_engine(model_path, path, precision, dict(meta, engine_key=key.as_dict()))
    return path, True
