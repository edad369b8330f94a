"""Structured pruning that removes structure for real, then fine-tuning (optionally distilled).

The paper this project follows pruned with ``torch.nn.utils.prune`` masks: weights became zero
but every tensor kept its shape, so its "pruned" models ran no faster. Here torch-pruning's
dependency graph cuts coupled layers together, so the result is a smaller dense model (fewer
parameters and MACs) saved in the ordinary checkpoint format, which ``load_checkpoint`` rebuilds.

Methods (what each removes; the layers coupled to it are cut with it):
  filter   encoder convolution filters: the stem, the inverted-residual blocks and the MobileViT
           blocks' convolutions (conv_1x1 sets the transformer width, so cutting it also cuts the
           LayerNorms, q/k/v input columns, projection and MLP output rows of that transformer),
           with the input channels of every layer that reads them (decoder laterals included)
  channel  channels of the UPerNet decoder (pyramid pooling, laterals, FPN, fusion) and the
           classifier's matching input columns; the decoder holds most of the compute at 512
  neuron   hidden units of the transformer MLPs (fc1 rows and the matching fc2 columns)
  head     whole attention heads (their q, k, v rows of qkv and the output projection's columns),
           ranked by importance inside each attention layer; at least one head always stays
  all      head, neuron, filter and channel together
  A+B      the unit kinds named, joined by + (``filter+head``: encoder filters and heads)
  unstructured  global magnitude pruning of single weights, for the comparison the paper plotted:
           the weights become zeros, shapes stay, and dense inference is NOT any faster
The classifier's outputs (the 14 classes) and the 3 input channels are never pruned.

Targets: ``--target sparsity --amount A`` removes the fraction A of each pruned unit (channels of
each convolution group, neurons of each MLP, heads of each attention layer) like the paper's
``amount``; ``--target macs --amount A`` removes structure until the MACs at the model's input
size are at most (1 - A) of the original (the fraction is searched on trial copies).
``--allocation global`` ranks channels and neurons across layers (LAMP scores are made for
this); heads are always ranked inside their layer. ``--round-to N`` rounds each layer's width
to the nearest multiple of N, at least N (with global allocation, down). ``--iterative K``
reaches the target in K equal steps, fine-tuning after each with --finetune-iters / K
iterations; with local allocation each step aims at the widths and heads the cumulative amount
leaves of the original ones, so K steps end where one step does.

  python -m training prune --checkpoint runs/student/best.safetensors --data DIR \\
      --out runs/pruned --method all --target sparsity --amount 0.5 --finetune-iters 2000 \\
      [--teacher runs/teacher/best.safetensors | --no-distil] [--importance lamp --allocation global]

writes RUN_DIR/best.safetensors and RUN_DIR/last.safetensors (the pruned, fine-tuned model, with
``training.pruning`` in its metadata: settings, sizes before and after, heads per attention
layer), RUN_DIR/prune.json (the report) and, when it fine-tunes, RUN_DIR/pruned.safetensors
(the model straight after pruning) with the training loop's config.yaml and metrics.csv.
Fine-tuning runs the project's training loop (training.train) from the checkpoint's own
training config with lr x 0.5; --config and key=value change it. It distils from the unpruned
--checkpoint unless --teacher names another teacher or --no-distil asks for none.
"""
import argparse
import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpcv_segmentation.core.classes import IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.fileio import write_json_atomic

# --------------------------------------------------------------------------------------------
# What can be asked for
# --------------------------------------------------------------------------------------------
# method -> the unit kinds it removes (heads first: their importance is read before the widths
# around them change)
STRUCTURED_METHODS: Dict[str, Tuple[str, ...]] = {
    "filter": ("filter",),
    "channel": ("channel",),
    "neuron": ("neuron",),
    "head": ("head",),
    "all": ("head", "neuron", "filter", "channel"),
}
UNSTRUCTURED = "unstructured"
METHODS: Tuple[str, ...] = tuple(STRUCTURED_METHODS) + (UNSTRUCTURED,)
# kinds may also be named together, joined by this (``filter+head``); they are pruned in the
# order of ``all``
KIND_JOINER = "+"
TARGETS: Tuple[str, ...] = ("sparsity", "macs")
ALLOCATIONS: Tuple[str, ...] = ("local", "global")
IMPORTANCES: Tuple[str, ...] = ("l1", "l2", "lamp", "taylor")
GRADIENT_IMPORTANCES: Tuple[str, ...] = ("taylor",)
# Taylor ranks by what a unit does to the loss on real images (measured: docs/compression.md)
DEFAULT_IMPORTANCE = "taylor"

