"""Training configuration: one flat dictionary of named keys.

A run's configuration is built in three layers, each overriding the one before:
``DEFAULTS`` below (every key that exists, with its type), a YAML file
(``training/configs/*.yaml``), and ``key=value`` overrides from the command line.
A key that is not in ``DEFAULTS`` is an error naming the key and where it came from, so a typo
never silently trains with a default. The effective configuration is written to
``RUN_DIR/config.yaml`` so a run can be repeated or resumed exactly.
"""
import difflib
import os
from typing import Any, Dict, List, Optional, Sequence, Type

import yaml

from lpcv_segmentation.core.fileio import write_yaml_atomic

# Every key a run understands, with its default. The type of the default is the type an
# override is coerced to (None means "any YAML value"). Keep in sync with docs/training.md.
DEFAULTS: Dict[str, Any] = {
    # model
    "arch": "mobilevit_xxs",         # encoder: mobilevit_xxs/xs/s, swinv2_tiny, resnet18, ...
    "decoder": "upernet",            # upernet | upernet_lite (lpcv_segmentation.model.decoders)
    "decoder_channels": 64,          # decoder width
    "input_size": 288,               # square inference size stored in the checkpoint
    "encoder_weights": None,         # imagenet (timm weights via the HF hub cache) or a file
    "init": None,                    # start from this checkpoint (e.g. a pruned model)
    # data
    "crop_size": 256,                # square training crop
    "scale_min": 0.5,                # random rescale range before the crop
    "scale_max": 2.0,
    "train_split": "train",
    "val_split": "val",
    "batch_size": 8,                 # per process (torchrun: global = batch_size * world size)
    "workers": 2,                    # DataLoader worker processes (0 = load in the main process)
    # optimisation
    "iters": 40000,
    "optimizer": "adamw",            # adamw | sgd
    "lr": 6.0e-4,
    "weight_decay": 0.01,
    "momentum": 0.9,                 # sgd only
    "warmup_iters": 1500,            # linear warm-up from lr * warmup_factor
    "warmup_factor": 1.0e-3,
    "poly_power": 1.0,               # lr * (1 - it / iters) ** poly_power after warm-up
    "grad_clip": None,               # max gradient norm, or null for none
    "amp": False,                    # bf16/fp16 autocast on CUDA
    "loss": "ohem",                  # ohem | ce
    "ohem_thresh": 0.7,              # OHEM: keep pixels whose true-class probability < thresh
    "ohem_min_kept": 100000,         # ... and at least this many pixels per batch
    # knowledge distillation (active with --teacher / teacher=CKPT)
    "teacher": None,
    "kd_mse_weight": 0.0,            # MSE between full-resolution logits (the paper's: 1.0)
    "kd_normalize": True,            # ... of standardised logits (false: the paper's raw MSE)
    "kd_pixels": "teacher_better",   # where logit KD teaches: the teacher right and surer
    "kd_kl_weight": 3.0,             # KL divergence of the teacher's and student's class
    "kd_temperature": 1.0,           # ... probabilities (docs/training.md: measured choice)
    "fm_weight": 0.0,                # feature mimicking (1x1 projection + MSE) ...
    "fm_stages": [0, 1],             # ... at these early encoder stages
    "fg_weight": 0.0,                # masked feature generation ...
    "fg_stages": [2, 3],             # ... at these later encoder stages
    "fg_mask_ratio": 0.5,            # fraction of student feature positions masked out
    # schedule of side effects
    "eval_every": 2000,              # validate (and write last/best) every N iterations
    "checkpoint_every": None,        # write last every N iterations (default: eval_every)
    "max_eval_images": None,         # validate on the first N images only (null = all)
    "log_every": 10,                 # progress-bar refresh
    "seed": 0,
    "device": "auto",                # auto | cpu | cuda | cuda:N
    "sync_bn": False,                # SyncBatchNorm under torchrun
    "stop_after": None,              # checkpoint and exit after this iteration (resumable)
    "save_rank_weights": False,      # torchrun: each rank writes RUN_DIR/rank<R>.safetensors
}

KD_PIXELS = ("all", "teacher_correct", "teacher_better")  # losses.taught_pixels
CHOICES: Dict[str, Sequence[str]] = {
    "optimizer": ("adamw", "sgd"),
    "loss": ("ohem", "ce"),
    "kd_pixels": KD_PIXELS,
}


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


# keys of earlier versions: what to write instead (a run config.yaml from before may hold them)
REPLACED = {"kd_teacher_correct_only": "kd_pixels: teacher_correct (for true) or all (for false)"}


