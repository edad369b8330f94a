"""UPerNet segmentation models over timm encoders, and the structure records that let a
pruned model be rebuilt.

``build_model(arch)`` looks the encoder up in ``ARCHS`` (students ``mobilevit_s/xs/xxs``,
teacher ``swinv2_tiny``, baseline ``resnet18``) and puts a UPerNet decoder on it: pyramid
pooling on the last stage, a top-down FPN over all stages, the levels concatenated at 1/4
resolution, a fusion conv and a 1x1 classifier.

Checkpoint save/load live in ``lpcv_segmentation.checkpoint`` and are re-exported here, so
``from lpcv_segmentation.model import build_model, save_checkpoint, load_checkpoint`` works.
"""
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lpcv_segmentation.classes import NUM_CLASSES

_logger = logging.getLogger(__name__)

DEFAULT_ARCH = "mobilevit_xxs"
TEACHER_ARCH = "swinv2_tiny"


# --------------------------------------------------------------------------------------------
# Encoder registry
# --------------------------------------------------------------------------------------------
def _multiple_of_32(size: int) -> Optional[str]:
    """Output stride 32: every stage must divide evenly so the FPN levels line up."""
    if size < 32 or size % 32:
        return "must be a multiple of 32 (the encoder's output stride)"
    return None


