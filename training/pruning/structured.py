"""Structured pruning with torch-pruning: whole heads, neurons, filters and channels removed for real.

torch-pruning's dependency graph cuts coupled layers together, so the result is a smaller dense
model. The MobileViT attention modules reshape with their stored ``num_heads``, ``head_dim``
and ``attn_dim``: the pruner is given ``num_heads`` per qkv layer and those attributes are
synchronised after every step (``lpcv_segmentation.model.structure.sync_attention_attributes``),
or the forward pass fails.

``prune_by_ratio`` prunes one ratio of a method's units in place; ``ratio_for_macs`` finds the
ratio that reaches a MACs target. The K-step schedule and the whole request (pruning then
fine-tuning) are in ``training.pruning.request``.
"""
import copy
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from torch import nn

from training.pruning.settings import (DEFAULT_IMPORTANCE, GRADIENT_IMPORTANCES,
                                       STRUCTURED_METHODS, UNSTRUCTURED, PruneError,
                                       method_kinds)
from training.pruning.units import (Batch, accumulate_gradients, applicable_kinds,
                                    attention_layers, example_input, ignored_except, macs_of,
                                    make_importance, width_roots, width_to_keep)

__all__ = ["MAX_LAYER_RATIO", "MAX_MACS_AMOUNT", "MACS_SEARCH_STEPS", "MACS_TOLERANCE",
           "UnitsToKeep", "heads_to_remove", "prune_by_ratio", "ratio_for_macs"]

MAX_LAYER_RATIO = 0.9  # never remove more than this share of one layer in one step
MAX_MACS_AMOUNT = 0.95  # the largest fraction the MACs search tries
MACS_SEARCH_STEPS = 8  # trials of the MACs search at most
MACS_TOLERANCE = 0.02  # ... which stops within 2 % (of the fraction, or of sqrt(MACs))


@dataclass(frozen=True)
class UnitsToKeep:
    """Exact counts that override a ratio: ``heads`` {attention module name: heads} and, with
    local allocation, ``widths`` {layer name: output channels or features}."""
    heads: Optional[Dict[str, int]] = None
    widths: Optional[Dict[str, int]] = None


def heads_to_remove(heads: int, ratio: float) -> int:
    """Heads an attention layer of ``heads`` loses at ``ratio``; at least one always stays."""
    return max(0, min(int(round(ratio * heads)), heads - 1))


def _prune_heads(model: nn.Module, ratio: float, importance: str, calib: Optional[Batch],
                 keep: Optional[Dict[str, int]] = None) -> None:
    """Remove whole heads from every attention layer, ranked inside it: round(ratio x heads),
    or, given ``keep`` ({attention module name: heads}), down to that many in each layer."""
    import torch_pruning as tp
    from lpcv_segmentation.model.structure import sync_attention_attributes
    layers = attention_layers(model)
    remove = {name: (a.num_heads - keep[name] if keep is not None
                     else heads_to_remove(a.num_heads, ratio)) for name, a in layers.items()}
    # torch-pruning removes ceil(r x heads) heads; give it r = (n - 0.5) / heads so it removes n
    head_ratios = {a.qkv: (remove[name] - 0.5) / a.num_heads
                   for name, a in layers.items() if remove[name] > 0}
    if not head_ratios:
        return
    if importance in GRADIENT_IMPORTANCES:
        accumulate_gradients(model, calib)
    pruner = tp.pruner.MetaPruner(
        model, example_input(model), importance=make_importance(importance),
        # only the attention groups are in scope (everything else ignored), and with
        # prune_head_dims=False their width is never cut: this ratio only has to be > 0 for
        # torch-pruning to visit them
        pruning_ratio=0.5, ignored_layers=ignored_except(model, set(head_ratios)),
        num_heads={a.qkv: a.num_heads for a in layers.values()}, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio_dict=head_ratios, global_pruning=False)
    pruner.step()
    sync_attention_attributes(model, pruner.num_heads)
    model.zero_grad(set_to_none=True)


