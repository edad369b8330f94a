"""Structure records: the layer shapes a pruned model has, so that a checkpoint rebuilds any
model it saved.

``capture_structure(model)`` compares every conv, norm, linear and attention layer with a
freshly built model of the same build arguments and records the ones that differ;
``apply_structure`` resizes a fresh model's layers to such a record before its weights are
loaded. ``sync_attention_attributes`` keeps timm attention's reshape attributes in step with
widths torch-pruning changed.
"""
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from lpcv_segmentation.model.segmodel import SegModel, build_model

__all__ = ["capture_structure", "apply_structure", "sync_attention_attributes"]


def _describe_conv(m: nn.Conv2d) -> Dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}


def _resize_conv(m: nn.Conv2d, d: Dict[str, Any]) -> None:
    m.in_channels, m.out_channels, m.groups = d["in_channels"], d["out_channels"], d["groups"]
    m.weight = nn.Parameter(m.weight.new_empty((m.out_channels, m.in_channels // m.groups)
                                               + tuple(m.kernel_size)))
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias.new_empty(m.out_channels))


def _describe_bn(m: nn.BatchNorm2d) -> Dict[str, Any]:
    return {"num_features": m.num_features}


def _resize_bn(m: nn.BatchNorm2d, d: Dict[str, Any]) -> None:
    m.num_features = n = d["num_features"]
    if m.affine:
        m.weight, m.bias = nn.Parameter(m.weight.new_empty(n)), nn.Parameter(m.bias.new_empty(n))
    if m.track_running_stats:
        m.running_mean, m.running_var = m.running_mean.new_zeros(n), m.running_var.new_ones(n)


def _describe_linear(m: nn.Linear) -> Dict[str, Any]:
    return {"in_features": m.in_features, "out_features": m.out_features}


def _resize_linear(m: nn.Linear, d: Dict[str, Any]) -> None:
    m.in_features, m.out_features = d["in_features"], d["out_features"]
    m.weight = nn.Parameter(m.weight.new_empty(m.out_features, m.in_features))
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias.new_empty(m.out_features))


def _describe_layernorm(m: nn.LayerNorm) -> Dict[str, Any]:
    return {"normalized_shape": list(m.normalized_shape)}


def _resize_layernorm(m: nn.LayerNorm, d: Dict[str, Any]) -> None:
    m.normalized_shape = tuple(d["normalized_shape"])
    if m.weight is not None:
        m.weight = nn.Parameter(m.weight.new_empty(m.normalized_shape))
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias.new_empty(m.normalized_shape))


def _describe_groupnorm(m: nn.GroupNorm) -> Dict[str, Any]:
    return {"num_groups": m.num_groups, "num_channels": m.num_channels}


def _resize_groupnorm(m: nn.GroupNorm, d: Dict[str, Any]) -> None:
    m.num_groups, m.num_channels = d["num_groups"], d["num_channels"]
    if m.affine:
        m.weight = nn.Parameter(m.weight.new_empty(m.num_channels))
        m.bias = nn.Parameter(m.bias.new_empty(m.num_channels))


# Attributes timm attention modules reshape with (timm.layers.Attention: num_heads, head_dim,
# attn_dim, scale); pruning heads or head dimensions must update them.
_ATTENTION_ATTRS = ("num_heads", "head_dim", "attn_dim", "scale")


def _is_attention(m: nn.Module) -> bool:
    return (isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "head_dim", None), int))


def _describe_attention(m: nn.Module) -> Dict[str, Any]:
    return {a: getattr(m, a) for a in _ATTENTION_ATTRS if hasattr(m, a)}


def _resize_attention(m: nn.Module, d: Dict[str, Any]) -> None:
    for attr in _ATTENTION_ATTRS:
        if attr in d:
            setattr(m, attr, d[attr])