def _check_key(key: str, origin: str) -> None:
    if key not in DEFAULTS:
        if key in REPLACED:
            hint = " (it was replaced: write %s)" % REPLACED[key]
        else:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=3)
            hint = (" (did you mean %s?)" % ", ".join(close)) if close else ""
        raise ConfigError("unknown config key %r in %s%s; known keys: %s"
                          % (key, origin, hint, ", ".join(sorted(DEFAULTS))))


def coerce(key: str, value: Any, origin: str = "override") -> Any:
    """Convert ``value`` (a string from the command line or a parsed YAML value) to the
    type of ``DEFAULTS[key]``; raise ConfigError naming the key when it does not fit."""
    default = DEFAULTS[key]
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError("%s: %s=%r is not a valid value: %s" % (origin, key, value, exc))
    if value is None or default is None:
        return value
    kind = type(default)
    if isinstance(value, str) and kind in (int, float):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it means.
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = str(value)
            choices = CHOICES.get(key)
            if choices and value not in choices:
                raise ConfigError("%s: %s=%r must be one of %s"
                                  % (origin, key, value, ", ".join(choices)))
            return value
    raise ConfigError("%s: %s=%r must be a %s (default %r)"
                      % (origin, key, value, kind.__name__, default))


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["lr=1e-3", "fm_stages=[0,1]"]`` -> ``{"lr": 0.001, "fm_stages": [0, 1]}``."""
    result: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("override %r is not of the form key=value" % item)
        _check_key(key, "command-line override %r" % item)
        result[key] = coerce(key, value, "command-line override")
    return result


def load_yaml_mapping(path: str, error: Type[Exception] = ConfigError,
                      what: str = "config file") -> Dict[str, Any]:
    """The mapping a YAML file holds ({} for an empty file). A missing file, invalid YAML or
    anything but a mapping raises ``error`` naming ``what`` and the file."""
    if not os.path.isfile(path):
        raise error("%s %s does not exist" % (what, path))
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise error("%s %s is not valid YAML: %s" % (what, path, exc))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error("%s %s must hold a mapping of key: value" % (what, path))
    return data


def read_yaml(path: str) -> Dict[str, Any]:
    """A YAML config file as a validated, typed dict (only the keys it sets)."""
    data = load_yaml_mapping(path)
    result = {}
    for key, value in data.items():
        _check_key(str(key), "config file %s" % path)
        result[str(key)] = coerce(str(key), value, "config file %s" % path)
    return result


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (),
                base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """DEFAULTS, then ``base`` (e.g. a resumed run's saved config), then the YAML file at
    ``path``, then the ``key=value`` overrides. Returns a complete, checked config."""
    config = dict(DEFAULTS)
    if base:
        for key, value in base.items():
            _check_key(key, "saved config")
            config[key] = value
    if path:
        config.update(read_yaml(path))
    config.update(parse_overrides(overrides))
    validate(config)
    return config


def validate(config: Dict[str, Any]) -> None:
    """Cross-key checks that a single key's type cannot express."""
    positive = ("decoder_channels", "input_size", "crop_size", "batch_size", "iters", "eval_every")
    for key in positive:
        if int(config[key]) <= 0:
            raise ConfigError("%s must be positive, got %r" % (key, config[key]))
    from lpcv_segmentation.model.decoders import DECODERS
    if config["decoder"] not in DECODERS:
        raise ConfigError("decoder must be one of %s, got %r" % (", ".join(DECODERS), config["decoder"]))
    if config["workers"] < 0:
        raise ConfigError("workers must be >= 0, got %r" % config["workers"])
    if not 0.0 < config["scale_min"] <= config["scale_max"]:
        raise ConfigError("need 0 < scale_min <= scale_max, got %r, %r"
                          % (config["scale_min"], config["scale_max"]))
    if not 0.0 <= config["fg_mask_ratio"] < 1.0:
        raise ConfigError("fg_mask_ratio must be in [0, 1), got %r" % config["fg_mask_ratio"])
    for key in ("checkpoint_every", "stop_after", "max_eval_images", "log_every"):
        if config[key] is not None and int(config[key]) <= 0:
            raise ConfigError("%s must be positive or null, got %r" % (key, config[key]))
    for key in ("fm_stages", "fg_stages"):
        if not all(isinstance(i, int) and i >= 0 for i in config[key]):
            raise ConfigError("%s must be a list of stage indices >= 0, got %r"
                              % (key, config[key]))


def save_config(config: Dict[str, Any], path: str) -> None:
    """Write the effective config as YAML (atomically: temporary file, then rename)."""
    write_yaml_atomic(path, config, header="# Effective configuration of this run "
                                           "(defaults + file + overrides).\n")


def diff(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Keys whose values differ, as 'key: old -> new' lines (used when a run resumes)."""
    return ["%s: %r -> %r" % (k, old.get(k), new.get(k))
            for k in DEFAULTS if old.get(k) != new.get(k)]
