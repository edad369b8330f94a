"""What can be pruned in a SegModel, how units are counted and ranked, and the data that ranks them.

The prunable units: attention heads (timm ``Attention`` with a fused qkv), transformer MLP
neurons (timm ``Mlp``), encoder convolution filters and decoder channels; the classifier's
outputs (the classes) are never pruned. Importance estimators come from torch-pruning; Taylor
importance needs a labelled calibration batch that holds every class (``calibration_batch``).
"""
import math
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpcv_segmentation.core.classes import IGNORE_INDEX, NUM_CLASSES
from training.pruning.settings import (STRUCTURED_METHODS, UNSTRUCTURED, PruneError,
                                       method_kinds)

__all__ = ["UNIT_COUNTERS", "Batch", "make_importance", "is_weight_layer", "attention_layers",
           "mlp_layers", "classifier_layers", "count_units", "heads_per_layer",
           "widths_per_layer", "width_to_keep", "applicable_kinds", "check_method_applies",
           "width_roots", "ignored_except", "calibration_images", "calibration_batch",
           "example_input", "accumulate_gradients", "prunable_weights", "weight_sparsity",
           "macs_of", "describe"]

# prunable unit kind -> the key of ``count_units`` that counts it
UNIT_COUNTERS: Dict[str, str] = {
    "head": "heads",
    "neuron": "mlp_neurons",
    "filter": "encoder_filters",
    "channel": "decoder_channels",
}
Batch = Tuple[torch.Tensor, torch.Tensor]


def _random_importance():
    """The control an importance has to beat: units removed at random. Seeded, so that a run
    repeats (torch-pruning draws from torch's global generator)."""
    import torch_pruning as tp
    torch.manual_seed(0)
    return tp.importance.RandomImportance()


def make_importance(name: str):
    """torch-pruning importance estimator by name (l1, l2, lamp, taylor, random)."""
    import torch_pruning as tp
    factories: Dict[str, Callable[[], Any]] = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        # LAMP (Lee et al. 2021; the paper's future work): magnitudes rescaled within each layer
        # so that global ranking does not empty a layer; per layer it ranks like l2
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        # first-order Taylor (|w * dL/dw|): needs gradients from a labelled calibration batch
        "taylor": lambda: tp.importance.TaylorImportance(),
        "random": _random_importance,
    }
    if name not in factories:
        raise PruneError("unknown importance %r; choose from %s" % (name, ", ".join(factories)))
    return factories[name]()


# --------------------------------------------------------------------------------------------
# Finding the prunable units of a SegModel
# --------------------------------------------------------------------------------------------
def is_weight_layer(m: nn.Module) -> bool:
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
            if is_weight_layer(m)}


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


def width_roots(model: nn.Module, kinds: Sequence[str]) -> Set[nn.Module]:
    """The layers whose output channels a width-pruning pass may remove for these kinds."""
    qkv = {m.qkv for m in attention_layers(model).values()}
    fc1 = {m.fc1 for m in mlp_layers(model).values()}
    classifiers = set(classifier_layers(model))
    roots: Set[nn.Module] = set()
    if "filter" in kinds:  # encoder convs, and the transformer width they set (proj, fc2 rows)
        roots |= {m for m in model.encoder.modules()
                  if is_weight_layer(m) and m not in qkv and m not in fc1}
    if "neuron" in kinds:
        roots |= fc1
    if "channel" in kinds:
        roots |= {m for m in model.decoder.modules()
                  if is_weight_layer(m) and m not in classifiers}
    return roots


def ignored_except(model: nn.Module, roots: Set[nn.Module]) -> List[nn.Module]:
    """torch-pruning skips a group when any layer whose outputs it would cut is ignored, so
    ignoring every other weight layer restricts a pass to the groups rooted in ``roots``."""
    return [m for m in model.modules() if is_weight_layer(m) and m not in roots]


# --------------------------------------------------------------------------------------------
# Calibration data (Taylor importance) and example input (graph tracing)
# --------------------------------------------------------------------------------------------
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


def example_input(model: nn.Module) -> torch.Tensor:
    """A zero image to trace the dependency graph with. Channel coupling does not depend on
    the image size, so encoders that accept any size are traced at 128 px at most (faster)."""
    param = next(model.parameters())
    size = int(model.input_size)
    if not getattr(model, "fixed_input_size", False):
        size = min(size, 128)
    return torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)


def accumulate_gradients(model: nn.Module, batch: Batch) -> None:
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
# Size figures
# --------------------------------------------------------------------------------------------
def prunable_weights(model: nn.Module) -> List[Tuple[nn.Module, str]]:
    """(layer, "weight") of every conv/linear layer but the classifier: what unstructured
    pruning zeroes."""
    classifiers = set(classifier_layers(model))
    return [(m, "weight") for m in model.modules() if is_weight_layer(m) and m not in classifiers]


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights in the prunable conv/linear layers."""
    total = zeros = 0
    for m, name in prunable_weights(model):
        w = getattr(m, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / max(total, 1)


def macs_of(model: nn.Module) -> float:
    """GMACs at the model's own input size."""
    from lpcv_segmentation.model.cost import count_macs
    return float(count_macs(model, int(model.input_size)))


def describe(model: nn.Module) -> Dict[str, Any]:
    """Size figures of a model: parameters, GMACs at its input size, units, heads and widths
    per layer."""
    from lpcv_segmentation.model.cost import count_params
    return {"params": int(count_params(model)), "gmacs": macs_of(model),
            "units": count_units(model), "heads": heads_per_layer(model),
            "widths": widths_per_layer(model), "weight_sparsity": weight_sparsity(model)}
