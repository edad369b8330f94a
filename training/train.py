"""Train a UPerNet segmentation model, optionally distilled from a frozen teacher.

  python -m training train --config training/configs/student.yaml --data DIR --out RUN_DIR \\
      [--teacher CKPT] [--resume] [key=value ...]

One plain loop in the spirit of torchvision's segmentation reference scripts: a config of flat
keys (training/config.py; any key can be overridden as key=value), OHEM or plain
cross-entropy, AdamW or SGD with linear warm-up and poly decay, validation every
``eval_every`` iterations with the project's one metric (SegmentationMetrics), and in RUN_DIR:

  config.yaml        the effective configuration
  metrics.csv        one row per validation: losses (mean since the last row), lr, mIoU, Dice, ...
  best.safetensors   the checkpoint with the best validation mIoU so far
  last.safetensors   the latest checkpoint (model + metadata; what export/prune/evaluate read)
  last.state.pt      everything else a resume needs (optimiser, scheduler, iteration, RNG
                     states, data position), plus a copy of the weights so that this one file
                     is always a consistent resume point

--resume continues RUN_DIR from last.state.pt with the run's saved config.yaml (key=value
overrides still apply, e.g. iters=... to train longer); the result equals an uninterrupted run.

With a teacher (--teacher CKPT or teacher=CKPT) the student also learns from the teacher's
logits (MSE, kd_mse_weight; KL with temperature, kd_kl_weight) and encoder features
(mimicking at fm_stages, fm_weight; masked generation at fg_stages, fg_weight). A teacher
given as an ONNX file is run through ONNX Runtime and distils its logits only.

Under ``torchrun --nproc_per_node=N -m training train ...`` each process trains on its share
of every epoch (batch_size is per process), gradients are averaged (DDP; gloo on the CPU,
NCCL on GPUs), and only rank 0 writes files.
"""
import argparse
import csv
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from lpcv_segmentation.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, check_class_table
from lpcv_segmentation.model.cost import count_params
from lpcv_segmentation.core.fileio import atomic_path
from lpcv_segmentation.core.formatting import fmt
from lpcv_segmentation.core.metrics import SegmentationMetrics
from lpcv_segmentation.model.segmodel import SegModel, build_model, check_input_size
from lpcv_segmentation.runtime.segmenter import IMAGENET_MEAN, IMAGENET_STD, RuntimeConfigError, postprocess
from lpcv_segmentation.zoo import ZooError, resolve_model_path
from training import config as config_lib
from training.config import ConfigError
from training.data import DatasetError, EvalTransform, SegmentationDataset, TrainTransform
from training.distributed import (DistContext, ResumableBatchSampler, SeededSamples,
                                  all_gather_objects, all_reduce_mean, barrier,
                                  broadcast_buffers, cleanup_distributed, init_distributed,
                                  resolve_device)
from training.losses import (FeatureDistillation, LogitKL, LogitMSE, build_supervised_loss)
from training.onnx_teacher import OnnxTeacher, is_onnx_path
from training.pretrained import EncoderWeights, WeightsError, resolve_encoder_weights

CHECKPOINT_EXT = ".safetensors"
LAST = "last" + CHECKPOINT_EXT
BEST = "best" + CHECKPOINT_EXT
STATE = "last.state.pt"
METRICS_CSV = "metrics.csv"
CONFIG_YAML = "config.yaml"
STATE_FORMAT = "lpcv-train-state/1"

# loss term -> config key of its weight ("sup" always has weight 1)
LOSS_WEIGHTS: Dict[str, Optional[str]] = {
    "sup": None,
    "kd_mse": "kd_mse_weight",
    "kd_kl": "kd_kl_weight",
    "fm": "fm_weight",
    "fg": "fg_weight",
}


class TrainingError(RuntimeError):
    """A run that cannot start or go on (bad teacher, nothing to resume, non-finite loss)."""


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config, e.g. training/configs/student.yaml "
                        "(with --resume the run's saved RUN_DIR/config.yaml is used instead)")
    parser.add_argument("--data", required=True,
                        help="dataset root in the LPCV layout (IMG/<split>, GT[_Updated]/<split>)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run folder for checkpoints, metrics.csv and config.yaml")
    parser.add_argument("--teacher", metavar="CKPT",
                        help="distil from this teacher: a checkpoint, or an ONNX file or "
                        "zoo:NAME (logit distillation through ONNX Runtime) (same as "
                        "teacher=CKPT)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys, e.g. iters=200 lr=1e-3 fm_stages=[0,1]")


