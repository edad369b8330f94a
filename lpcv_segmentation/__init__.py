"""On-board disaster-scene segmentation for a UAV: model, inference back ends, ROS 2 node.

Nothing in this package imports ``training``; the ONNX Runtime path does not import torch.
"""
__version__ = "0.1.0"
