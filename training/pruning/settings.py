"""What a pruning request may ask for, and the one place each option is checked.

``PruneSettings`` is one pruning request (method, amount, target, importance, allocation,
steps, fine-tuning length, rounding); ``FinetuneSettings`` is how a pruned (or control) model
is fine-tuned afterwards (teacher, config file, ``key=value`` overrides). The command line, the
sweep, the ablation and the Pareto run all build these objects and call their ``validate``;
nothing else checks the same options. This module imports no torch, so commands can check a
request before paying for it.
"""
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["STRUCTURED_METHODS", "UNSTRUCTURED", "METHODS", "KIND_JOINER", "TARGETS",
           "ALLOCATIONS", "IMPORTANCES", "GRADIENT_IMPORTANCES", "DEFAULT_IMPORTANCE",
           "DEFAULT_ROUND_TO", "PruneError", "method_kinds", "importance_for", "PruneSettings",
           "FinetuneSettings", "check_inputs"]

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
IMPORTANCES: Tuple[str, ...] = ("l1", "l2", "lamp", "taylor", "random")
GRADIENT_IMPORTANCES: Tuple[str, ...] = ("taylor",)
# Taylor ranks by what a unit does to the loss on real images (docs/compression.md)
DEFAULT_IMPORTANCE = "taylor"
# Channels left in a layer are rounded to a multiple of this: ONNX Runtime's blocked
# kernels run such widths faster (docs/compression.md, "Widths")
DEFAULT_ROUND_TO = 8


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
    """The importance a method uses when one importance is shared by several methods (a sweep,
    an ablation section): ``importance`` if given, else the default; unstructured pruning
    always ranks single weights by magnitude (l1)."""
    if method == UNSTRUCTURED and importance in (None, "taylor", "lamp"):
        return "l1"
    return importance or DEFAULT_IMPORTANCE


@dataclass(frozen=True)
class PruneSettings:
    """One pruning request (the command's options; recorded as they are in prune.json and in
    the pruned checkpoint's ``training.pruning``)."""
    method: str = "all"
    amount: float = 0.5
    target: str = "sparsity"
    importance: str = DEFAULT_IMPORTANCE
    allocation: str = "local"
    iterative: int = 1
    finetune_iters: int = 0
    calib_images: int = 8
    round_to: int = DEFAULT_ROUND_TO

    def validate(self) -> "PruneSettings":
        """Raise PruneError naming the first option that cannot be used; returns self."""
        if self.method != UNSTRUCTURED:
            method_kinds(self.method)
        if self.target not in TARGETS:
            raise PruneError("--target %r is not one of %s" % (self.target, ", ".join(TARGETS)))
        if isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)) \
                or not 0.0 < float(self.amount) < 1.0:
            raise PruneError("--amount %r is outside (0, 1): it is the fraction to remove, "
                             "strictly between 0 and 1" % (self.amount,))
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
                                 "--importance l1 or l2 (or leave it out), not %r" % self.importance)
            if int(self.iterative) != 1:
                raise PruneError("--iterative applies to structured methods only")
        return self


@dataclass(frozen=True)
class FinetuneSettings:
    """How a model is fine-tuned after pruning (and its unpruned control the same way): the
    training loop of ``training.train`` from the checkpoint's own training config with
    fine-tuning changes (``training.pruning.finetune``), then ``config`` (a YAML file) and the
    ``key=value`` ``overrides``; distilled from ``teacher`` (a checkpoint, an ONNX file or
    ``zoo:NAME``) if given. The length is the request's (``PruneSettings.finetune_iters``)."""
    teacher: Optional[str] = None
    config: Optional[str] = None
    overrides: Tuple[str, ...] = ()

    @classmethod
    def of(cls, teacher: Optional[str] = None, config: Optional[str] = None,
           overrides: Sequence[str] = ()) -> "FinetuneSettings":
        """The settings with ``overrides`` as a tuple (whatever sequence was given)."""
        return cls(teacher, config, tuple(overrides))

    def validate(self) -> "FinetuneSettings":
        """Raise PruneError naming the file or override that cannot be used; returns self."""
        from training.config import ConfigError, parse_overrides
        if self.config and not os.path.isfile(self.config):
            raise PruneError("--config %s does not exist" % self.config)
        try:
            parse_overrides(list(self.overrides))
        except ConfigError as e:
            raise PruneError(str(e))
        from lpcv_segmentation.zoo import ZooError, resolve_model_path
        try:
            teacher = resolve_model_path(self.teacher)  # zoo:NAME -> the cached file
        except ZooError as e:
            raise PruneError("--teacher: %s" % e)
        if teacher and teacher.lower().endswith(".onnx"):
            if not os.path.isfile(teacher):
                raise PruneError("--teacher: %s does not exist" % teacher)
        elif teacher:
            from lpcv_segmentation.model.checkpoint import CheckpointError, read_metadata
            try:
                read_metadata(teacher)
            except CheckpointError as e:
                raise PruneError("--teacher: %s" % e)
        return self


def check_inputs(checkpoint: str, data_dir: Optional[str]) -> Dict[str, object]:
    """Check the model and dataset of a request before any work; return the checkpoint's
    metadata. Raises PruneError naming the file or folder."""
    from lpcv_segmentation.model.checkpoint import CheckpointError, read_metadata
    try:
        meta = read_metadata(checkpoint)
    except CheckpointError as e:
        raise PruneError("--checkpoint: %s" % e)
    from training.data import DatasetError, find_pairs
    if not data_dir:
        raise PruneError("--data is needed (calibration and fine-tuning read it)")
    try:
        find_pairs(data_dir, "train")
    except DatasetError as e:
        raise PruneError("--data: %s" % e)
    return meta