# prunable unit kind -> the key of ``count_units`` that counts it
UNIT_COUNTERS: Dict[str, str] = {
    "head": "heads",
    "neuron": "mlp_neurons",
    "filter": "encoder_filters",
    "channel": "decoder_channels",
}
# Channels left in a layer are rounded to a multiple of this: ONNX Runtime's blocked
# kernels run such widths faster (measured: docs/compression.md, "Widths")
DEFAULT_ROUND_TO = 8
MAX_LAYER_RATIO = 0.9  # never remove more than this share of one layer in one step
MAX_MACS_AMOUNT = 0.95  # the largest fraction the MACs search tries
MACS_SEARCH_STEPS = 8  # trials of the MACs search at most
MACS_TOLERANCE = 0.02  # ... which stops within 2 % (of the fraction, or of sqrt(MACs))


PRUNED = "pruned.safetensors"  # in RUN_DIR: the model right after pruning, before fine-tuning


class PruneError(ValueError):
    """A pruning request that cannot be carried out; the message names the parameter or file."""


def method_kinds(method: str) -> Tuple[str, ...]:
    """The unit kinds a structured ``method`` removes, in pruning order: a method of
    STRUCTURED_METHODS, or two or more unit kinds joined by KIND_JOINER (``filter+head``)."""
    if method in STRUCTURED_METHODS:
        return STRUCTURED_METHODS[method]
    named = method.split(KIND_JOINER)
    order = STRUCTURED_METHODS["all"]
    if len(named) < 2 or len(set(named)) < len(named) or not set(named) <= set(order):
        raise PruneError("--method %r is not one of %s, nor unit kinds joined by %s (e.g. "
                         "filter%shead; kinds: %s)"
                         % (method, ", ".join(METHODS), KIND_JOINER, KIND_JOINER,
                            ", ".join(order)))
    return tuple(k for k in order if k in named)


def importance_for(method: str, importance: Optional[str]) -> str:
    """The importance a method uses: ``importance`` if given, else the default; unstructured
    pruning always ranks single weights by magnitude (l1)."""
    if method == UNSTRUCTURED and importance in (None, "taylor", "lamp"):
        return "l1"
    return importance or DEFAULT_IMPORTANCE


def make_importance(name: str):
    """torch-pruning importance estimator by name (l1, l2, lamp, taylor)."""
    import torch_pruning as tp
    factories: Dict[str, Callable[[], Any]] = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        # LAMP (Lee et al. 2021; the paper's future work): magnitudes rescaled within each layer
        # so that global ranking does not empty a layer; per layer it ranks like l2
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        # first-order Taylor (|w * dL/dw|): needs gradients from a labelled calibration batch
        "taylor": lambda: tp.importance.TaylorImportance(),
    }
    if name not in factories:
        raise PruneError("unknown importance %r; choose from %s" % (name, ", ".join(factories)))
    return factories[name]()


@dataclass
class PruneSettings:
    """One pruning request (the command's options)."""
    method: str = "all"
    amount: float = 0.5
    target: str = "sparsity"
    importance: str = DEFAULT_IMPORTANCE
    allocation: str = "local"
    iterative: int = 1
    finetune_iters: int = 0
    calib_images: int = 8
    round_to: int = DEFAULT_ROUND_TO

    def validate(self) -> None:
        """Raise PruneError naming the first option that cannot be used."""
        if self.method != UNSTRUCTURED:
            method_kinds(self.method)
        if self.target not in TARGETS:
            raise PruneError("--target %r is not one of %s" % (self.target, ", ".join(TARGETS)))
        if not isinstance(self.amount, (int, float)) or not 0.0 < float(self.amount) < 1.0:
            raise PruneError("--amount must be strictly between 0 and 1 (the fraction to remove), "
                             "got %r" % (self.amount,))
        if self.importance not in IMPORTANCES:
            raise PruneError("--importance %r is not one of %s"
                             % (self.importance, ", ".join(IMPORTANCES)))
        if self.allocation not in ALLOCATIONS:
            raise PruneError("--allocation %r is not one of %s"
                             % (self.allocation, ", ".join(ALLOCATIONS)))
        if int(self.iterative) < 1:
            raise PruneError("--iterative must be at least 1, got %r" % (self.iterative,))
        if int(self.finetune_iters) < 0:
            raise PruneError("--finetune-iters must be >= 0, got %r" % (self.finetune_iters,))
        if 0 < int(self.finetune_iters) < int(self.iterative):
            raise PruneError("--finetune-iters %d is fewer than one iteration per --iterative step "
                             "(%d)" % (self.finetune_iters, self.iterative))
        if int(self.round_to) < 1:
            raise PruneError("--round-to must be at least 1 (1: no rounding), got %r"
                             % (self.round_to,))
        if int(self.calib_images) < 1:
            raise PruneError("--calib-images must be at least 1, got %r" % (self.calib_images,))
        if self.method == UNSTRUCTURED:
            if self.target != "sparsity":
                raise PruneError("--method unstructured zeroes weights and removes no MACs in dense "
                                 "inference: use --target sparsity")
            if self.importance not in ("l1", "l2"):
                raise PruneError("--method unstructured ranks single weights by magnitude: use "
                                 "--importance l1 or l2, not %r" % self.importance)
            if int(self.iterative) != 1:
                raise PruneError("--iterative applies to structured methods only")


