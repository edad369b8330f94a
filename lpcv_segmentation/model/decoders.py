"""Segmentation decoders: they take the encoder's stride 4, 8, 16 and 32 features and return
one fused feature map for the classifier. ``DECODERS`` maps the config/metadata name
(``decoder: upernet | upernet_lite``) to the class.

``UPerHead`` (``upernet``) is UPerNet's decoder (Xiao et al. 2018, as in mmsegmentation's
UPerHead): pyramid pooling on the last stage, a top-down FPN over all stages, the levels
concatenated at 1/4 resolution and fused by a 3x3 conv.

``UPerHeadLite`` (``upernet_lite``) keeps that design and drops where its cost was (at 256 px
the stride-4 fusion conv held half of the model's MACs, the FPN convs a sixth): FPN and fusion
convs are depthwise-separable, and the levels are fused at 1/8 resolution (the stride-4 level
enters through a stride-2 depthwise conv), so the classifier runs at 1/8.
"""
from typing import Dict, List, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "SeparableConvBNReLU", "PyramidPooling", "UPerHead", "UPerHeadLite",
           "DECODERS", "DEFAULT_DECODER", "resize"]


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1):
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise 3x3 (optionally strided) then pointwise 1x1, each followed by BN and ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_chs, in_chs, 3, stride=stride, padding=1, groups=in_chs, bias=False),
            nn.BatchNorm2d(in_chs),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to (N, C, *size)."""
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

    @property
    def in_channels(self) -> int:
        return self.stages[0][0].in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [resize(stage(F.adaptive_avg_pool2d(x, b)), size)  # (N, out, H, W) each
                  for b, stage in zip(self.bins, self.stages)]
        return self.bottleneck(torch.cat([x] + pooled, dim=1))  # (N, in + bins*out, H, W) in


class UPerHead(nn.Module):
    """UPerNet decoder: returns the fused feature at the resolution of the first (stride 4)
    stage. Subclasses change the FPN and fusion blocks and the level fused at (``fuse_level``)."""

    fuse_level = 0  # the levels are fused at the resolution of this one (after its FPN conv)

    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels)
        self.lateral_convs = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = self.make_fpn_convs(len(in_channels) - 1, channels)
        self.fuse = self.make_fuse(len(in_channels) * channels, channels)

    @staticmethod
    def make_fpn_convs(levels: int, channels: int) -> nn.ModuleList:
        return nn.ModuleList([ConvBNReLU(channels, channels, 3) for _ in range(levels)])

    @staticmethod
    def make_fuse(in_chs: int, channels: int) -> nn.Module:
        return ConvBNReLU(in_chs, channels, 3)

    @property
    def in_channels(self) -> List[int]:
        """Channels of each encoder stage it reads, as the layers are now (pruning changes them)."""
        return [conv[0].in_channels for conv in self.lateral_convs] + [self.ppm.in_channels]

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.ppm(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[self.fuse_level].shape[-2:]
        outs = [o if o.shape[-2:] == size else resize(o, size) for o in outs]  # each (N, C, *size)
        return self.fuse(torch.cat(outs, dim=1))  # (N, levels*C, *size) in, (N, C, *size) out


class UPerHeadLite(UPerHead):
    """UPerNet at a fraction of the cost: the same pyramid pooling, laterals and top-down path;
    depthwise-separable FPN convs (the stride-4 one with stride 2, so it lands at stride 8) and
    a depthwise-separable fusion at stride 8. Returns the fused feature at 1/8 of the input."""

    fuse_level = 1

    @staticmethod
    def make_fpn_convs(levels: int, channels: int) -> nn.ModuleList:
        return nn.ModuleList([SeparableConvBNReLU(channels, channels, 2 if i == 0 else 1)
                              for i in range(levels)])

    @staticmethod
    def make_fuse(in_chs: int, channels: int) -> nn.Module:
        return SeparableConvBNReLU(in_chs, channels)


DEFAULT_DECODER = "upernet"
DECODERS: Dict[str, Type[nn.Module]] = {"upernet": UPerHead, "upernet_lite": UPerHeadLite}