# kind -> (matches a module, describe its shape, resize it to a description). Order matters
# only for subclasses; each module gets one kind.
_RESIZERS: Dict[str, Tuple[Callable[[nn.Module], bool], Callable, Callable]] = {
    "conv2d": (lambda m: isinstance(m, nn.Conv2d), _describe_conv, _resize_conv),
    "batchnorm2d": (lambda m: isinstance(m, nn.BatchNorm2d), _describe_bn, _resize_bn),
    "linear": (lambda m: isinstance(m, nn.Linear), _describe_linear, _resize_linear),
    "layernorm": (lambda m: isinstance(m, nn.LayerNorm), _describe_layernorm, _resize_layernorm),
    "groupnorm": (lambda m: isinstance(m, nn.GroupNorm), _describe_groupnorm, _resize_groupnorm),
    "attention": (_is_attention, _describe_attention, _resize_attention),
}


def _kind(m: nn.Module) -> Optional[str]:
    for kind, (matches, _, _) in _RESIZERS.items():
        if matches(m):
            return kind
    return None


def _describe_all(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    out = {}
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind is not None:
            out[name] = dict(_RESIZERS[kind][1](m), kind=kind)
    return out


def _reference_model(model: SegModel) -> SegModel:
    """A fresh unpruned model with the same build arguments, on the meta device (no memory,
    no initialisation cost) where this torch supports it."""
    args = (model.arch, model.num_classes, model.decoder_channels, model.input_size)
    try:
        with torch.device("meta"):
            return build_model(*args, decoder=model.decoder_name)
    except (AttributeError, TypeError, RuntimeError, NotImplementedError):  # older torch
        return build_model(*args, decoder=model.decoder_name)


def capture_structure(model: SegModel) -> Dict[str, Dict[str, Any]]:
    """{module name: {"kind", shape fields}} for every layer whose shape differs from a freshly
    built model of the same arch/decoder/classes/width/size (empty for an unpruned model)."""
    reference = _describe_all(_reference_model(model))
    current = _describe_all(model)
    return {name: d for name, d in current.items() if reference.get(name) != d}


def apply_structure(model: SegModel, structure: Dict[str, Dict[str, Any]]) -> None:
    """Resize the layers named in ``structure`` (from ``capture_structure``) in place. Their new
    tensors are uninitialised: load a state dict afterwards. ValueError names a bad entry."""
    for name, desc in structure.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError("structure names a layer %r that %s does not have" % (name, model.arch))
        kind = desc.get("kind")
        if kind not in _RESIZERS or _kind(module) != kind:
            raise ValueError("structure says layer %r is a %r, but it is a %s"
                             % (name, kind, type(module).__name__))
        try:
            _RESIZERS[kind][2](module, desc)
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError("structure entry for layer %r is invalid: %r (%s)" % (name, desc, e))


def sync_attention_attributes(model: nn.Module, num_heads: Optional[Dict[nn.Module, int]] = None) -> int:
    """After torch-pruning changed attention ``qkv``/``proj`` widths, set the attributes the
    forward pass reshapes with. ``num_heads``: the pruner's ``pruner.num_heads`` ({qkv Linear:
    heads left}); without it the head count is kept and head_dim follows the qkv width.
    Returns how many attention modules changed."""
    changed = 0
    for name, m in model.named_modules():
        if not _is_attention(m):
            continue
        heads = (num_heads or {}).get(m.qkv, m.num_heads)
        if m.qkv.out_features % (3 * heads):
            raise ValueError("attention %s: qkv width %d is not 3 x %d heads x head_dim"
                             % (name, m.qkv.out_features, heads))
        head_dim = m.qkv.out_features // (3 * heads)
        if (heads, head_dim) != (m.num_heads, m.head_dim):
            changed += 1
        m.num_heads, m.head_dim, m.attn_dim = heads, head_dim, heads * head_dim
        m.scale = head_dim ** -0.5  # the fused attention path uses 1/sqrt(head_dim) implicitly
    return changed