# --------------------------------------------------------------------------------------------
# Finding the prunable units of a SegModel
# --------------------------------------------------------------------------------------------
def _is_weight_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear))


def attention_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """{name: attention module} for every multi-head attention with a fused qkv projection
    (timm's ``Attention``, used by the MobileViT transformers)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "head_dim", None), int)}


def mlp_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """{name: MLP} for every transformer MLP (timm ``Mlp``: fc1 -> activation -> fc2)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(getattr(m, "fc1", None), nn.Linear)
            and isinstance(getattr(m, "fc2", None), nn.Linear)}


def classifier_layers(model: nn.Module) -> List[nn.Module]:
    """Layers whose outputs are the classes: never pruned."""
    return [model.classifier]


def count_units(model: nn.Module) -> Dict[str, int]:
    """How many of each prunable unit the model has now (what each method removes)."""
    qkv = {m.qkv for m in attention_layers(model).values()}
    mlps = mlp_layers(model)
    fc1 = {m.fc1 for m in mlps.values()}
    encoder_filters = sum(m.out_channels for m in model.encoder.modules()
                          if isinstance(m, nn.Conv2d))
    decoder_channels = sum(m.out_channels for m in model.decoder.modules()
                           if isinstance(m, nn.Conv2d))
    return {
        "heads": sum(m.num_heads for m in attention_layers(model).values()),
        "mlp_neurons": sum(m.fc1.out_features for m in mlps.values()),
        "encoder_filters": encoder_filters,
        "decoder_channels": decoder_channels,
        "attention_layers": len(qkv),
        "mlp_layers": len(fc1),
    }


def heads_per_layer(model: nn.Module) -> Dict[str, int]:
    """{attention module name: heads} (recorded in the pruned checkpoint's metadata)."""
    return {name: int(m.num_heads) for name, m in attention_layers(model).items()}


def widths_per_layer(model: nn.Module) -> Dict[str, int]:
    """{convolution or linear layer name: output channels or features}."""
    return {name: int(m.weight.shape[0]) for name, m in model.named_modules()
            if _is_weight_layer(m)}


def width_to_keep(width: int, amount: float, round_to: int) -> int:
    """Channels a layer of ``width`` keeps when the fraction ``amount`` of them is removed:
    the nearest multiple of ``round_to``, at least ``round_to``, at most ``width`` (a layer no
    wider than ``round_to`` keeps its width)."""
    if width <= round_to:
        return width
    kept = int(math.floor(width * (1.0 - amount) / round_to + 0.5)) * round_to
    return min(width, max(round_to, kept))


def applicable_kinds(model: nn.Module) -> Set[str]:
    """The unit kinds this model has (a ResNet18 has no heads nor MLP neurons)."""
    units = count_units(model)
    return {kind for kind, key in UNIT_COUNTERS.items() if units[key] > 0}


def check_method_applies(model: nn.Module, method: str) -> None:
    """PruneError when ``method`` names units that ``model`` does not have."""
    if method == UNSTRUCTURED:
        return
    have = applicable_kinds(model)
    missing = [k for k in method_kinds(method) if k not in have]
    if method != "all" and missing:
        raise PruneError("--method %s does not apply to %s: it has no %s (methods that apply: %s)"
                         % (method, getattr(model, "arch", type(model).__name__),
                            UNIT_COUNTERS[missing[0]].replace("_", " "),
                            ", ".join(m for m in STRUCTURED_METHODS
                                      if all(k in have for k in STRUCTURED_METHODS[m])
                                      or m == "all") + ", " + UNSTRUCTURED))


def _width_roots(model: nn.Module, kinds: Sequence[str]) -> Set[nn.Module]:
    """The layers whose output channels a width-pruning pass may remove for these kinds."""
    qkv = {m.qkv for m in attention_layers(model).values()}
    fc1 = {m.fc1 for m in mlp_layers(model).values()}
    classifiers = set(classifier_layers(model))
    roots: Set[nn.Module] = set()
    if "filter" in kinds:  # encoder convs, and the transformer width they set (proj, fc2 rows)
        roots |= {m for m in model.encoder.modules()
                  if _is_weight_layer(m) and m not in qkv and m not in fc1}
    if "neuron" in kinds:
        roots |= fc1
    if "channel" in kinds:
        roots |= {m for m in model.decoder.modules()
                  if _is_weight_layer(m) and m not in classifiers}
    return roots


def _ignored_except(model: nn.Module, roots: Set[nn.Module]) -> List[nn.Module]:
    """torch-pruning skips a group when any layer whose outputs it would cut is ignored, so
    ignoring every other weight layer restricts a pass to the groups rooted in ``roots``."""
    return [m for m in model.modules() if _is_weight_layer(m) and m not in roots]


# --------------------------------------------------------------------------------------------
# Calibration data (Taylor importance) and example input (graph tracing)
# --------------------------------------------------------------------------------------------
Batch = Tuple[torch.Tensor, torch.Tensor]


