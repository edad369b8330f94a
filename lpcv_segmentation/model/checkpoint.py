"""Model checkpoints: weights plus the metadata that rebuilds the model, pruned ones included.

A checkpoint is a ``.safetensors`` file whose header metadata holds one JSON object under the
key ``lpcv_segmentation`` (format ``lpcv-seg/1``, see docs/ARCHITECTURE.md). Loading never runs
code from the file: safetensors holds only tensors, and ``.pt``/``.pth`` files (a dict
``{"state_dict": ..., "meta": ...}``) are read with ``torch.load(weights_only=True)``.
"""
import json
import os
from typing import Any, Dict, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lpcv_segmentation.core.classes import class_table
from lpcv_segmentation.model.cost import count_params
from lpcv_segmentation.model.decoders import DECODERS, DEFAULT_DECODER
from lpcv_segmentation.core.fileio import atomic_path
from lpcv_segmentation.model.segmodel import ARCHS, SegModel, build_model
from lpcv_segmentation.core.metadata import IMAGENET_MEAN, IMAGENET_STD, METADATA_KEY
from lpcv_segmentation.model.structure import apply_structure, capture_structure
from lpcv_segmentation.model.weights import SAFETENSORS_SUFFIX, CheckpointError, read_tensor_file

__all__ = ["FORMAT", "CheckpointError",
           "model_metadata", "save_checkpoint", "read_tensor_file", "read_metadata",
           "load_checkpoint"]

FORMAT = "lpcv-seg/1"
# Metadata keys that describe the model itself: always taken from the model when saving.
_MODEL_KEYS = ("format", "arch", "decoder", "num_classes", "decoder_channels", "input_size", "structure",
               "params")


def model_metadata(model: SegModel, **training_info: Any) -> Dict[str, Any]:
    """The metadata JSON object of ``model``; keyword arguments go under ``"training"``."""
    return {
        "format": FORMAT,
        "arch": model.arch,
        "decoder": model.decoder_name,
        "num_classes": model.num_classes,
        "decoder_channels": model.decoder_channels,
        "input_size": model.input_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "classes": class_table(),
        "structure": capture_structure(model),
        "params": count_params(model),
        "training": dict(training_info),
    }


def save_checkpoint(path: str, model: SegModel, meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``model`` and its metadata to a .safetensors file, atomically. ``meta`` adds to
    (or overrides) ``model_metadata(model)``, except the keys the model itself determines."""
    path = os.fspath(path)
    if not path.endswith(SAFETENSORS_SUFFIX):
        raise ValueError("checkpoint path %s must end in %s" % (path, SAFETENSORS_SUFFIX))
    full = model_metadata(model)
    own = {k: full[k] for k in _MODEL_KEYS}
    full.update(meta or {})
    full.update(own)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={METADATA_KEY: json.dumps(full, default=str)})


def _split(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state dict, metadata) of a checkpoint file."""
    contents, header = read_tensor_file(path)
    if path.endswith(SAFETENSORS_SUFFIX):
        raw: Any = header.get(METADATA_KEY)
        state = contents
    else:
        raw, state = contents.get("meta"), contents.get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError("%s is not an lpcv_segmentation checkpoint: no 'state_dict'" % path)
    if raw is None:
        raise CheckpointError("%s is not an lpcv_segmentation checkpoint: no %r metadata"
                              % (path, METADATA_KEY))
    try:
        meta = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError("%s: metadata is not valid JSON: %s" % (path, e))
    _check_metadata(path, meta)
    return state, meta


def _check_metadata(path: str, meta: Dict[str, Any]) -> None:
    if meta.get("format") != FORMAT:
        raise CheckpointError("%s: metadata format %r is not %r" % (path, meta.get("format"), FORMAT))
    for key in ("arch", "num_classes", "decoder_channels", "input_size"):
        if key not in meta:
            raise CheckpointError("%s: metadata lacks %r" % (path, key))
    if meta["arch"] not in ARCHS:
        raise CheckpointError("%s: unknown architecture %r; known: %s"
                              % (path, meta["arch"], ", ".join(sorted(ARCHS))))
    if meta.get("decoder", DEFAULT_DECODER) not in DECODERS:
        raise CheckpointError("%s: unknown decoder %r; known: %s"
                              % (path, meta["decoder"], ", ".join(DECODERS)))


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata of a checkpoint (reads only the header of a .safetensors file)."""
    path = os.fspath(path)
    if path.endswith(SAFETENSORS_SUFFIX) and os.path.isfile(path):
        try:
            with safe_open(path, framework="pt") as f:
                raw = (f.metadata() or {}).get(METADATA_KEY)
        except Exception as e:
            raise CheckpointError("%s is not a readable safetensors file: %s" % (path, e))
        if raw is None:
            raise CheckpointError("%s is not an lpcv_segmentation checkpoint: no %r metadata"
                                  % (path, METADATA_KEY))
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise CheckpointError("%s: metadata is not valid JSON: %s" % (path, e))
        _check_metadata(path, meta)
        return meta
    return _split(path)[1]


def load_checkpoint(path: str, device: str = "cpu") -> Tuple[SegModel, Dict[str, Any]]:
    """Rebuild the saved model (base arch, then the recorded pruned shapes), load its weights
    and return ``(model in eval mode on device, metadata)``."""
    path = os.fspath(path)
    state, meta = _split(path)
    try:
        # Checkpoints written before the decoder was a choice have no "decoder": UPerNet.
        model = build_model(meta["arch"], int(meta["num_classes"]), int(meta["decoder_channels"]),
                            int(meta["input_size"]), decoder=meta.get("decoder", DEFAULT_DECODER))
        apply_structure(model, meta.get("structure") or {})
    except ValueError as e:
        raise CheckpointError("%s: metadata does not describe a model that can be built: %s" % (path, e))
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError("%s: tensor %r is missing from the file (its metadata describes %s)"
                                  % (path, key, meta["arch"]))
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                "%s: metadata does not match the weights: tensor %r is %s in the file but %s in "
                "the %s model the metadata describes" % (path, key, tuple(state[key].shape),
                                                         tuple(tensor.shape), meta["arch"]))
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError("%s: tensor %r is not part of the %s model its metadata describes"
                              % (path, unexpected[0], meta["arch"]))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta
