"""Fine-tuning after pruning: the project's training loop, started from a (pruned) checkpoint.

The run's config is layered: the defaults; the checkpoint's own training config (its data and
model settings); the fine-tuning changes (start from the checkpoint, the requested length,
lr x FINETUNE_LR_SCALE, warm-up and validation fitted into that length, the teacher only if
given); then ``FinetuneSettings.config`` and its ``key=value`` overrides.
"""
import os
from typing import Any, Dict, Optional

import torch
from torch import nn

from training.pruning.settings import FinetuneSettings
from training.pruning.unstructured import apply_zero_masks, keep_zeros_during_training

__all__ = ["FINETUNE_LR_SCALE", "finetune_config", "finetune_checkpoint", "finetune_unpruned"]

# Half the learning rate the model was trained with: a tenth recovered less after pruning
# (docs/compression.md)
FINETUNE_LR_SCALE = 0.5


def finetune_config(meta: Dict[str, Any], init: str, iters: int,
                    recipe: FinetuneSettings) -> Dict[str, Any]:
    """The training config that fine-tunes ``init`` (whose metadata is ``meta``) for
    ``iters`` iterations as ``recipe`` says (see the module doc for its layers)."""
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
        "teacher": recipe.teacher,
        "fm_weight": base.get("fm_weight", 0.0) if recipe.teacher else 0.0,
        "fg_weight": base.get("fg_weight", 0.0) if recipe.teacher else 0.0,
    })
    return config_lib.load_config(recipe.config, list(recipe.overrides), base=base)


def finetune_checkpoint(init: str, meta: Dict[str, Any], data_dir: str, out_dir: str, iters: int,
                        recipe: FinetuneSettings,
                        masks: Optional[Dict[str, torch.Tensor]] = None) -> nn.Module:
    """Fine-tune the checkpoint ``init`` with the project's training loop (training.train's
    Trainer: same losses, distillation, validation and best/last checkpoints) into
    ``out_dir``; returns the model as it ends. ``masks`` keep unstructured zeros at zero."""
    from training.distributed import cleanup_distributed, init_distributed
    from training.train import Trainer
    config = finetune_config(meta, init, iters, recipe)
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


def finetune_unpruned(checkpoint: str, data: str, out_dir: str, iters: int,
                      recipe: FinetuneSettings) -> str:
    """Fine-tune the unpruned model as a pruned one would be (the control a pruned model is
    judged against); returns the checkpoint to measure (``checkpoint`` itself when ``iters``
    is 0)."""
    if iters <= 0:
        return checkpoint
    from lpcv_segmentation.model.checkpoint import read_metadata
    finetune_checkpoint(os.path.abspath(checkpoint), read_metadata(checkpoint), data, out_dir,
                        iters, recipe)
    return os.path.join(out_dir, "best.safetensors")
