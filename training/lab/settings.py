"""Settings the lab's drivers share, built and checked once from YAML or the command line.

``EvaluationSettings`` says how every model of a lab command is measured; ``TrainSettings``
is one training stage (a config file and its ``key=value`` overrides). The pruning and
fine-tuning settings are ``training.pruning.settings``' ``PruneSettings`` and
``FinetuneSettings``; each driver's own settings (``SweepSettings``, ``AblationSettings``, ...)
are built from these in its module.
"""
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple, Type

import yaml

__all__ = ["ROOT", "override_list", "EvaluationSettings", "TrainSettings"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def override_list(overrides: Optional[Mapping[str, Any]]) -> List[str]:
    """{"iters": 2, "fm_stages": [0, 1]} -> ["iters=2", "fm_stages=[0, 1]"] (YAML values)."""
    out = []
    for key, value in (overrides or {}).items():
        text = value if isinstance(value, str) else yaml.safe_dump(
            value, default_flow_style=True).strip()
        if text.endswith("\n...") or text.endswith("..."):
            text = text.split("\n")[0]
        out.append("%s=%s" % (key, text))
    return out


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class EvaluationSettings:
    """How the lab measures a model: ONNX Runtime ``threads`` (None: its own), the first
    ``eval_limit`` val images only (None: all), ``latency_runs`` timed forward passes per
    file, and ``data``, a dataset whose val split every evaluation reads instead of the
    training data's (a test set no run trains on or picks checkpoints with)."""
    threads: Optional[int] = None
    eval_limit: Optional[int] = None
    latency_runs: int = 20
    data: Optional[str] = None

    def dataset(self, train_data: str) -> str:
        """The dataset whose val split is evaluated."""
        return self.data or train_data

    def validate(self, error: Type[Exception] = ValueError,
                 name: Callable[[str], str] = str) -> "EvaluationSettings":
        """Raise ``error`` naming the first unusable option (``name(field)``: how the caller's
        user spells it); returns self."""
        for key, optional in (("threads", True), ("eval_limit", True), ("latency_runs", False)):
            value = getattr(self, key)
            if not (optional and value is None) and not _count(value, 1):
                raise error("%s must be %san integer >= 1, got %r"
                            % (name(key), "null or " if optional else "", value))
        if self.data is not None:
            from training.data import DatasetError, find_pairs
            try:
                find_pairs(str(self.data), "val")
            except DatasetError as e:
                raise error("%s: %s" % (name("data"), e))
        return self


@dataclass(frozen=True)
class TrainSettings:
    """One ``python -m training train`` stage: ``config`` (a YAML path, relative to the
    repository unless absolute) and its ``key=value`` ``overrides``."""
    config: str
    overrides: Tuple[str, ...] = ()

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "TrainSettings":
        """From a YAML section ``{"config": PATH, "overrides": {key: value}}``."""
        return cls(str(section["config"]), tuple(override_list(section.get("overrides"))))

    @property
    def config_path(self) -> str:
        return self.config if os.path.isabs(self.config) else os.path.join(ROOT, self.config)

    def seed(self) -> int:
        """The training seed this stage runs with (its config and overrides)."""
        from training import config as config_lib
        return int(config_lib.load_config(self.config_path, list(self.overrides))["seed"])

    def validate(self, error: Type[Exception] = ValueError, where: str = "") -> "TrainSettings":
        """The config loads with the overrides; else ``error`` naming ``where``."""
        from training import config as config_lib
        try:
            config_lib.load_config(self.config_path, list(self.overrides))
        except config_lib.ConfigError as e:
            raise error("%s%s" % (where, e))
        return self

    def run(self, data: str, out: str, teacher: Optional[str] = None) -> None:
        """Train in this process as ``python -m training train --config CONFIG --data DATA
        --out OUT [--teacher TEACHER] OVERRIDES`` would; TrainingError when it fails."""
        from training.train import TrainingError, resolve_config, train
        overrides = list(self.overrides) + (["teacher=%s" % teacher] if teacher else [])
        status = train(resolve_config(self.config_path, overrides, out), data, out)
        if status:
            raise TrainingError("training %s failed (exit status %s)" % (out, status))
