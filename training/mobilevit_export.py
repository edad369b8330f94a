"""Export-friendly MobileViT blocks: timm's ``MobileVitBlock`` computed so that its ONNX graph
moves less data, swapped in for the export only.

timm unfolds the feature map into patches with two reshape/transpose pairs, runs the
transformer on (B*P, N, C) token tensors (every Linear exported as MatMul between reshapes),
splits q, k, v with a gather, and folds back with two more transposes. Here:

- tokens stay one 2-D (B*H*W, C) matrix in raster order from the block's 1x1 conv to its
  projection, so every Linear is one Gemm and LayerNorm works on the last axis as it is; the
  1x1 conv in (``conv_1x1``) and the 1x1 conv + BatchNorm out (``conv_proj``, BatchNorm folded
  into it) are matrix products on those tokens, so one transpose enters the block and one
  leaves it;
- MobileViT attends across patches among the pixels at the same position inside a patch: that
  grouping is done by the reshape/transpose that attention needs anyway to split the heads, one
  for each of q, k and v (separate projections sliced from ``qkv``; no gather of a stacked
  tensor) and one back;
- the attention scale is folded into the query projection.

The outputs equal timm's (``test/test_mobilevit_export.py``, ``torch.allclose`` on random
inputs, MobileViT-XXS and -S, also after pruning). The swapped model shares every other
parameter with the original and is for inference only (BatchNorm statistics are folded at swap
time)::

    with export_friendly(model) as fast:
        proto = torch.onnx.export(fast, ...)

Blocks whose layout this does not know (e.g. layer scale, q/k norms, feature maps that are not a
whole number of patches) keep timm's forward.
"""
import contextlib
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ExportMobileVitBlock", "ExportTransformerLayer", "export_friendly",
           "swap_mobilevit_blocks"]


def _is_identity(module: nn.Module) -> bool:
    return isinstance(module, (nn.Identity, nn.Dropout)) or module is None


