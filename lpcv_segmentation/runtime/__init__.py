"""Running a model: ``Segmenter`` over the ONNX Runtime, PyTorch and TensorRT back ends, and
the TensorRT engine cache. The ONNX Runtime path needs numpy, OpenCV and onnxruntime only.

    from lpcv_segmentation.runtime import Segmenter
"""
from lpcv_segmentation.runtime.segmenter import (BACKENDS, RuntimeConfigError, Segmenter, SegResult,
                                                 postprocess, preprocess)

__all__ = ["BACKENDS", "RuntimeConfigError", "Segmenter", "SegResult", "postprocess", "preprocess"]
