"""The model-metadata contract every model file carries (see docs/ARCHITECTURE.md): the key it
is stored under (ONNX ``metadata_props``, safetensors header) and the default normalisation.
Checkpoints (torch) and the runtime (no torch) both read it from here."""

__all__ = ["METADATA_KEY", "IMAGENET_MEAN", "IMAGENET_STD"]

METADATA_KEY = "lpcv_segmentation"  # ONNX metadata_props key / safetensors header key
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB in [0, 1]; what timm encoders are trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