def _prune_widths(model: nn.Module, kinds: Sequence[str], ratio: float, importance: str,
                  allocation: str, calib: Optional[Batch], round_to: Optional[int] = None,
                  keep: Optional[Dict[str, int]] = None) -> None:
    """Remove channels/neurons of the groups rooted in ``kinds``. Local allocation cuts each
    layer to ``keep`` ({layer name: width}; by default ``width_to_keep`` of the fraction
    ``ratio`` of its current width); global allocation removes the fraction ``ratio`` of all
    of them, ranked together, rounding each layer down to a multiple of ``round_to``."""
    import torch_pruning as tp
    from lpcv_segmentation.model.structure import sync_attention_attributes
    roots = width_roots(model, kinds)
    if not roots or ratio <= 0.0:
        return
    if allocation == "local":
        # torch-pruning keeps int(width x (1 - r)) channels of a layer and floors that to its
        # round_to at every call, so a ratio of the current width drifts step by step (0.6 in 3
        # steps left 16 of 64 channels, one step 24): give each layer the r that lands on its
        # target, already rounded
        ratios = {}
        for name, m in model.named_modules():
            if m in roots:
                width = int(m.weight.shape[0])
                target = min(width, keep[name] if keep is not None
                             else width_to_keep(width, ratio, round_to or 1))
                ratios[m] = 1.0 - (target + 0.5) / width if target < width else 0.0
        options: Dict[str, Any] = {"pruning_ratio": 0.0, "pruning_ratio_dict": ratios,
                                   "round_to": None}
    else:
        options = {"pruning_ratio": ratio, "round_to": round_to}
    if importance in GRADIENT_IMPORTANCES:
        accumulate_gradients(model, calib)
    pruner = tp.pruner.MetaPruner(
        model, example_input(model), importance=make_importance(importance),
        max_pruning_ratio=MAX_LAYER_RATIO, ignored_layers=ignored_except(model, roots),
        global_pruning=(allocation == "global"), **options)
    pruner.step()
    sync_attention_attributes(model)  # head_dim follows if a transformer width changed
    model.zero_grad(set_to_none=True)


def prune_by_ratio(model: nn.Module, method: str, ratio: float,
                   importance: str = DEFAULT_IMPORTANCE, allocation: str = "local",
                   calib: Optional[Batch] = None, round_to: Optional[int] = None,
                   keep: Optional[UnitsToKeep] = None) -> nn.Module:
    """Prune ``model`` in place by the fraction ``ratio`` of its current units of ``method``,
    ranked by ``importance`` (the gradient-based default needs ``calib``; pass ``"l2"`` to
    prune without data); ``keep`` gives exact counts that override the ratio. Returns the
    model (in eval mode)."""
    if method == UNSTRUCTURED:
        raise PruneError("prune_by_ratio takes a structured method (%s), not %r"
                         % (", ".join(STRUCTURED_METHODS), method))
    if importance in GRADIENT_IMPORTANCES and calib is None:
        raise PruneError("--importance %s needs a labelled calibration batch" % importance)
    model.eval()
    kinds = [k for k in method_kinds(method) if k in applicable_kinds(model)]
    if "head" in kinds:
        _prune_heads(model, ratio, importance, calib, keep.heads if keep else None)
    widths = [k for k in kinds if k != "head"]
    if widths:
        _prune_widths(model, widths, ratio, importance, allocation, calib, round_to,
                      keep.widths if keep else None)
    return model.eval()


def ratio_for_macs(model: nn.Module, method: str, target_gmacs: float, importance: str,
                   allocation: str, calib: Optional[Batch] = None,
                   round_to: Optional[int] = None) -> float:
    """A fraction whose one-shot pruning brings ``model`` to ``target_gmacs`` or just below
    (the model itself is untouched; each trial prunes a copy).

    MACs fall about as (1 - r)^2 when both sides of the convolutions lose the fraction r, so
    the search interpolates sqrt(MACs) linearly inside a bracket (false position), which
    usually lands within 3 % of the target in 3 or 4 trials; it stops when the bracket is
    narrower than MACS_TOLERANCE."""
    start = macs_of(model)
    if target_gmacs >= start:
        return 0.0

    def root_gmacs_at(ratio: float) -> float:
        trial = prune_by_ratio(copy.deepcopy(model), method, ratio, importance, allocation,
                               calib, round_to)
        return math.sqrt(macs_of(trial))

    goal = math.sqrt(target_gmacs)
    low, f_low = 0.0, math.sqrt(start)            # above the target
    high, f_high = MAX_MACS_AMOUNT, None           # evaluated only if needed
    ratio = 1.0 - goal / f_low                     # the (1 - r)^2 guess
    for _ in range(MACS_SEARCH_STEPS):
        ratio = min(max(ratio, low + 1e-3), high - 1e-3) if high - low > 2e-3 else high
        value = root_gmacs_at(ratio)
        if value <= goal:
            high, f_high = ratio, value
            if value >= goal * (1.0 - MACS_TOLERANCE / 2):  # close enough from below
                break
        else:
            low, f_low = ratio, value
        if high - low < MACS_TOLERANCE:
            break
        if f_high is None:  # no feasible point yet: extrapolate from the two highest
            ratio = min(MAX_MACS_AMOUNT, ratio + max(0.05, (value - goal) / max(
                (math.sqrt(start) - value) / max(ratio, 1e-6), 1e-9)))
        else:
            ratio = low + (f_low - goal) * (high - low) / max(f_low - f_high, 1e-12)
    if f_high is None:
        f_high = root_gmacs_at(MAX_MACS_AMOUNT)
        if f_high > goal:
            raise PruneError("--method %s cannot bring %s to %.3f GMACs: removing %.0f%% of its "
                             "units leaves %.3f GMACs (try --method all)"
                             % (method, getattr(model, "arch", "the model"), target_gmacs,
                                100 * MAX_MACS_AMOUNT, f_high ** 2))
    return high
