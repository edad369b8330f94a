"""The segmentation network (PyTorch): encoder registry and builder, decoders, pruned-layer
structure records, cost counters, weight files and checkpoints. Imports torch; the drone's
ONNX Runtime path never imports this package.

    from lpcv_segmentation.model import build_model, load_checkpoint, save_checkpoint
"""
from lpcv_segmentation.model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from lpcv_segmentation.model.segmodel import ARCHS, SegModel, build_model

__all__ = ["ARCHS", "SegModel", "build_model", "load_checkpoint", "read_metadata", "save_checkpoint"]