def _swin_window_rule(window: int) -> Callable[[int], Optional[str]]:
    """Swin attends inside windows: each stage's grid (size/4 ... size/32) must be a whole
    number of windows, or no larger than one window (timm then shrinks the window to the
    grid). Anything else would be padded with zero tokens that the attention does not mask."""
    def rule(size: int) -> Optional[str]:
        if _multiple_of_32(size):
            return _multiple_of_32(size)
        grids = [size // stride for stride in (4, 8, 16, 32)]
        if all(g <= window or g % window == 0 for g in grids):
            return None
        return ("must give stage grids %s (size/4 .. size/32) that are each <= %d or a multiple "
                "of %d, the attention window; valid sizes include 64, 128, 256, 512, 768"
                % (grids, window, window))
    return rule


@dataclass(frozen=True)
class EncoderSpec:
    """How to create one registered encoder with timm (always pretrained=False)."""
    timm_name: str
    out_indices: Tuple[int, ...]  # the stride 4, 8, 16, 32 stages
    size_rule: Callable[[int], Optional[str]]  # None if an input size is valid, else why not
    fixed_input_size: bool = False  # built for one input size (img_size passed at creation)
    nhwc_features: bool = False  # timm returns (N, H, W, C) stage features
    kwargs: Dict[str, Any] = field(default_factory=dict)
    role: str = "student"


ARCHS: Dict[str, EncoderSpec] = {
    "mobilevit_xxs": EncoderSpec("mobilevit_xxs", (1, 2, 3, 4), _multiple_of_32),
    "mobilevit_xs": EncoderSpec("mobilevit_xs", (1, 2, 3, 4), _multiple_of_32),
    "mobilevit_s": EncoderSpec("mobilevit_s", (1, 2, 3, 4), _multiple_of_32),
    # The paper's teacher, UPerNet-Swin-v2-T. Window 8 keeps 256 and 512 valid.
    "swinv2_tiny": EncoderSpec("swinv2_tiny_window8_256", (0, 1, 2, 3), _swin_window_rule(8),
                               fixed_input_size=True, nhwc_features=True, role="teacher"),
    "resnet18": EncoderSpec("resnet18", (1, 2, 3, 4), _multiple_of_32, role="baseline"),
}


def check_input_size(arch: str, input_size: int) -> None:
    """Raise ValueError naming the arch and size when the encoder cannot take that size."""
    spec = _spec(arch)
    reason = spec.size_rule(int(input_size))
    if reason:
        raise ValueError("input_size %d is not valid for %s: it %s" % (input_size, arch, reason))


def _spec(arch: str) -> EncoderSpec:
    if arch not in ARCHS:
        raise ValueError("unknown architecture %r; known: %s" % (arch, ", ".join(sorted(ARCHS))))
    return ARCHS[arch]


def create_encoder(arch: str, input_size: int) -> nn.Module:
    """The timm features_only encoder of a registered arch, randomly initialised."""
    spec = _spec(arch)
    check_input_size(arch, input_size)
    kwargs = dict(spec.kwargs)
    if spec.fixed_input_size:
        kwargs["img_size"] = input_size
    return timm.create_model(spec.timm_name, pretrained=False, features_only=True,
                             out_indices=spec.out_indices, **kwargs)


# --------------------------------------------------------------------------------------------
# UPerNet decoder
# --------------------------------------------------------------------------------------------
class ConvBNReLU(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1):
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet pooling: average the last stage over 1x1, 2x2, 3x3, 6x6 grids, project each,
    upsample, concatenate with the input and fuse. Exported with the dynamo ONNX exporter,
    adaptive pooling also works at sizes the bins do not divide (e.g. 9x9 at 288 input)."""

    def __init__(self, in_chs: int, out_chs: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList([ConvBNReLU(in_chs, out_chs, 1) for _ in self.bins])
        self.bottleneck = ConvBNReLU(in_chs + len(self.bins) * out_chs, out_chs, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [_resize(stage(F.adaptive_avg_pool2d(x, b)), size)
                  for b, stage in zip(self.bins, self.stages)]
        return self.bottleneck(torch.cat([x] + pooled, dim=1))


class UPerHead(nn.Module):
    """UPerNet decoder (Xiao et al. 2018, as in mmsegmentation's UPerHead): returns the fused
    feature at the resolution of the first (stride 4) stage."""

    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels)
        self.lateral_convs = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1]])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.ppm(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [_resize(o, size) for o in outs[1:]]
        return self.fuse(torch.cat(outs, dim=1))


class SegModel(nn.Module):
    """Encoder + UPerHead + classifier. ``forward`` gives logits; ``forward_features`` also
    gives the intermediate features that distillation reads."""

    def __init__(self, arch: str, encoder: nn.Module, num_classes: int, decoder_channels: int,
                 input_size: int):
        super().__init__()
        spec = _spec(arch)
        self.arch = arch
        self.num_classes = num_classes
        self.decoder_channels = decoder_channels  # the width it was built with (see fused_channels)
        self.input_size = input_size
        self.fixed_input_size = spec.fixed_input_size
        self.nhwc_features = spec.nhwc_features
        self.encoder = encoder
        self.decoder = UPerHead(encoder.feature_info.channels(), decoder_channels)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)

    @property
    def encoder_channels(self) -> List[int]:
        """Channels of each encoder stage as the model is now (pruning may have changed them):
        read from the decoder layers that consume them."""
        return ([conv[0].in_channels for conv in self.decoder.lateral_convs]
                + [self.decoder.ppm.stages[0][0].in_channels])

    @property
    def fused_channels(self) -> int:
        """Channels of ``forward_features(x)["decoder"]`` as the model is now."""
        return self.classifier.in_channels

    def _check_input(self, x: torch.Tensor) -> None:
        if self.fixed_input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError("%s was built for %dx%d input, got %dx%d"
                             % (self.arch, self.input_size, self.input_size, x.shape[-2], x.shape[-1]))

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        self._check_input(x)
        features = self.encoder(x)
        if self.nhwc_features:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        return list(features)

    def forward_features(self, x: torch.Tensor) -> Dict[str, Any]:
        """{"encoder": [per-stage NCHW features], "decoder": fused 1/4 feature, "logits": 1/4 logits}"""
        encoder = self.encode(x)
        decoder = self.decoder(encoder)
        logits = self.classifier(self.dropout(decoder))
        return {"encoder": encoder, "decoder": decoder, "logits": logits}

    def forward(self, x: torch.Tensor, full_res: bool = True) -> torch.Tensor:
        logits = self.forward_features(x)["logits"]
        if full_res:
            logits = _resize(logits, x.shape[-2:])
        return logits


def build_model(arch: str = DEFAULT_ARCH, num_classes: int = NUM_CLASSES, decoder_channels: int = 64,
                input_size: int = 288, encoder_weights: Optional[str] = None) -> SegModel:
    """A UPerNet over a registered encoder. ``encoder_weights``: optional local timm weights
    file (.safetensors, or .pth/.pt read with weights_only=True); there is no model hub."""
    _spec(arch)
    if decoder_channels < 1 or num_classes < 1:
        raise ValueError("decoder_channels and num_classes must be positive, got %d and %d"
                         % (decoder_channels, num_classes))
    encoder = create_encoder(arch, input_size)
    if encoder_weights:
        load_encoder_weights(encoder, encoder_weights)
    return SegModel(arch, encoder, num_classes, decoder_channels, input_size)


# --------------------------------------------------------------------------------------------
# Local encoder weights
# --------------------------------------------------------------------------------------------
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_KEY_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


def _canonical_key(key: str) -> str:
    """timm's features_only wrapper renames ``stages.0.x`` to ``stages_0.x``; compare keys with
    every separator made the same so a full timm state dict matches the wrapped encoder."""
    while key.startswith(_KEY_PREFIXES):
        key = key.split(".", 1)[1]
    return re.sub(r"[._]", "_", key)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a local weights file; never runs code from it."""
    from lpcv_segmentation.checkpoint import CheckpointError, read_tensor_file
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
    from lpcv_segmentation.checkpoint import CheckpointError
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


# --------------------------------------------------------------------------------------------
# Structure records (pruned layer shapes) so that a checkpoint rebuilds any model it saved
# --------------------------------------------------------------------------------------------
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
            return build_model(*args)
    except (AttributeError, TypeError, RuntimeError, NotImplementedError):  # older torch
        return build_model(*args)


def capture_structure(model: SegModel) -> Dict[str, Dict[str, Any]]:
    """{module name: {"kind", shape fields}} for every layer whose shape differs from a freshly
    built model of the same arch/classes/width/size (empty for an unpruned model)."""
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


# --------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Optional[int] = None) -> float:
    """GMACs of one forward pass on a 1x3xSxS input (FLOP counter's FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    size = int(input_size or getattr(model, "input_size"))
    param = next(model.parameters())
    x = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2.0 / 1e9


# Checkpoint API, re-exported lazily (checkpoint.py imports this module).
_CHECKPOINT_API = ("CheckpointError", "save_checkpoint", "load_checkpoint", "read_metadata",
                   "model_metadata")


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT_API:
        from lpcv_segmentation import checkpoint
        return getattr(checkpoint, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m lpcv_segmentation.model``: parameters and GMACs of the registered archs."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m lpcv_segmentation.model",
                                     description="Parameters and GMACs (1x3xSxS) of each registered "
                                                 "architecture with a UPerNet decoder.")
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS), metavar="ARCH",
                        help="architectures to describe (default: all of %s)" % ", ".join(ARCHS))
    parser.add_argument("--input-size", type=int, default=288, help="square input side (default 288)")
    parser.add_argument("--decoder-channels", type=int, default=64, help="UPerNet width (default 64)")
    args = parser.parse_args(argv)
    print("| arch | role | input | decoder | params (M) | GMACs |")
    print("|---|---|---|---|---|---|")
    for arch in args.arch:
        try:
            model = build_model(arch, decoder_channels=args.decoder_channels, input_size=args.input_size)
        except ValueError as e:
            print("| %s | %s | %d | %d | - | - (%s) |" % (arch, ARCHS[arch].role, args.input_size,
                                                         args.decoder_channels, e))
            continue
        print("| %s | %s | %d | %d | %.2f | %.2f |" % (arch, ARCHS[arch].role, args.input_size,
                                                       args.decoder_channels, count_params(model) / 1e6,
                                                       count_macs(model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
