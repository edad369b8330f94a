"""Build the TensorRT engine of an ONNX model, once, into the engine cache, then time it.

    python -m lpcv_segmentation.runtime.build_engine --model models/default.onnx --precision fp16 --build-only
    python -m lpcv_segmentation.runtime.build_engine --model M.onnx --cache-dir /data/engines   # build + time
    python -m lpcv_segmentation.runtime.build_engine --model M.onnx --out M.engine             # a named file

Run it on the Jetson before flight: building takes minutes there, and the node (back end
``tensorrt`` on the same ``.onnx`` file, same precision and ``engine_cache_dir``) then finds
the engine in the cache and starts in seconds. Where TensorRT is missing it says so in one
line and exits 1. Runs on Python 3.8+.
"""
import argparse
import logging
import os
import sys
import time
from typing import List, Optional

from lpcv_segmentation.runtime.engine import ENGINE_PRECISIONS, build_engine, ensure_engine
from lpcv_segmentation.runtime.engine_cache import (EngineError, import_tensorrt,
                                                    read_engine_metadata, resolve_cache_dir)
from lpcv_segmentation.runtime.model_file import RuntimeConfigError
from lpcv_segmentation.runtime.segmenter import Segmenter

__all__ = ["main"]


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
    try:
        if not os.path.isfile(args.model):
            raise EngineError("model file %s does not exist" % args.model)
        if not args.model.lower().endswith(".onnx"):
            raise EngineError("%s: give the .onnx export; an engine is built from it" % args.model)
        import_tensorrt()  # before reading the model: the missing piece is said first
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
