"""Reading tensor files without running code from them, and loading local timm weights into
an encoder.

``.safetensors`` files hold only tensors; ``.pt``/``.pth`` files are read with
``torch.load(weights_only=True)``. There is no model hub here: encoder weights are a local file.
"""
import logging
import os
import pickle
import re
from typing import Any, Dict, List, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

__all__ = ["CheckpointError", "SAFETENSORS_SUFFIX", "PICKLE_SUFFIXES", "read_tensor_file",
           "read_state_dict", "load_encoder_weights"]

_logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_KEY_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


class CheckpointError(Exception):
    """A checkpoint or weights file that is missing, unsafe, unreadable or inconsistent.
    The message names the file (and the first offending tensor, if any)."""


def read_tensor_file(path: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """(contents, safetensors header metadata) of a .safetensors or .pt/.pth file, without
    running code from it. Raises CheckpointError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError("checkpoint file %s does not exist" % path)
    if path.endswith(SAFETENSORS_SUFFIX):
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
            return load_file(path), header
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise CheckpointError("%s is not a readable safetensors file: %s" % (path, e))
    if path.endswith(PICKLE_SUFFIXES):
        try:
            contents = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                "refused to load %s: unpickling it would run code or build objects other than "
                "tensors (torch.load weights_only=True rejected it: %s)"
                % (path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
        except Exception as e:
            raise CheckpointError("%s is not a readable PyTorch file: %s" % (path, e))
        if not isinstance(contents, dict):
            raise CheckpointError("%s holds a %s, not a dict of tensors" % (path, type(contents).__name__))
        return contents, {}
    raise CheckpointError("%s: unsupported checkpoint type (expected %s or %s)"
                          % (path, SAFETENSORS_SUFFIX, "/".join(PICKLE_SUFFIXES)))


def _canonical_key(key: str) -> str:
    """timm's features_only wrapper renames ``stages.0.x`` to ``stages_0.x``; compare keys with
    every separator made the same so a full timm state dict matches the wrapped encoder."""
    while key.startswith(_KEY_PREFIXES):
        key = key.split(".", 1)[1]
    return re.sub(r"[._]", "_", key)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a local weights file; never runs code from it."""
    tensors, _ = read_tensor_file(path)
    for key in _WRAPPER_KEYS:  # {"state_dict": {...}} and friends
        if isinstance(tensors.get(key), dict):
            tensors = tensors[key]
            break
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("%s holds no tensors" % path)
    return tensors


def load_encoder_weights(encoder: nn.Module, path: str) -> Dict[str, List[str]]:
    """Copy matching tensors of a timm weights file into ``encoder``; log and return what was
    loaded, missing, unexpected and mismatched in shape. Raise CheckpointError if nothing matches."""
    tensors = read_state_dict(path)
    source = {_canonical_key(k): (k, v) for k, v in tensors.items()}
    target = encoder.state_dict()
    report: Dict[str, List[str]] = {"loaded": [], "missing": [], "mismatched": []}
    new_state = {}
    for key, tensor in target.items():
        found = source.pop(_canonical_key(key), None)
        if found is None:
            report["missing"].append(key)
        elif tuple(found[1].shape) != tuple(tensor.shape):
            report["mismatched"].append("%s: file %s, model %s"
                                        % (key, tuple(found[1].shape), tuple(tensor.shape)))
        else:
            new_state[key] = found[1]
            report["loaded"].append(key)
    report["unexpected"] = sorted(original for original, _ in source.values())
    if not new_state:
        raise CheckpointError("encoder weights %s: no tensor matches the encoder (first file key %r, "
                              "first encoder key %r)" % (path, next(iter(tensors)), next(iter(target))))
    encoder.load_state_dict(new_state, strict=False)
    _logger.info("encoder weights %s: loaded %d tensors, %d missing, %d unexpected, %d mismatched",
                 path, len(report["loaded"]), len(report["missing"]), len(report["unexpected"]),
                 len(report["mismatched"]))
    for kind in ("missing", "unexpected", "mismatched"):
        if report[kind]:
            _logger.warning("encoder weights %s: %s: %s%s", path, kind, ", ".join(report[kind][:5]),
                            " ..." if len(report[kind]) > 5 else "")
    return report
