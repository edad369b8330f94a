"""One pruning request end to end: the K-step schedule, fine-tuning after each step, the files.

``prune_schedule_step`` carries out one step of the schedule on a model in place (structured or
unstructured, a sparsity or a MACs target); ``prune_and_finetune`` is the whole request of
``python -m training prune``: check every input, prune in K steps with fine-tuning after each,
and write RUN_DIR/best.safetensors, last.safetensors (with ``training.pruning`` in their
metadata) and prune.json.
"""
import os
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from lpcv_segmentation.core.fileio import write_json_atomic
from training.pruning.finetune import finetune_checkpoint
from training.pruning.settings import (GRADIENT_IMPORTANCES, UNSTRUCTURED, FinetuneSettings,
                                       PruneSettings, check_inputs)
from training.pruning.structured import (UnitsToKeep, heads_to_remove, prune_by_ratio,
                                         ratio_for_macs)
from training.pruning.units import (Batch, calibration_batch, check_method_applies, describe,
                                    width_to_keep)
from training.pruning.unstructured import apply_zero_masks, prune_unstructured, zero_masks

__all__ = ["PRUNED", "step_targets", "relative_ratio", "prune_schedule_step", "pruning_record",
           "prune_and_finetune"]

PRUNED = "pruned.safetensors"  # in RUN_DIR: the model right after pruning, before fine-tuning


def step_targets(settings: PruneSettings) -> List[float]:
    """Cumulative amount after each of the K iterative steps (A k / K)."""
    k = int(settings.iterative)
    return [float(settings.amount) * (i + 1) / k for i in range(k)]


def relative_ratio(done: float, goal: float) -> float:
    """Fraction of what is left after removing ``done`` to remove now to reach ``goal``
    (both fractions of the original). A hair below exact so that flooring keeps the count."""
    return max(0.0, 1.0 - (1.0 - goal) / (1.0 - done) - 1e-6)


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


def prune_schedule_step(model: nn.Module, settings: PruneSettings,
                        calib: Optional[Batch] = None, step: int = 0, done: float = 0.0, *,
                        original: Dict[str, Any]) -> Dict[str, Any]:
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
        prune_by_ratio(model, settings.method, ratio, settings.importance, settings.allocation,
                       calib, settings.round_to)
    else:
        ratio = relative_ratio(done, goal)
        keep = {name: heads - heads_to_remove(heads, goal)
                for name, heads in original["heads"].items()}
        widths = {name: width_to_keep(width, goal, settings.round_to)
                  for name, width in original["widths"].items()}
        prune_by_ratio(model, settings.method, ratio, settings.importance, settings.allocation,
                       calib, settings.round_to, UnitsToKeep(heads=keep, widths=widths))
    info = describe(model)
    return {"step": step + 1, "amount": goal, "ratio": ratio, "params": info["params"],
            "gmacs": info["gmacs"], "heads": sum(info["heads"].values())}


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


def prune_and_finetune(checkpoint: str, data_dir: str, out_dir: str, settings: PruneSettings,
                       recipe: FinetuneSettings = FinetuneSettings(),
                       progress: bool = True) -> Dict[str, Any]:
    """Prune ``checkpoint`` as ``settings`` ask, fine-tune after each step as ``recipe`` says,
    and write ``out_dir``/best and last .safetensors plus ``prune.json``. Every input is
    checked before any work. Returns the report (prune.json's content)."""
    from lpcv_segmentation.model.checkpoint import load_checkpoint, save_checkpoint
    settings.validate()
    check_inputs(checkpoint, data_dir)
    recipe.validate()
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
        record = prune_schedule_step(model, settings, calib, step, done, original=before)
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
            model = finetune_checkpoint(pruned_path, meta, data_dir, step_dir, per_step_iters,
                                        recipe, masks)
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