def _fold_conv_bn(conv_norm_act: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight (Cout, Cin), bias (Cout,)) of a 1x1 timm ConvNormAct with its BatchNorm folded."""
    conv, bn = conv_norm_act.conv, conv_norm_act.bn
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = conv.weight.double().flatten(1) * scale[:, None]
        bias = bn.bias.double() - bn.running_mean.double() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.double() * scale
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


class ExportTransformerLayer(nn.Module):
    """timm's ViT ``Block`` (pre-norm attention + MLP) on (B*H*W, C) raster-order tokens,
    attending within each pixel-in-patch position across the patches."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        attn = block.attn
        self.norm1, self.norm2 = block.norm1, block.norm2
        self.fc1, self.act, self.fc2 = block.mlp.fc1, block.mlp.act, block.mlp.fc2
        self.proj = attn.proj
        self.num_heads = int(attn.num_heads)
        width = attn.qkv.out_features // 3  # num_heads * head_dim (pruning may change both)
        self.head_dim = width // self.num_heads
        scale = self.head_dim ** -0.5  # F.scaled_dot_product_attention's default, timm's scale
        with torch.no_grad():
            weight, bias = attn.qkv.weight.detach(), attn.qkv.bias
            bias = torch.zeros(3 * width) if bias is None else bias.detach()
            self.register_buffer("q_weight", weight[:width] * scale)
            self.register_buffer("q_bias", bias[:width] * scale)
            self.register_buffer("k_weight", weight[width:2 * width].clone())
            self.register_buffer("k_bias", bias[width:2 * width].clone())
            self.register_buffer("v_weight", weight[2 * width:].clone())
            self.register_buffer("v_bias", bias[2 * width:].clone())

    def _heads(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               grid: Tuple[int, int, int, int, int]) -> torch.Tensor:
        """(T, C) tokens -> (B*P*heads, N, head_dim) sequences of one projection."""
        b, nh, ph, nw, pw = grid
        x = F.linear(x, weight, bias)
        # (B, nh, ph, nw, pw, heads, hd) -> (B, ph, pw, heads, nh, nw, hd)
        x = x.reshape(b, nh, ph, nw, pw, self.num_heads, self.head_dim)
        x = x.permute(0, 2, 4, 5, 1, 3, 6)
        return x.reshape(b * ph * pw * self.num_heads, nh * nw, self.head_dim)

    def attention(self, x: torch.Tensor, grid: Tuple[int, int, int, int, int]) -> torch.Tensor:
        b, nh, ph, nw, pw = grid
        q = self._heads(x, self.q_weight, self.q_bias, grid)
        k = self._heads(x, self.k_weight, self.k_bias, grid)
        v = self._heads(x, self.v_weight, self.v_bias, grid)
        out = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v  # (B*P*heads, N, hd)
        # (B, ph, pw, heads, nh, nw, hd) -> (B, nh, ph, nw, pw, heads, hd) -> (T, heads*hd)
        out = out.reshape(b, ph, pw, self.num_heads, nh, nw, self.head_dim)
        out = out.permute(0, 4, 1, 5, 2, 3, 6).reshape(b * nh * ph * nw * pw, -1)
        return self.proj(out)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int, int, int, int]) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), grid)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ExportMobileVitBlock(nn.Module):
    """timm's ``MobileVitBlock`` with the unfold/transformer/fold on raster-order tokens."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block  # timm's forward, for feature maps that are not whole patches
        self.conv_kxk, self.conv_fusion, self.norm = block.conv_kxk, block.conv_fusion, block.norm
        self.patch_size = tuple(block.patch_size)
        self.layers = nn.ModuleList(ExportTransformerLayer(b) for b in block.transformer)
        self.register_buffer("in_weight", block.conv_1x1.weight.detach().flatten(1).clone())
        weight, bias = _fold_conv_bn(block.conv_proj)
        self.register_buffer("out_weight", weight)
        self.register_buffer("out_bias", bias)
        self.out_act = block.conv_proj.bn.act

    @staticmethod
    def supports(block: nn.Module) -> bool:
        """Whether ``block`` has the layout this rewrite reproduces exactly."""
        try:
            proj = block.conv_proj
            if (block.conv_1x1.kernel_size != (1, 1) or block.conv_1x1.groups != 1
                    or block.conv_1x1.bias is not None or proj.conv.kernel_size != (1, 1)
                    or proj.conv.groups != 1 or not isinstance(proj.bn, nn.BatchNorm2d)
                    or not (proj.bn.affine and proj.bn.track_running_stats)
                    or not _is_identity(getattr(proj.bn, "drop", None))):
                return False
            for layer in block.transformer:
                attn, mlp = layer.attn, layer.mlp
                extras = [layer.ls1, layer.ls2, layer.drop_path1, layer.drop_path2,
                          attn.q_norm, attn.k_norm, attn.norm, mlp.norm]
                if not all(_is_identity(m) for m in extras):
                    return False
                if attn.qkv.out_features % (3 * attn.num_heads):
                    return False
        except AttributeError:
            return False
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ph, pw = self.patch_size
        if h % ph or w % pw:  # timm interpolates to whole patches; keep its path for that
            return self.block(x)
        shortcut = x
        x = self.conv_kxk(x)
        # (B, C, H, W) -> (B*H*W, C): one transpose in; conv_1x1 as a matrix product
        x = x.permute(0, 2, 3, 1).reshape(b * h * w, x.shape[1])
        x = F.linear(x, self.in_weight)
        grid = (b, h // ph, ph, w // pw, pw)
        for layer in self.layers:
            x = layer(x, grid)
        x = self.out_act(F.linear(self.norm(x), self.out_weight, self.out_bias))
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B*H*W, C) -> (B, C, H, W)
        if self.conv_fusion is None:
            return x
        return self.conv_fusion(torch.cat((shortcut, x), dim=1))


def swap_mobilevit_blocks(model: nn.Module) -> List[Tuple[nn.Module, str, nn.Module]]:
    """Replace every supported timm ``MobileVitBlock`` in ``model`` (in place) by an
    ``ExportMobileVitBlock``; returns [(parent, attribute, original block)] to undo it."""
    from timm.models.mobilevit import MobileVitBlock
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MobileVitBlock) and ExportMobileVitBlock.supports(child):
                setattr(parent, name, ExportMobileVitBlock(child))
                swapped.append((parent, name, child))
    return swapped


@contextlib.contextmanager
def export_friendly(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` (eval mode) with its MobileViT blocks swapped for the export-friendly ones
    inside the ``with``, restored afterwards (also when the export fails)."""
    was_training = model.training
    model.eval()
    swapped = swap_mobilevit_blocks(model)
    try:
        yield model
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)
        model.train(was_training)