def calibration_images(label_paths: Sequence[str], count: int) -> List[int]:
    """Indices of at least ``count`` images that together contain every class present in
    the labels (greedy set cover, the image adding most missing classes first), filled up to
    ``count`` with images spread over the rest. Taylor importance ranks units by the
    gradients of this batch: a class absent from it looks unimportant and is pruned away
    (flood/water and vehicles lost all their IoU on real imagery with the first 8 images)."""
    from lpcv_segmentation.core.labels_io import read_label_png
    present: List[Set[int]] = []
    for path in label_paths:
        values = np.unique(read_label_png(str(path)))
        present.append({int(v) for v in values if v < NUM_CLASSES})
    missing = set().union(*present) if present else set()
    chosen: List[int] = []
    while missing:
        best = max(range(len(present)), key=lambda i: (len(present[i] & missing), -i))
        if not present[best] & missing:
            break
        chosen.append(best)
        missing -= present[best]
    rest = [i for i in range(len(present)) if i not in chosen]
    extra = max(0, count - len(chosen))
    if extra and rest:
        step = len(rest) / float(extra)
        chosen += sorted({rest[int(k * step)] for k in range(min(extra, len(rest)))})
    return sorted(chosen)


def calibration_batch(data_dir: str, input_size: int, count: int = 8,
                      split: str = "train") -> Batch:
    """At least ``count`` images of a split that together contain every class present in it
    (``calibration_images``), resized to the model input: (images, labels)."""
    from training.data import EvalTransform, SegmentationDataset, find_pairs
    dataset = SegmentationDataset(data_dir, split, EvalTransform(input_size), validate=False,
                                  progress=False)
    indices = calibration_images([label for _, label in find_pairs(data_dir, split)], count)
    items = [dataset[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _example_input(model: nn.Module) -> torch.Tensor:
    """A zero image to trace the dependency graph with. Channel coupling does not depend on
    the image size, so encoders that accept any size are traced at 128 px at most (faster)."""
    param = next(model.parameters())
    size = int(model.input_size)
    if not getattr(model, "fixed_input_size", False):
        size = min(size, 128)
    return torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)


def _accumulate_gradients(model: nn.Module, batch: Batch) -> None:
    """One labelled backward pass (eval mode: batch norm statistics stay as trained)."""
    images, labels = batch
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        logits = model(images.to(param.device))
        loss = F.cross_entropy(logits, labels.to(param.device), ignore_index=IGNORE_INDEX)
        loss.backward()
    model.train(was_training)


# --------------------------------------------------------------------------------------------
# One structured pruning step
# --------------------------------------------------------------------------------------------
def _heads_to_remove(heads: int, ratio: float) -> int:
    return max(0, min(int(round(ratio * heads)), heads - 1))


def _prune_heads(model: nn.Module, ratio: float, importance: str, calib: Optional[Batch],
                 keep: Optional[Dict[str, int]] = None) -> None:
    """Remove whole heads from every attention layer, ranked inside it: round(ratio x heads),
    or, given ``keep`` ({attention module name: heads}), down to that many in each layer."""
    import torch_pruning as tp
    from lpcv_segmentation.model.structure import sync_attention_attributes
    layers = attention_layers(model)
    remove = {name: (a.num_heads - keep[name] if keep is not None
                     else _heads_to_remove(a.num_heads, ratio)) for name, a in layers.items()}
    # torch-pruning removes ceil(r x heads) heads; give it r = (n - 0.5) / heads so it removes n
    head_ratios = {a.qkv: (remove[name] - 0.5) / a.num_heads
                   for name, a in layers.items() if remove[name] > 0}
    if not head_ratios:
        return
    if importance in GRADIENT_IMPORTANCES:
        _accumulate_gradients(model, calib)
    pruner = tp.pruner.MetaPruner(
        model, _example_input(model), importance=make_importance(importance),
        # only the attention groups are in scope (everything else ignored), and with
        # prune_head_dims=False their width is never cut: this ratio only has to be > 0 for
        # torch-pruning to visit them
        pruning_ratio=0.5, ignored_layers=_ignored_except(model, set(head_ratios)),
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
    roots = _width_roots(model, kinds)
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
        _accumulate_gradients(model, calib)
    pruner = tp.pruner.MetaPruner(
        model, _example_input(model), importance=make_importance(importance),
        max_pruning_ratio=MAX_LAYER_RATIO, ignored_layers=_ignored_except(model, roots),
        global_pruning=(allocation == "global"), **options)
    pruner.step()
    sync_attention_attributes(model)  # head_dim follows if a transformer width changed
    model.zero_grad(set_to_none=True)


def prune_step(model: nn.Module, method: str, ratio: float,
               importance: str = DEFAULT_IMPORTANCE,
               allocation: str = "local", calib: Optional[Batch] = None,
               round_to: Optional[int] = None,
               heads_to_keep: Optional[Dict[str, int]] = None,
               widths_to_keep: Optional[Dict[str, int]] = None) -> nn.Module:
    """Prune ``model`` in place by the fraction ``ratio`` of its current units of ``method``,
    ranked by ``importance`` (the gradient-based default needs ``calib``; pass ``"l2"`` to
    prune without data); ``heads_to_keep`` ({attention module name: heads}) and, with local
    allocation, ``widths_to_keep`` ({layer name: width}) override the ratio. Returns the model
    (in eval mode)."""
    if method == UNSTRUCTURED:
        raise PruneError("prune_step takes a structured method (%s), not %r"
                         % (", ".join(STRUCTURED_METHODS), method))
    if importance in GRADIENT_IMPORTANCES and calib is None:
        raise PruneError("--importance %s needs a labelled calibration batch" % importance)
    model.eval()
    kinds = [k for k in method_kinds(method) if k in applicable_kinds(model)]
    if "head" in kinds:
        _prune_heads(model, ratio, importance, calib, heads_to_keep)
    widths = [k for k in kinds if k != "head"]
    if widths:
        _prune_widths(model, widths, ratio, importance, allocation, calib, round_to,
                      widths_to_keep)
    return model.eval()


def macs_of(model: nn.Module) -> float:
    """GMACs at the model's own input size."""
    from lpcv_segmentation.model.cost import count_macs
    return float(count_macs(model, int(model.input_size)))


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
        trial = prune_step(copy.deepcopy(model), method, ratio, importance, allocation, calib,
                           round_to)
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


def step_targets(settings: PruneSettings) -> List[float]:
    """Cumulative amount after each of the K iterative steps (A k / K)."""
    k = int(settings.iterative)
    return [float(settings.amount) * (i + 1) / k for i in range(k)]


def relative_ratio(done: float, goal: float) -> float:
    """Fraction of what is left after removing ``done`` to remove now to reach ``goal``
    (both fractions of the original). A hair below exact so that flooring keeps the count."""
    return max(0.0, 1.0 - (1.0 - goal) / (1.0 - done) - 1e-6)


# --------------------------------------------------------------------------------------------
# Unstructured magnitude pruning (the paper's comparison: zeros, no speed-up)
# --------------------------------------------------------------------------------------------
def _unstructured_params(model: nn.Module) -> List[Tuple[nn.Module, str]]:
    classifiers = set(classifier_layers(model))
    return [(m, "weight") for m in model.modules() if _is_weight_layer(m) and m not in classifiers]


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights in the prunable conv/linear layers."""
    total = zeros = 0
    for m, name in _unstructured_params(model):
        w = getattr(m, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / max(total, 1)


def prune_unstructured(model: nn.Module, amount: float) -> float:
    """Zero the ``amount`` smallest-magnitude weights across all conv/linear layers (global
    ranking, classifier excluded) and make it permanent. Shapes do not change, so dense
    inference is exactly as slow as before. Returns the weight sparsity reached."""
    from torch.nn.utils import prune as torch_prune
    params = _unstructured_params(model)
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured,
                                    amount=float(amount))
    for m, name in params:
        torch_prune.remove(m, name)  # weight = weight_orig * mask, hooks removed
    return weight_sparsity(model)


def zero_masks(model: nn.Module) -> Dict[str, torch.Tensor]:
    """{parameter name: bool mask of its zero weights} for the unstructured-pruned layers."""
    names = {id(m): n for n, m in model.named_modules()}
    return {"%s.%s" % (names[id(m)], name): (getattr(m, name) == 0)
            for m, name in _unstructured_params(model)}


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


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
def describe(model: nn.Module) -> Dict[str, Any]:
    """Size figures of a model: parameters, GMACs at its input size, units, heads and widths
    per layer."""
    from lpcv_segmentation.model.cost import count_params
    return {"params": int(count_params(model)), "gmacs": macs_of(model),
            "units": count_units(model), "heads": heads_per_layer(model),
            "widths": widths_per_layer(model), "weight_sparsity": weight_sparsity(model)}


# --------------------------------------------------------------------------------------------
# The whole request: prune (in K steps), fine-tune after each, save
# --------------------------------------------------------------------------------------------
def check_inputs(checkpoint: str, data_dir: Optional[str], teacher: Optional[str] = None,
                 need_data: bool = True) -> Dict[str, Any]:
    """Check the files of a request before any work; return the checkpoint's metadata.
    Raises PruneError naming the file or folder."""
    from lpcv_segmentation.model.checkpoint import CheckpointError, read_metadata
    try:
        meta = read_metadata(checkpoint)
    except CheckpointError as e:
        raise PruneError("--checkpoint: %s" % e)
    if teacher and teacher.lower().endswith(".onnx"):
        if not os.path.isfile(teacher):
            raise PruneError("--teacher: %s does not exist" % teacher)
    elif teacher:
        try:
            read_metadata(teacher)
        except CheckpointError as e:
            raise PruneError("--teacher: %s" % e)
    if need_data:
        from training.data import DatasetError, find_pairs
        if not data_dir:
            raise PruneError("--data is needed (calibration and fine-tuning read it)")
        try:
            find_pairs(data_dir, "train")
        except DatasetError as e:
            raise PruneError("--data: %s" % e)
    return meta


def pruning_record(settings: PruneSettings, before: Dict[str, Any], after: Dict[str, Any],
                   steps: List[Dict[str, Any]], source: str) -> Dict[str, Any]:
    """What goes into the pruned checkpoint's metadata under ``training.pruning``."""
    record = asdict(settings)
    record.update({
        "source": os.path.abspath(source),
        "params_before": before["params"], "params_after": after["params"],
        "gmacs_before": before["gmacs"], "gmacs_after": after["gmacs"],
        "param_reduction": 1.0 - after["params"] / max(before["params"], 1),
        "weight_sparsity": after["weight_sparsity"],
        "heads_before": before["heads"], "heads_after": after["heads"],
        "units_before": before["units"], "units_after": after["units"],
        "steps": steps,
        "dense_speedup_expected": settings.method != UNSTRUCTURED,
    })
    return record


def prune_model(model: nn.Module, settings: PruneSettings, calib: Optional[Batch] = None,
                step: int = 0, done: float = 0.0, *, original: Dict[str, Any]
                ) -> Dict[str, Any]:
    """Step ``step`` (0-based) of ``settings`` on ``model`` in place, given the cumulative
    amount ``done`` so far. Returns the step's record (ratio used, params, GMACs).

    ``original`` is ``describe(model)`` before step 0. Its GMACs are what ``--target macs``
    cuts a fraction of, and each attention layer keeps the heads, and with local allocation
    each layer the width, that the cumulative amount leaves of its original count: a ratio of
    the current count, rounded at every step, would drift (0.6 in 3 steps would leave 1 of 4
    heads, not 2, and 16 of 64 channels, not 24), so K steps end where one step does."""
    goal = step_targets(settings)[step]
    if settings.method == UNSTRUCTURED:
        prune_unstructured(model, goal)
        ratio = goal
    elif settings.target == "macs":
        target = float(original["gmacs"]) * (1 - goal)
        ratio = ratio_for_macs(model, settings.method, target, settings.importance,
                               settings.allocation, calib, settings.round_to)
        prune_step(model, settings.method, ratio, settings.importance, settings.allocation, calib,
                   settings.round_to)
    else:
        ratio = relative_ratio(done, goal)
        keep = {name: heads - _heads_to_remove(heads, goal)
                for name, heads in original["heads"].items()}
        widths = {name: width_to_keep(width, goal, settings.round_to)
                  for name, width in original["widths"].items()}
        prune_step(model, settings.method, ratio, settings.importance, settings.allocation, calib,
                   settings.round_to, heads_to_keep=keep, widths_to_keep=widths)
    info = describe(model)
    return {"step": step + 1, "amount": goal, "ratio": ratio, "params": info["params"],
            "gmacs": info["gmacs"], "heads": sum(info["heads"].values())}


# Fine-tune at half the learning rate the model was trained with. Measured on the +KD student
# of ablation_cpu.yaml (val mIoU 0.139), all 0.3 then 100 distilled iterations: lr x 0.1 gave
# 0.076, lr x 0.5 gave 0.108 (0.056 before fine-tuning).
FINETUNE_LR_SCALE = 0.5


def finetune_config(meta: Dict[str, Any], init: str, iters: int, teacher: Optional[str],
                    config_path: Optional[str], overrides: Sequence[str]) -> Dict[str, Any]:
    """The training config of a fine-tuning run, in layers: the defaults; the checkpoint's own
    training config (its data and model settings); fine-tuning changes (start from ``init``,
    ``iters``, lr x FINETUNE_LR_SCALE, warm-up and validation fitted into ``iters``, the
    teacher only if given); then the ``--config`` file and the ``key=value`` overrides."""
    from training import config as config_lib
    trained = ((meta.get("training") or {}).get("config") or {})
    base = {k: v for k, v in trained.items() if k in config_lib.DEFAULTS}
    base.update({
        "init": init,
        "iters": int(iters),
        "lr": float(base.get("lr", config_lib.DEFAULTS["lr"])) * FINETUNE_LR_SCALE,
        "warmup_iters": min(int(base.get("warmup_iters", 0)), int(iters) // 10),
        "eval_every": min(int(base.get("eval_every", iters)), int(iters)),
        "checkpoint_every": None,
        "stop_after": None,
        "teacher": teacher,
        "fm_weight": base.get("fm_weight", 0.0) if teacher else 0.0,
        "fg_weight": base.get("fg_weight", 0.0) if teacher else 0.0,
    })
    return config_lib.load_config(config_path, overrides, base=base)


def _finetune(init: str, meta: Dict[str, Any], data_dir: str, out_dir: str, iters: int,
              teacher: Optional[str], config_path: Optional[str], overrides: Sequence[str],
              masks: Optional[Dict[str, torch.Tensor]] = None) -> nn.Module:
    """Fine-tune the checkpoint ``init`` with the project's training loop (training.train's
    Trainer: same losses, distillation, validation and best/last checkpoints) into
    ``out_dir``; returns the model as it ends. ``masks`` keep unstructured zeros at zero."""
    from training.distributed import cleanup_distributed, init_distributed
    from training.train import Trainer
    config = finetune_config(meta, init, iters, teacher, config_path, overrides)
    ctx = init_distributed(config["device"])
    try:
        trainer = Trainer(config, data_dir, out_dir, ctx)
        hooks = keep_zeros_during_training(trainer.model, masks) if masks else []
        trainer.fit()
        for handle in hooks:
            handle.remove()
        model = trainer.model.cpu().eval()
    finally:
        cleanup_distributed()
    if masks:
        apply_zero_masks(model, masks)
    return model


def _resave_with_record(path: str, record: Dict[str, Any],
                        masks: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Add the pruning record to a checkpoint the training loop wrote (and re-zero the
    unstructured masks, so fine-tuning can never have revived a pruned weight)."""
    from lpcv_segmentation.model.checkpoint import load_checkpoint, save_checkpoint
    model, meta = load_checkpoint(path)
    if masks:
        apply_zero_masks(model, masks)
    training = dict(meta.get("training") or {})
    training["pruning"] = record
    meta["training"] = training
    save_checkpoint(path, model, meta)


def run_prune(checkpoint: str, data_dir: str, out_dir: str, settings: PruneSettings,
              teacher: Optional[str] = None, config_path: Optional[str] = None,
              overrides: Sequence[str] = (), progress: bool = True) -> Dict[str, Any]:
    """Prune ``checkpoint`` as ``settings`` ask, fine-tune, and write ``out_dir``/best and last
    .safetensors plus ``prune.json``. Every input is checked before any work. Returns the report."""
    from lpcv_segmentation.model.checkpoint import load_checkpoint, save_checkpoint
    settings.validate()
    check_inputs(checkpoint, data_dir, teacher)
    if config_path and not os.path.isfile(config_path):
        raise PruneError("--config %s does not exist" % config_path)
    from training.config import ConfigError, parse_overrides
    try:
        parse_overrides(overrides)
    except ConfigError as e:
        raise PruneError(str(e))
    model, meta = load_checkpoint(checkpoint)
    check_method_applies(model, settings.method)
    calib = (calibration_batch(data_dir, int(model.input_size), settings.calib_images)
             if settings.importance in GRADIENT_IMPORTANCES else None)

    os.makedirs(out_dir, exist_ok=True)
    started = time.time()
    before = describe(model)
    steps: List[Dict[str, Any]] = []
    masks: Optional[Dict[str, torch.Tensor]] = None
    done = 0.0
    per_step_iters = settings.finetune_iters // settings.iterative
    for step in range(settings.iterative):
        record = prune_model(model, settings, calib, step, done, original=before)
        done = record["amount"]
        if settings.method == UNSTRUCTURED:
            masks = zero_masks(model)
        last_step = step == settings.iterative - 1
        step_dir = out_dir if last_step else os.path.join(out_dir, "step%d" % (step + 1))
        if progress:
            print("step %d/%d: ratio %.3f -> %.3fM params, %.3f GMACs"
                  % (step + 1, settings.iterative, record["ratio"], record["params"] / 1e6,
                     record["gmacs"]), flush=True)
        if per_step_iters > 0:
            # the pruned model before fine-tuning: the training loop starts from this file
            pruned_path = os.path.join(step_dir, PRUNED)
            training = dict(meta.get("training") or {}, pruning_step=record)
            save_checkpoint(pruned_path, model, dict(meta, training=training))
            model = _finetune(pruned_path, meta, data_dir, step_dir, per_step_iters, teacher,
                              config_path, overrides, masks)
            record["finetune_iters"] = per_step_iters
        steps.append(record)

    after = describe(model)
    record = pruning_record(settings, before, after, steps, checkpoint)
    record["seconds"] = time.time() - started
    for name in ("best", "last"):
        path = os.path.join(out_dir, name + ".safetensors")
        if per_step_iters > 0 and os.path.isfile(path):
            _resave_with_record(path, record, masks)
        else:
            training = dict(meta.get("training") or {})
            training["pruning"] = record
            save_checkpoint(path, model, dict(meta, training=training))
    report = {"checkpoint": os.path.abspath(checkpoint), "out": os.path.abspath(out_dir),
              "before": before, "after": after, "pruning": record}
    write_json_atomic(os.path.join(out_dir, "prune.json"), report)
    return report


def format_summary(report: Dict[str, Any]) -> str:
    """Before/after table of a run_prune report."""
    b, a = report["before"], report["after"]
    rows = [("parameters", "%.3fM" % (b["params"] / 1e6), "%.3fM" % (a["params"] / 1e6),
             a["params"] / max(b["params"], 1)),
            ("GMACs", "%.3f" % b["gmacs"], "%.3f" % a["gmacs"],
             a["gmacs"] / max(b["gmacs"], 1e-12))]
    for key in ("heads", "mlp_neurons", "encoder_filters", "decoder_channels"):
        rows.append((key.replace("_", " "), str(b["units"][key]), str(a["units"][key]),
                     a["units"][key] / max(b["units"][key], 1)))
    lines = ["%-18s %12s %12s %8s" % ("", "before", "after", "ratio")]
    lines += ["%-18s %12s %12s %8.3f" % row for row in rows]
    if report["pruning"]["method"] == UNSTRUCTURED:
        lines.append("weight sparsity %.3f: zeros only, shapes unchanged, no dense speed-up"
                     % a["weight_sparsity"])
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line: python -m training prune
# --------------------------------------------------------------------------------------------
def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError("%s is outside (0, 1): the amount is the fraction to "
                                         "remove" % text)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="model to prune (.safetensors checkpoint with metadata)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="dataset in the LPCV layout (calibration and fine-tuning)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="writes RUN_DIR/best.safetensors, last.safetensors, prune.json")
    parser.add_argument("--method", default="all", metavar="METHOD",
                        help="what to remove: %s (default all), or unit kinds joined by %s "
                             "(filter%shead); unstructured only zeroes weights"
                             % (", ".join(METHODS), KIND_JOINER, KIND_JOINER))
    parser.add_argument("--target", choices=TARGETS, default="sparsity",
                        help="sparsity: remove --amount of each unit; macs: cut MACs by --amount")
    parser.add_argument("--amount", type=_amount, required=True, metavar="A",
                        help="fraction to remove, strictly between 0 and 1")
    parser.add_argument("--importance", choices=IMPORTANCES, default=None,
                        help="importance score (default %s: |w x dL/dw| on --calib-images "
                             "training images; l1, l2, lamp: weight magnitudes; unstructured "
                             "always uses l1)" % DEFAULT_IMPORTANCE)
    parser.add_argument("--allocation", choices=ALLOCATIONS, default="local",
                        help="rank channels per layer (local, default) or across layers (global)")
    parser.add_argument("--finetune-iters", type=int, default=0, metavar="N",
                        help="fine-tuning iterations in all (split over --iterative steps)")
    parser.add_argument("--teacher", default=None, metavar="CKPT",
                        help="distil from this teacher while fine-tuning (default: the "
                             "unpruned --checkpoint itself; a checkpoint or an ONNX file)")
    parser.add_argument("--no-distil", action="store_true",
                        help="fine-tune on the labels alone (no teacher)")
    parser.add_argument("--iterative", type=int, default=1, metavar="K",
                        help="reach the amount in K prune + fine-tune steps (default 1)")
    parser.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, metavar="N",
                        help="round the channels and neurons left in each layer to a "
                             "multiple of N, at least N (default %d: faster kernels; 1: exact "
                             "amounts)" % DEFAULT_ROUND_TO)
    parser.add_argument("--calib-images", type=int, default=8, metavar="N",
                        help="training images for Taylor importance (default 8)")
    parser.add_argument("--config", default=None, metavar="CFG",
                        help="fine-tuning config YAML (default: the checkpoint's own training "
                             "config with fine-tuning changes, see docs/compression.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="fine-tuning config overrides, e.g. lr=1e-4 batch_size=4")


def main(args: argparse.Namespace) -> int:
    if args.method == UNSTRUCTURED and args.importance in ("taylor", "lamp"):
        print("error: --method unstructured ranks single weights by magnitude: use --importance "
              "l1 or l2 (or leave it out)", file=sys.stderr)
        return 2
    settings = PruneSettings(method=args.method, amount=args.amount, target=args.target,
                             importance=importance_for(args.method, args.importance),
                             allocation=args.allocation, iterative=args.iterative,
                             finetune_iters=args.finetune_iters,
                             calib_images=args.calib_images, round_to=args.round_to)
    from lpcv_segmentation.model.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.data import DatasetError
    from training.train import TrainingError
    try:
        # the standard recovery: the pruned model learns from the model it was cut from
        teacher = None if args.no_distil else (args.teacher or args.checkpoint)
        if args.no_distil and args.teacher:
            raise PruneError("--no-distil and --teacher contradict each other; choose one")
        report = run_prune(args.checkpoint, args.data, args.out, settings, teacher=teacher,
                           config_path=args.config, overrides=args.overrides)
    except (PruneError, ConfigError, DatasetError, CheckpointError, TrainingError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print(format_summary(report))
    print("wrote %s" % ", ".join(os.path.join(args.out, n)
                                 for n in ("best.safetensors", "last.safetensors", "prune.json")))
    return 0
