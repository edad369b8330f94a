"""Segmentation models over timm encoders: the encoder registry and the builder.

``build_model(arch)`` looks the encoder up in ``ARCHS`` (students ``mobilevit_s/xs/xxs``,
teacher ``swinv2_tiny``, baseline ``resnet18``) and puts a decoder from
``lpcv_segmentation.model.decoders.DECODERS`` (``upernet`` or ``upernet_lite``) and a 1x1 classifier
on it. Checkpoints:
``lpcv_segmentation.model.checkpoint``; pruned-layer records: ``lpcv_segmentation.model.structure``; cost:
``lpcv_segmentation.model.cost``; local encoder weights: ``lpcv_segmentation.model.weights``.

``python -m lpcv_segmentation.model`` prints the parameters and GMACs of each architecture.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import timm
import torch
from torch import nn

from lpcv_segmentation.core.classes import NUM_CLASSES
from lpcv_segmentation.core.formatting import markdown_header, markdown_row
from lpcv_segmentation.model.cost import count_macs, count_params
from lpcv_segmentation.model.decoders import DECODERS, DEFAULT_DECODER, resize
from lpcv_segmentation.model.weights import load_encoder_weights

__all__ = ["DEFAULT_ARCH", "EncoderSpec", "ARCHS", "check_input_size", "check_decoder",
           "create_encoder", "SegModel", "build_model"]

DEFAULT_ARCH = "mobilevit_xxs"


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


def check_decoder(decoder: str) -> None:
    """Raise ValueError naming the decoder when it is not registered."""
    if decoder not in DECODERS:
        raise ValueError("unknown decoder %r; known: %s" % (decoder, ", ".join(DECODERS)))


def create_encoder(arch: str, input_size: int) -> nn.Module:
    """The timm features_only encoder of a registered arch, randomly initialised."""
    spec = _spec(arch)
    check_input_size(arch, input_size)
    kwargs = dict(spec.kwargs)
    if spec.fixed_input_size:
        kwargs["img_size"] = input_size
    return timm.create_model(spec.timm_name, pretrained=False, features_only=True,
                             out_indices=spec.out_indices, **kwargs)


class SegModel(nn.Module):
    """Encoder + decoder + classifier. ``forward`` gives logits; ``forward_features`` also
    gives the intermediate features that distillation reads."""

    def __init__(self, arch: str, encoder: nn.Module, num_classes: int, decoder_channels: int,
                 input_size: int, decoder: str = DEFAULT_DECODER):
        super().__init__()
        spec = _spec(arch)
        self.arch = arch
        self.decoder_name = decoder
        self.num_classes = num_classes
        self.decoder_channels = decoder_channels  # the width it was built with (see fused_channels)
        self.input_size = input_size
        self.fixed_input_size = spec.fixed_input_size
        self.nhwc_features = spec.nhwc_features
        self.encoder = encoder
        self.decoder = DECODERS[decoder](encoder.feature_info.channels(), decoder_channels)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)

    @property
    def encoder_channels(self) -> List[int]:
        """Channels of each encoder stage as the model is now (pruning may have changed them):
        read from the decoder layers that consume them."""
        return self.decoder.in_channels

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
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]  # NHWC -> NCHW
        return list(features)

    def forward_features(self, x: torch.Tensor) -> Dict[str, Any]:
        """{"encoder": [per-stage NCHW features], "decoder": fused feature, "logits": logits}; the
        last two at 1/4 of the input resolution (upernet) or 1/8 (upernet_lite)."""
        encoder = self.encode(x)
        decoder = self.decoder(encoder)
        logits = self.classifier(self.dropout(decoder))
        return {"encoder": encoder, "decoder": decoder, "logits": logits}

    def forward(self, x: torch.Tensor, full_res: bool = True) -> torch.Tensor:
        logits = self.forward_features(x)["logits"]
        if full_res:
            logits = resize(logits, x.shape[-2:])
        return logits


def build_model(arch: str = DEFAULT_ARCH, num_classes: int = NUM_CLASSES, decoder_channels: int = 64,
                input_size: int = 288, encoder_weights: Optional[str] = None,
                decoder: str = DEFAULT_DECODER) -> SegModel:
    """A segmentation model: a registered encoder and the ``decoder`` named in ``DECODERS``.
    ``encoder_weights``: optional local timm weights file (.safetensors, or .pth/.pt read with
    weights_only=True); there is no model hub."""
    _spec(arch)
    check_decoder(decoder)
    if decoder_channels < 1 or num_classes < 1:
        raise ValueError("decoder_channels and num_classes must be positive, got %d and %d"
                         % (decoder_channels, num_classes))
    encoder = create_encoder(arch, input_size)
    if encoder_weights:
        load_encoder_weights(encoder, encoder_weights)
    return SegModel(arch, encoder, num_classes, decoder_channels, input_size, decoder)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m lpcv_segmentation.model``: parameters and GMACs of the registered archs."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m lpcv_segmentation.model",
                                     description="Parameters and GMACs (1x3xSxS) of each registered "
                                                 "architecture with the chosen decoder(s).")
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS), metavar="ARCH",
                        help="architectures to describe (default: all of %s)" % ", ".join(ARCHS))
    parser.add_argument("--decoder", nargs="+", default=[DEFAULT_DECODER], choices=list(DECODERS),
                        metavar="DECODER", help="decoders to describe, of %s (default %s)"
                        % (", ".join(DECODERS), DEFAULT_DECODER))
    parser.add_argument("--input-size", type=int, default=288, help="square input side (default 288)")
    parser.add_argument("--decoder-channels", type=int, default=64, help="decoder width (default 64)")
    args = parser.parse_args(argv)
    print(markdown_header(["arch", "role", "input", "decoder", "width", "params (M)", "GMACs"]))
    for arch in args.arch:
        for decoder in args.decoder:
            row = [arch, ARCHS[arch].role, args.input_size, decoder, args.decoder_channels]
            try:
                model = build_model(arch, decoder_channels=args.decoder_channels,
                                    input_size=args.input_size, decoder=decoder)
            except ValueError as e:
                print(markdown_row(row + ["-", "- (%s)" % e]))
                continue
            print(markdown_row(row + ["%.2f" % (count_params(model) / 1e6),
                                      "%.2f" % count_macs(model)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
