"""Unstructured magnitude pruning: the paper's comparison, single weights zeroed, shapes kept.

Zeros alone buy no speed in dense inference; these keep the zeros at zero through fine-tuning
(gradient masks) and after it (``apply_zero_masks``).
"""
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from training.pruning.units import prunable_weights, weight_sparsity

__all__ = ["prune_unstructured", "zero_masks", "keep_zeros_during_training", "apply_zero_masks"]


def prune_unstructured(model: nn.Module, amount: float) -> float:
    """Zero the ``amount`` smallest-magnitude weights across all conv/linear layers (global
    ranking, classifier excluded) and make it permanent. Shapes do not change, so dense
    inference is exactly as slow as before. Returns the weight sparsity reached."""
    from torch.nn.utils import prune as torch_prune
    params = prunable_weights(model)
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured,
                                    amount=float(amount))
    for m, name in params:
        torch_prune.remove(m, name)  # weight = weight_orig * mask, hooks removed
    return weight_sparsity(model)


def zero_masks(model: nn.Module) -> Dict[str, torch.Tensor]:
    """{parameter name: bool mask of its zero weights} for the unstructured-pruned layers."""
    names = {id(m): n for n, m in model.named_modules()}
    return {"%s.%s" % (names[id(m)], name): (getattr(m, name) == 0)
            for m, name in prunable_weights(model)}


def keep_zeros_during_training(model: nn.Module,
                               masks: Optional[Dict[str, torch.Tensor]] = None) -> List[Any]:
    """Gradient hooks that keep pruned weights at zero while fine-tuning: their gradient is
    masked, so SGD and AdamW (whose moments then stay zero) never move them. ``masks``
    (from ``zero_masks``, default: the model's own zeros). Returns the hook handles
    (``.remove()`` them afterwards)."""
    params = dict(model.named_parameters())
    handles = []
    for name, mask in (masks if masks is not None else zero_masks(model)).items():
        keep = (~mask).to(device=params[name].device, dtype=params[name].dtype)
        handles.append(params[name].register_hook(lambda g, keep=keep: g * keep))
    return handles


def apply_zero_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    """Set the masked weights to exactly zero (after fine-tuning, as a guarantee)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name][mask.to(params[name].device)] = 0.0