def main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + (["teacher=%s" % args.teacher] if args.teacher else [])
    try:
        config = resolve_config(args.config, overrides, args.out, args.resume)
        return train(config, args.data, args.out, args.resume)
    except (ConfigError, TrainingError, DatasetError, CheckpointError, WeightsError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------
# Configuration of a new or resumed run
# --------------------------------------------------------------------------------------
def resolve_config(config_path: Optional[str], overrides: Sequence[str],
                   run_dir: Union[str, Path], resume: bool = False) -> Dict[str, Any]:
    """The effective config of a run: ``config_path`` with the ``key=value`` ``overrides``
    for a new run (refused when ``run_dir`` already holds one); for ``resume``, the run's saved
    config.yaml with the overrides (``config_path`` is not read again)."""
    run_dir = Path(run_dir)
    if resume:
        saved = run_dir / CONFIG_YAML
        if not saved.is_file():
            raise TrainingError("--resume: %s does not exist; nothing to resume in %s"
                                % (saved, run_dir))
        base = config_lib.read_yaml(str(saved))
        base["stop_after"] = None  # a one-off request of the interrupted invocation
        config = config_lib.load_config(None, overrides, base=base)
        if os.environ.get("RANK", "0") == "0":
            if config_path:
                print("resuming with %s (--config %s is not read again)" % (saved, config_path),
                      file=sys.stderr)
            for change in config_lib.diff(base, config):
                print("resume override: %s" % change, file=sys.stderr)
        return config
    if not config_path:
        raise ConfigError("--config is required for a new run (e.g. training/configs/student.yaml)")
    if (run_dir / STATE).exists():
        raise TrainingError("%s already holds a run (%s); pass --resume to continue it or "
                            "choose another --out" % (run_dir, STATE))
    return config_lib.load_config(config_path, overrides)


# --------------------------------------------------------------------------------------
# Model, teacher and the module DDP wraps
# --------------------------------------------------------------------------------------
def create_model(config: Dict[str, Any],
                 weights: Optional[EncoderWeights] = None) -> SegModel:
    """A new model from the config, or the model of ``init`` (e.g. a pruned checkpoint).
    ``weights``: the resolved ``encoder_weights`` (resolved here when not given)."""
    if config["init"]:
        model, meta = load_checkpoint(config["init"])
        for key in ("arch", "decoder_channels", "input_size"):
            config[key] = meta[key]  # the checkpoint decides the model
        config["decoder"] = model.decoder_name
        return model.train()
    try:
        check_input_size(config["arch"], config["input_size"])
        if weights is None:
            weights = resolve_encoder_weights(config["arch"], config["encoder_weights"])
        return build_model(config["arch"], NUM_CLASSES, config["decoder_channels"],
                           config["input_size"], weights.path if weights else None,
                           config["decoder"])
    except ValueError as exc:
        raise ConfigError("cannot build the model: %s" % exc)


Teacher = Union[SegModel, OnnxTeacher]


def load_teacher(path: str, device: torch.device) -> Teacher:
    """The frozen teacher: eval mode, no gradients; refuses a model of other classes. A
    ``.onnx`` file becomes an OnnxTeacher (logits through ONNX Runtime); ``zoo:NAME`` is the
    cached zoo model."""
    try:
        path = resolve_model_path(path)
    except ZooError as exc:
        raise TrainingError("teacher: %s" % exc)
    if is_onnx_path(path):
        if not os.path.isfile(path):
            raise TrainingError("teacher ONNX file %s does not exist" % path)
        try:
            return OnnxTeacher(path, device, IMAGENET_MEAN, IMAGENET_STD)
        except (RuntimeConfigError, ValueError) as exc:
            raise TrainingError("teacher ONNX file %s: %s" % (path, exc))
    try:
        teacher, meta = load_checkpoint(path, device=str(device))
    except CheckpointError as exc:
        raise TrainingError("teacher checkpoint: %s" % exc)
    if int(meta["num_classes"]) != NUM_CLASSES:
        raise TrainingError("teacher checkpoint %s predicts %s classes, the student %d"
                            % (path, meta["num_classes"], NUM_CLASSES))
    try:
        check_class_table(meta.get("classes") or [])
    except ValueError as exc:
        raise TrainingError("teacher checkpoint %s: %s" % (path, exc))
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_forward(teacher: Teacher, images: torch.Tensor,
                    out_hw: Sequence[int]) -> Dict[str, Any]:
    """Teacher logits at ``out_hw`` and its encoder features (None for an ONNX teacher). A
    teacher built for one input size (Swin's windows, an ONNX file) sees the batch resized to
    that size; the losses resize its outputs back to the student's sizes."""
    if isinstance(teacher, OnnxTeacher):
        return {"logits": teacher.logits(images, out_hw), "encoder": None}
    size = teacher.input_size
    if getattr(teacher, "fixed_input_size", False) and tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    out = teacher.forward_features(images)
    logits = F.interpolate(out["logits"], size=tuple(out_hw), mode="bilinear",
                           align_corners=False)
    return {"logits": logits, "encoder": out["encoder"]}


class StudentStep(nn.Module):
    """What one training step differentiates: the student plus the trainable feature
    distillation heads, returning the raw (unweighted) loss terms. DDP wraps this module so
    that the heads' gradients are averaged too."""

    def __init__(self, model: SegModel, supervised: nn.Module, kd_mse: Optional[nn.Module],
                 kd_kl: Optional[nn.Module], features: Optional[FeatureDistillation]) -> None:
        super().__init__()
        self.model = model
        self.supervised = supervised
        self.kd_mse = kd_mse
        self.kd_kl = kd_kl
        self.features = features

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                teacher: Optional[Dict[str, Any]] = None) -> Dict[str, torch.Tensor]:
        out = self.model.forward_features(images)
        logits = F.interpolate(out["logits"], size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
        terms = {"sup": self.supervised(logits.float(), labels)}
        if teacher is not None:
            if self.kd_mse is not None:
                terms["kd_mse"] = self.kd_mse(logits.float(), teacher["logits"].float(), labels)
            if self.kd_kl is not None:
                terms["kd_kl"] = self.kd_kl(logits.float(), teacher["logits"].float(), labels)
            if self.features is not None:
                terms.update(self.features([f.float() for f in out["encoder"]],
                                           [f.float() for f in teacher["encoder"]]))
        return terms


def build_step(model: SegModel, teacher: Optional[Teacher],
               config: Dict[str, Any]) -> Tuple[StudentStep, List[str]]:
    """The StudentStep for this config and the names of its active loss terms."""
    distil = teacher is not None
    kd_mse = (LogitMSE(config["kd_normalize"], config["kd_pixels"])
              if distil and config["kd_mse_weight"] > 0 else None)
    kd_kl = (LogitKL(config["kd_temperature"], config["kd_pixels"])
             if distil and config["kd_kl_weight"] > 0 else None)
    features = None
    fm_stages = config["fm_stages"] if config["fm_weight"] > 0 else []
    fg_stages = config["fg_stages"] if config["fg_weight"] > 0 else []
    if distil and (fm_stages or fg_stages):
        if isinstance(teacher, OnnxTeacher):
            raise TrainingError(
                "feature distillation (fm_weight/fg_weight) needs the teacher's encoder "
                "features, and the ONNX teacher %s gives logits only: set fm_weight=0 "
                "fg_weight=0 for logit distillation, or give a .safetensors teacher"
                % config["teacher"])
        try:
            features = FeatureDistillation(model.encoder_channels, teacher.encoder_channels,
                                           fm_stages, fg_stages, config["fg_mask_ratio"])
        except ValueError as exc:
            raise TrainingError("feature distillation from %s: %s" % (config["teacher"], exc))
    step = StudentStep(model, build_supervised_loss(config), kd_mse, kd_kl, features)
    active = ["sup"]
    active += ["kd_mse"] if kd_mse is not None else []
    active += ["kd_kl"] if kd_kl is not None else []
    active += ["fm"] if fm_stages and features is not None else []
    active += ["fg"] if fg_stages and features is not None else []
    return step, active


# --------------------------------------------------------------------------------------
# Optimiser and schedule
# --------------------------------------------------------------------------------------
def build_optimizer(module: nn.Module, config: Dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on norms and biases (timm's parameter groups)."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(module, config["weight_decay"])
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=config["lr"], momentum=config["momentum"])
    return torch.optim.AdamW(groups, lr=config["lr"])


def lr_factor(iteration: int, iters: int, warmup_iters: int, warmup_factor: float,
              power: float) -> float:
    """Poly decay ``(1 - it/iters)^power``, times a linear warm-up from ``warmup_factor``."""
    factor = max(0.0, 1.0 - iteration / float(iters)) ** power
    if iteration < warmup_iters:
        factor *= warmup_factor + (1.0 - warmup_factor) * iteration / float(warmup_iters)
    return factor


# A warm-up may take at most this fraction of the run; a longer one is fitted to
# WARMUP_FIT_FRACTION of it (the fine-tuning runs of prune.py use the same tenth).
MAX_WARMUP_FRACTION = 0.25
WARMUP_FIT_FRACTION = 0.1


def fit_schedule(config: Dict[str, Any]) -> List[str]:
    """Fit a schedule that would silently fail into ``iters``, in place, and return one note
    per change: a warm-up longer than a quarter of the run (the learning rate would never
    reach ``lr``) becomes a tenth of it; ``eval_every`` / ``checkpoint_every`` beyond
    ``iters`` (no validation or checkpoint until the end) become ``iters``."""
    notes = []
    iters = int(config["iters"])
    warmup = int(config["warmup_iters"])
    if warmup > iters * MAX_WARMUP_FRACTION:
        fitted = int(iters * WARMUP_FIT_FRACTION)
        peak = max(lr_factor(i, iters, warmup, config["warmup_factor"], config["poly_power"])
                   for i in range(iters))
        notes.append("warmup_iters=%d is more than a quarter of iters=%d (the learning rate "
                     "would peak at %.2f x lr): using warmup_iters=%d, a tenth of the run"
                     % (warmup, iters, peak, fitted))
        config["warmup_iters"] = fitted
    for key in ("eval_every", "checkpoint_every"):
        if config[key] is not None and int(config[key]) > iters:
            notes.append("%s=%d is beyond iters=%d: using %s=%d (once, at the end)"
                         % (key, config[key], iters, key, iters))
            config[key] = iters
    return notes


def build_scheduler(optimizer: torch.optim.Optimizer,
                    config: Dict[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    # A closure (not an object) so that LambdaLR's state holds only the step count: a resumed
    # run with iters=... extended then follows the new schedule.
    def factor(iteration: int) -> float:
        return lr_factor(iteration, config["iters"], config["warmup_iters"],
                         config["warmup_factor"], config["poly_power"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def build_datasets(data: str, config: Dict[str, Any],
                   ctx: DistContext) -> Tuple[SegmentationDataset, SegmentationDataset]:
    """Train and val splits, every file checked before training starts. Training images are
    rescaled around ``input_size`` (base_size), so that at scale 1 objects have the size the
    model sees them at in validation and on the drone, whatever the crop size."""
    transform = TrainTransform(config["crop_size"], (config["scale_min"], config["scale_max"]),
                               base_size=config["input_size"])
    train_set = SegmentationDataset(data, config["train_split"], transform=transform,
                                    validate=True, progress=ctx.is_main)
    val_set = SegmentationDataset(
        data, config["val_split"],
        transform=EvalTransform(config["input_size"], resize_label=False),
        validate=True, progress=ctx.is_main)
    return train_set, val_set


def collate_eval(batch: List[Tuple[torch.Tensor, torch.Tensor]]
                 ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Images share the input size; labels keep their own sizes."""
    return torch.stack([image for image, _ in batch]), [label for _, label in batch]


def train_loader(train_set: SegmentationDataset, config: Dict[str, Any], ctx: DistContext,
                 start_iteration: int) -> Tuple[DataLoader, ResumableBatchSampler]:
    sampler = ResumableBatchSampler(len(train_set), config["batch_size"], config["seed"],
                                    ctx.rank, ctx.world_size, start_iteration)
    loader = DataLoader(SeededSamples(train_set, config["seed"]), batch_sampler=sampler,
                        num_workers=config["workers"], pin_memory=ctx.device.type == "cuda",
                        # its own generator: DataLoader must not draw from the global RNG,
                        # whose state is part of what a resumed run restores
                        generator=torch.Generator())
    return loader, sampler


def val_loader(val_set: SegmentationDataset, config: Dict[str, Any],
               ctx: DistContext) -> DataLoader:
    count = len(val_set)
    if config["max_eval_images"]:
        count = min(count, config["max_eval_images"])
    shard = Subset(val_set, list(range(ctx.rank, count, ctx.world_size)))
    return DataLoader(shard, batch_size=config["batch_size"], shuffle=False,
                      num_workers=config["workers"], collate_fn=collate_eval,
                      generator=torch.Generator())


@torch.no_grad()
def validate(model: Union[SegModel, OnnxTeacher], loader: DataLoader, ctx: DistContext,
             amp: Any = None) -> Dict[str, Any]:
    """SegmentationMetrics over this rank's share of the val split, merged over ranks.
    Predictions are made as the runtime's Segmenter makes them (the same resize of the
    image, logits at the input size, and ``runtime.postprocess`` back to the label's size),
    so this figure is the one ``python -m training evaluate`` reports for the checkpoint.
    A teacher (of another input size, or ONNX) is scored through ``teacher_forward``."""
    student = isinstance(model, SegModel) and not getattr(model, "fixed_input_size", False)
    was_training = model.training if isinstance(model, nn.Module) else False
    model.eval()
    metrics = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
    for images, labels in loader:
        images = images.to(ctx.device, non_blocking=True)
        with amp() if amp is not None else nullcontext():
            logits = (model(images, full_res=True) if student else
                      teacher_forward(model, images, images.shape[-2:])["logits"])
        logits = logits.float().cpu().numpy()
        for i, label in enumerate(labels):
            pred, _ = postprocess(logits[i:i + 1], tuple(label.shape[-2:]))
            metrics.update(pred, label.numpy())
    if isinstance(model, nn.Module):
        model.train(was_training)
    merged = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
    for part in all_gather_objects(ctx, metrics):
        merged.merge(part)
    return merged.summary()


# --------------------------------------------------------------------------------------
# Resume state: RNGs, atomic files
# --------------------------------------------------------------------------------------
def capture_rng() -> Dict[str, Any]:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng(state: Dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``:
    a reader (or a run killed at any moment) sees the old file or the new one, never half."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files a killed run left behind (they never replaced anything)."""
    for pattern in ("*.tmp.*", "*.tmp-*"):
        for path in run_dir.glob(pattern):
            path.unlink()


def read_state(run_dir: Path, device: torch.device) -> Dict[str, Any]:
    path = run_dir / STATE
    if not path.is_file() or not (run_dir / LAST).is_file():
        raise TrainingError("--resume: %s needs %s and %s; nothing to resume"
                            % (run_dir, LAST, STATE))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; atomic writes make this rare
        raise TrainingError("--resume: %s cannot be read: %s" % (path, exc))
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError("--resume: %s is not a training state (%s)" % (path, STATE_FORMAT))
    return state


# --------------------------------------------------------------------------------------
# Logging: metrics.csv (+ TensorBoard when installed)
# --------------------------------------------------------------------------------------
def csv_columns(active: Sequence[str]) -> List[str]:
    return (["iteration", "epoch", "time_s", "lr", "loss"] + list(active)
            + ["miou", "dice", "pixel_acc"] + ["iou_%s" % name for name in CLASS_NAMES])


class MetricsLog:
    """Appends one row per validation to RUN_DIR/metrics.csv (rank 0 only)."""

    def __init__(self, run_dir: Path, columns: List[str], resume_iteration: int) -> None:
        self.path = run_dir / METRICS_CSV
        self.columns = columns
        rows: List[Dict[str, str]] = []
        if self.path.is_file() and resume_iteration > 0:
            with open(self.path, newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.DictReader(handle)
                        if int(r["iteration"]) <= resume_iteration]  # drop rows past the resume point
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    def scalars(self, iteration: int, values: Dict[str, float], prefix: str) -> None:
        if self.tensorboard is not None:
            for key, value in values.items():
                if value is not None:
                    self.tensorboard.add_scalar("%s/%s" % (prefix, key), value, iteration)

    def append(self, row: Dict[str, Any]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class ProgressWindow:
    """Loss sums over the steps since the progress bar's last update, and their speed."""

    def __init__(self, names: List[str], images_per_step: int) -> None:
        self.names = names
        self.images_per_step = images_per_step
        self.sums = torch.zeros(len(names), dtype=torch.float64)
        self.count = 0
        self.start = time.time()

    def add(self, values: torch.Tensor) -> None:
        self.sums += values
        self.count += 1

    def flush(self) -> Tuple[Dict[str, float], float]:
        """The means by name and images per second since the last flush; starts anew."""
        elapsed = max(time.time() - self.start, 1e-9)
        means = dict(zip(self.names, (self.sums / max(self.count, 1)).tolist()))
        images_per_s = self.count * self.images_per_step / elapsed
        self.sums.zero_()
        self.count, self.start = 0, time.time()
        return means, images_per_s


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
class Trainer:
    """State of one run; ``fit`` is the loop.

    ``Trainer(config, data, run_dir).fit()`` trains in this process: ``config`` is the full
    effective config (``training.config.load_config``, or ``resolve_config`` as the command
    does; its ``teacher`` key names the teacher, ``init`` a checkpoint to start from), ``data``
    the dataset root (LPCV layout: train and val splits), ``run_dir`` the folder it writes
    (config.yaml, metrics.csv, best/last checkpoints, last.state.pt). ``ctx``: the process
    group (default: one process on ``config["device"]``; under torchrun pass
    ``init_distributed``'s). ``resume``: continue ``run_dir`` from its last.state.pt. After
    ``fit``, ``model`` holds the trained model.
    """

    def __init__(self, config: Dict[str, Any], data: str, run_dir: Union[str, Path],
                 ctx: Optional[DistContext] = None, resume: bool = False) -> None:
        ctx = ctx if ctx is not None else DistContext(device=resolve_device(config["device"]))
        self.config = config
        self.ctx = ctx
        self.run_dir = Path(run_dir)
        self.data = os.path.abspath(data)
        self.device = ctx.device
        self.start_time = time.time()
        for note in fit_schedule(config):
            self.log("note: " + note)

        seed = config["seed"]
        random.seed(seed + ctx.rank)
        np.random.seed(seed + ctx.rank)
        torch.manual_seed(seed + ctx.rank)

        # before the datasets are read: a missing weights file stops the run at once
        weights = (None if resume or config["init"] else
                   resolve_encoder_weights(config["arch"], config["encoder_weights"]))
        self.train_set, self.val_set = build_datasets(data, config, ctx)
        state = read_state(self.run_dir, self.device) if resume else None
        if state is not None:
            self.model, last_meta = load_checkpoint(str(self.run_dir / LAST))
            self.model.train()
            self.encoder_weights = (last_meta.get("training") or {}).get("encoder_weights")
        elif config["init"]:
            self.model = create_model(config)
            self.encoder_weights = {"source": "init", "path": os.path.abspath(config["init"])}
        else:
            self.encoder_weights = weights.record() if weights else None
            self.model = create_model(config, weights)
        if self.model.fixed_input_size and config["crop_size"] != self.model.input_size:
            raise ConfigError("%s takes %dx%d input only: set crop_size=%d"
                              % (self.model.arch, self.model.input_size, self.model.input_size,
                                 self.model.input_size))
        self.teacher = load_teacher(config["teacher"], self.device) if config["teacher"] else None
        self.step_module, self.active = build_step(self.model, self.teacher, config)
        self.weights = {term: (1.0 if LOSS_WEIGHTS[term] is None else config[LOSS_WEIGHTS[term]])
                        for term in self.active}
        self.step_module.to(self.device)
        if ctx.distributed and config["sync_bn"]:
            self.step_module = nn.SyncBatchNorm.convert_sync_batchnorm(self.step_module)
            self.model = self.step_module.model
        self.wrapped: nn.Module = self.step_module
        if ctx.distributed:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda"
                else None)
        self.optimizer = build_optimizer(self.step_module, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.amp_dtype = None
        if config["amp"] and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.iteration = 0
        self.before_distilling: Optional[Dict[str, Any]] = None
        self.best_miou: Optional[float] = None
        self.last_summary: Optional[Dict[str, Any]] = None
        self.elapsed_before = 0.0  # training seconds of earlier invocations of this run
        # loss sums since the last metrics.csv row, [total, *active] (kept across a resume)
        self.loss_sums = torch.zeros(1 + len(self.active), dtype=torch.float64)
        self.loss_count = 0
        if state is not None:
            self._restore(state)

    # -- resume ------------------------------------------------------------------------
    def _restore(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.step_module.features is not None:
            if state.get("features") is None:
                raise TrainingError("--resume: the run had no feature distillation heads, the "
                                    "config now asks for them; start a new run")
            self.step_module.features.load_state_dict(state["features"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_miou = state.get("best_miou")
        self.before_distilling = state.get("before_distilling")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        if state.get("loss_sums") is not None and len(state["loss_sums"]) == len(self.loss_sums):
            self.loss_sums = state["loss_sums"].double()
            self.loss_count = int(state["loss_count"])
        rng_states = state["rng"]
        if len(rng_states) != self.ctx.world_size:
            self.log("note: the run used %d processes, this resume %d: the data order and "
                     "random draws differ from an uninterrupted run"
                     % (len(rng_states), self.ctx.world_size))
        restore_rng(rng_states[self.ctx.rank % len(rng_states)])
        self.log("resumed %s at iteration %d" % (self.run_dir, self.iteration))

    # -- small helpers -----------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.start_time

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            from tqdm import tqdm
            tqdm.write(message, file=sys.stderr)

    def amp(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def training_info(self) -> Dict[str, Any]:
        """The ``training`` entry of the checkpoint metadata."""
        summary = self.last_summary or {}
        return {
            "config": dict(self.config),
            "data": self.data,
            "iteration": self.iteration,
            "iters": self.config["iters"],
            "teacher": self.config["teacher"],
            "encoder_weights": self.encoder_weights,
            "before_distilling": self.before_distilling,
            "world_size": self.ctx.world_size,
            "metrics": {k: summary.get(k) for k in ("miou", "dice", "pixel_acc", "per_class_iou")},
            "best_miou": self.best_miou,
            "elapsed_s": round(self.elapsed(), 1),
        }

    # -- checkpoints -------------------------------------------------------------------
    def save_last(self) -> None:
        """last.safetensors, then last.state.pt; collective (every rank gives its RNG)."""
        rng_states = all_gather_objects(self.ctx, capture_rng())
        if not self.ctx.is_main:
            return
        save_checkpoint(str(self.run_dir / LAST), self.model, {"training": self.training_info()})
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
        features = self.step_module.features
        state = {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "model": cpu(self.model.state_dict()),
            "features": None if features is None else cpu(features.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_states,
            "sampler": dict(zip(("epoch", "batch"), self.sampler.position(self.iteration))),
            "best_miou": self.best_miou,
            "before_distilling": self.before_distilling,
            "world_size": self.ctx.world_size,
            "elapsed_s": self.elapsed(),
            "loss_sums": self.loss_sums.clone(),
            "loss_count": self.loss_count,
        }
        atomic_torch_save(state, self.run_dir / STATE)

    def save_best(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(str(self.run_dir / BEST), self.model,
                            {"training": self.training_info()})

    # -- one step ----------------------------------------------------------------------
    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward, loss, NaN check, backward, update. Returns the mean over ranks of
        ``[total, *active terms]`` (detached)."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with self.amp():
            teacher = (teacher_forward(self.teacher, images, labels.shape[-2:])
                       if self.teacher is not None else None)
            terms = self.wrapped(images, labels, teacher)
        total = sum(self.weights[name] * terms[name] for name in self.active)
        values = all_reduce_mean(self.ctx, torch.stack(
            [total.detach()] + [terms[name].detach() for name in self.active]).float())
        if not bool(torch.isfinite(values).all()):
            shown = ", ".join("%s=%s" % (n, float(v))
                              for n, v in zip(["loss"] + self.active, values.tolist()))
            last = self.run_dir / LAST
            kept = ("%s is left as it was" % last) if last.is_file() else "no checkpoint was written"
            raise TrainingError(
                "loss is not finite at iteration %d (%s); stopped before updating the weights; "
                "%s. Lower lr, set grad_clip, or check the data." % (self.iteration + 1, shown, kept))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.step_module.parameters(), float(self.config["grad_clip"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values

    # -- the loop ----------------------------------------------------------------------
    def fit(self) -> int:
        """Train to ``iters``: step, log, and validate-and-checkpoint on their schedules."""
        from tqdm import tqdm

        config, ctx = self.config, self.ctx
        self._prepare_run_dir()
        iters = config["iters"]
        if self.iteration >= iters:
            self.log("nothing to do: the run is at iteration %d of %d (raise iters= to go on)"
                     % (self.iteration, iters))
            return 0
        loader, self.sampler = train_loader(self.train_set, config, ctx, self.iteration)
        val = val_loader(self.val_set, config, ctx)
        metrics_log = MetricsLog(self.run_dir, csv_columns(self.active),
                                 self.iteration) if ctx.is_main else None
        self._log_start()
        if self.teacher is not None and self.iteration == 0:
            self.compare_with_teacher(val)
        window = ProgressWindow(["loss"] + self.active,
                                config["batch_size"] * ctx.world_size)
        bar = tqdm(total=iters, initial=self.iteration, disable=not ctx.is_main,
                   desc="train", unit="it", dynamic_ncols=True)
        batches: Iterator = iter(loader)
        try:
            while self.iteration < iters:
                images, labels = next(batches)
                lr = self.optimizer.param_groups[0]["lr"]
                values = self.step(images, labels).double().cpu()
                self.iteration += 1
                self.loss_sums += values
                self.loss_count += 1
                window.add(values)
                bar.update(1)
                if window.count >= (config["log_every"] or 1) or self.iteration == iters:
                    self.log_progress(bar, window, lr, metrics_log)
                if self.validate_and_checkpoint(val, lr, metrics_log):
                    self.log("stopped after iteration %d (stop_after); continue with --resume"
                             % self.iteration)
                    return 0
        finally:
            bar.close()
            if metrics_log is not None:
                metrics_log.close()
            del batches
        self._finish()
        return 0

    def _prepare_run_dir(self) -> None:
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir)
            config_lib.save_config(self.config, str(self.run_dir / CONFIG_YAML))
        barrier(self.ctx)

    def _log_start(self) -> None:
        ctx = self.ctx
        self.log("training %s (%.2fM params) on %s: %d train / %d val images, %d process%s, "
                 "device %s, losses %s"
                 % (self.model.arch, count_params(self.model) / 1e6, self.data,
                    len(self.train_set), len(self.val_set), ctx.world_size,
                    "es" if ctx.distributed else "", self.device,
                    " + ".join("%g*%s" % (self.weights[t], t) for t in self.active)))

    def compare_with_teacher(self, val: DataLoader) -> None:
        """The teacher's and the student's val mIoU before distilling, with a warning when
        the teacher is not better (it then has nothing to teach the student)."""
        teacher = validate(self.teacher, val, self.ctx, self.amp)["miou"]
        student = validate(self.model, val, self.ctx, self.amp)["miou"]
        self.before_distilling = {"teacher_miou": teacher, "student_miou": student}
        self.log("before distilling: val mIoU teacher %s, student %s"
                 % (fmt(teacher), fmt(student)))
        if teacher is not None and student is not None and teacher <= student:
            self.log("warning: the teacher (val mIoU %s) is not better than the student (%s): "
                     "distilling from it may hold the student back (kd_pixels=%s says where "
                     "it teaches); use a stronger teacher or train without one"
                     % (fmt(teacher), fmt(student), self.config["kd_pixels"]))

    # -- logging -----------------------------------------------------------------------
    def log_progress(self, bar: Any, window: "ProgressWindow", lr: float,
                     metrics_log: Optional["MetricsLog"]) -> None:
        """The progress bar's loss means since its last update, and the same to TensorBoard."""
        means, images_per_s = window.flush()
        postfix = {n: "%.4f" % v for n, v in means.items()}
        postfix.update(lr="%.2e" % lr, img_s="%.3g" % images_per_s)
        bar.set_postfix(postfix, refresh=False)
        if metrics_log is not None:
            metrics_log.scalars(self.iteration, dict(means, lr=lr), "train")

    # -- validate and checkpoint -------------------------------------------------------
    def validate_and_checkpoint(self, val: DataLoader, lr: float,
                                metrics_log: Optional["MetricsLog"]) -> bool:
        """Validate every ``eval_every`` iterations and at the end (best.safetensors when
        mIoU improves, a metrics.csv row), write last every ``checkpoint_every``, at each
        validation and at ``stop_after``. Returns True when the run stops here."""
        config, ctx = self.config, self.ctx
        iters = config["iters"]
        evaluate_now = self.iteration % config["eval_every"] == 0 or self.iteration == iters
        stopping = config["stop_after"] is not None and self.iteration >= config["stop_after"]
        checkpoint_every = config["checkpoint_every"] or config["eval_every"]
        if evaluate_now:
            broadcast_buffers(ctx, self.model)
            self.record_validation(validate(self.model, val, ctx, self.amp), lr, metrics_log)
        if evaluate_now or stopping or self.iteration % checkpoint_every == 0:
            if not evaluate_now:
                broadcast_buffers(ctx, self.model)
            self.save_last()
        return stopping and self.iteration < iters

    def record_validation(self, summary: Dict[str, Any], lr: float,
                          metrics_log: Optional["MetricsLog"]) -> None:
        """best.safetensors on improvement, a metrics.csv row with the loss means since the
        last row, and a log line."""
        self.last_summary = summary
        improved = summary["miou"] is not None and (
            self.best_miou is None or summary["miou"] > self.best_miou)
        if improved:
            self.best_miou = summary["miou"]
            self.save_best()
        if metrics_log is not None:
            row = {"iteration": self.iteration,
                   "epoch": self.sampler.position(self.iteration - 1)[0],
                   "time_s": round(self.elapsed(), 2), "lr": lr}
            row.update(zip(["loss"] + self.active,
                           (self.loss_sums / max(self.loss_count, 1)).tolist()))
            row.update(miou=summary["miou"], dice=summary["dice"], pixel_acc=summary["pixel_acc"])
            row.update({"iou_%s" % k: v for k, v in summary["per_class_iou"].items()})
            metrics_log.append(row)
            metrics_log.scalars(self.iteration, {k: summary[k] for k in
                                                 ("miou", "dice", "pixel_acc")}, "val")
        self.loss_sums.zero_()
        self.loss_count = 0
        self.log("iteration %d: val mIoU %s, Dice %s, pixel acc %s%s"
                 % (self.iteration, fmt(summary["miou"]), fmt(summary["dice"]),
                    fmt(summary["pixel_acc"]), " (best)" if improved else ""))

    def _finish(self) -> None:
        ctx = self.ctx
        if self.config["save_rank_weights"] and ctx.distributed:
            from safetensors.torch import save_file
            save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                      str(self.run_dir / ("rank%d%s" % (ctx.rank, CHECKPOINT_EXT))))
        barrier(ctx)
        self.log("done: %d iterations in %.0f s; best val mIoU %s; checkpoints %s and %s"
                 % (self.config["iters"], time.time() - self.start_time, fmt(self.best_miou),
                    self.run_dir / BEST, self.run_dir / LAST))


def train(config: Dict[str, Any], data: str, run_dir: Union[str, Path],
          resume: bool = False) -> int:
    """One run of ``config`` on ``data`` into ``run_dir`` (see Trainer), in this process or,
    under torchrun, in each of its processes; returns the exit status."""
    ctx = init_distributed(config["device"])
    try:
        if ctx.device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
            # torchrun sets OMP_NUM_THREADS=1; a single CPU process may use the cores it has
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))
        return Trainer(config, data, run_dir, ctx, resume).fit()
    finally:
        cleanup_distributed()
