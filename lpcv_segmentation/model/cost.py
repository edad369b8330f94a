"""What a model costs: parameters and multiply-accumulates of one forward pass."""
from typing import Optional

import torch
from torch import nn

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (pruned layers counted as they are now)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Optional[int] = None) -> float:
    """GMACs of one forward pass on a 1x3xSxS input (FLOP counter's FLOPs / 2); S defaults to
    ``model.input_size``."""
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
