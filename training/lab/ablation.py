"""Ablation report in the shape of the paper's table 2, from one set of runs.

  python -m training ablation --config training/configs/ablation.yaml --data DIR --out DIR
  python -m training ablation --config training/configs/ablation_quick.yaml --data DIR --out DIR

Stages (each a folder under OUT; --resume reuses the ones already finished, and refuses a config
whose stage sections differ from the one OUT/ablation_config.yaml records):
  teacher      train the teacher                                      reference row
  baseline     train UPerNet-ResNet18, distilled as in the paper      reference row
  student      train the student on the labels alone                  "student"
  student_kd   the same student, distilled from the teacher           "+ KD"
  sweep        prune student_kd per method and amount, fine-tune, evaluate (the plots)
  pruned       student_kd pruned as ``prune:`` says, distilled fine-tune   "+ KD + pruning"
               (from the teacher, or from student_kd itself: ``prune.distil_from``)
               (the sweep's point when the sweep has the same method and amount)
  control      student_kd fine-tuned as the pruned one, unpruned: what pruning is judged by
  recovery     the pruned model and the control fine-tuned for each of ``recovery.lengths``
               (one run per length): the curve of recovery against fine-tuning length
  seeds        the pruned model and the control again with each fine-tuning seed in
               ``recovery.seeds``: how often the recipe meets the targets, not one run's luck
  student_seeds  student and student_kd again with each training seed in
               ``recovery.student_seeds``: whether distillation pays, not one run's luck
  sweep_seeds  with ``recovery.sweep_seeds``, every other sweep point and its control again
               with each seed in ``recovery.seeds``: the curve over seeds, not one run
  fp16, int8   the pruned model exported at fp16 and at int8 (static, calibrated on the
               train split)                                           "+ KD + pruning + fp16/int8"
Every row's model is exported to ONNX and evaluated on the val split with ONNX Runtime on the
CPU: mean IoU, Dice (the challenge's per-image mean), parameters, GMACs, latency (median
forward pass, ms) and score (Dice / latency in seconds). With ``evaluate.data`` set, every
evaluation (rows, sweep, recovery, seeds) reads that dataset's val split instead: a test set
that no run trains on or picks checkpoints with. On a machine with CUDA, a row for
PyTorch half precision on the GPU is added.

Writes OUT/ablation.md (a dated report: date, machine, command and checkpoints, then the
table, the per-class table of the pruned row against the control, the targets, the recovery
curve, the seed runs, the plots), OUT/ablation.json and the plots OUT/sweep/*.png and
OUT/recovery/recovery.png. The quick config runs the whole chain at tiny sizes in minutes (the
test); its figures are real measurements of barely trained models, not of the method.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from lpcv_segmentation.core import timing
from lpcv_segmentation.core.fileio import write_json_atomic, write_yaml_atomic
from lpcv_segmentation.core.formatting import fmt, markdown_table

from training.config import load_yaml_mapping
from training.lab import recovery as recovery_lib
from training.lab import report as report_lib
from training.lab import sweep as sweep_lib
from training.lab.recovery import PruningRuns
from training.lab.settings import ROOT, EvaluationSettings, TrainSettings, override_list
from training.lab.stages import StageRunner
from training.lab.sweep import SweepSettings
from training.pruning.settings import (DEFAULT_IMPORTANCE, DEFAULT_ROUND_TO, FinetuneSettings,
                                       PruneError, PruneSettings, importance_for)

BEST = "best.safetensors"
REPORT_MD = "ablation.md"
REPORT_JSON = "ablation.json"
EVAL_JSON = "eval.json"
CONFIG_FILE = "ablation_config.yaml"  # the config OUT's stages were made with (--resume checks)
# Sections whose finished stages a change would leave stale, so --resume refuses to mix them;
# recovery lengths and seeds only add runs, and every run redoes the timing pass
STAGE_SECTIONS = ("teacher", "baseline", "student", "prune", "quantise", "sweep")

# section -> {key: default}; a key not listed here is an error naming it
SCHEMA: Dict[str, Dict[str, Any]] = {
    "teacher": {"config": "training/configs/teacher.yaml", "overrides": {}},
    "baseline": {"config": "training/configs/baseline.yaml", "distil": True, "overrides": {}},
    "student": {"config": "training/configs/student.yaml", "overrides": {}},
    "prune": {"method": "all", "target": "sparsity", "amount": 0.5,
              "importance": DEFAULT_IMPORTANCE,
              "allocation": "local", "iterative": 1, "round_to": DEFAULT_ROUND_TO,
              "finetune_iters": 200, "distil": True, "distil_from": "teacher", "overrides": {}},
    "quantise": {"fp16": True, "int8": True, "calib_images": 32},
    "sweep": {"enabled": True, "methods": ["filter", "channel", "neuron", "head", "all",
                                           "unstructured"],
              "amounts": [0.25, 0.5, 0.75], "finetune_iters": 100, "overrides": {}},
    "recovery": {"lengths": [], "seeds": [], "student_seeds": [], "sweep_seeds": False},
    "evaluate": {"threads": None, "eval_limit": None, "latency_runs": 20, "data": None},
}
DISTIL_FROM = ("teacher", "unpruned")  # prune.distil_from: the ablation's teacher, or student_kd
TARGET_SPEEDUP = 1.5  # the pruned student on ONNX Runtime, over the unpruned one
TARGET_MIOU_DROP = 0.02  # largest mIoU loss accepted from pruning and from int8


class AblationError(ValueError):
    """A config or run that cannot go on; the message names the section, key or stage."""


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def load_ablation_config(path: str) -> Dict[str, Dict[str, Any]]:
    """The YAML at ``path`` over SCHEMA's defaults, every section and key checked."""
    data = load_yaml_mapping(path, AblationError)
    config: Dict[str, Dict[str, Any]] = {}
    for section, defaults in SCHEMA.items():
        given = data.get(section) or {}
        if not isinstance(given, dict):
            raise AblationError("%s: section %r must be a mapping" % (path, section))
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise AblationError("%s: unknown key(s) %s in section %r; known: %s"
                                % (path, ", ".join(unknown), section, ", ".join(defaults)))
        config[section] = dict(defaults, **given)
    extra = sorted(set(data) - set(SCHEMA))
    if extra:
        raise AblationError("%s: unknown section(s) %s; known: %s"
                            % (path, ", ".join(extra), ", ".join(SCHEMA)))
    return config


@dataclass(frozen=True)
class QuantiseSettings:
    """Which reduced-precision rows the ablation adds, and the int8 calibration size."""
    fp16: bool = True
    int8: bool = True
    calib_images: int = 32


@dataclass(frozen=True)
class AblationSettings:
    """The ablation config as typed settings, built and checked once (``from_config``).
    ``prune_recipe`` has no teacher yet: the pruned model distils from the teacher or the
    unpruned + KD student (``distil_from``), known once they are trained."""
    teacher: TrainSettings
    baseline: TrainSettings
    baseline_distil: bool
    student: TrainSettings
    prune: PruneSettings
    prune_recipe: FinetuneSettings
    prune_distil: bool
    distil_from: str
    quantise: QuantiseSettings
    sweep: Optional[SweepSettings]  # None: no sweep
    sweep_recipe: FinetuneSettings
    recovery_lengths: Tuple[int, ...]
    recovery_seeds: Tuple[int, ...]
    student_seeds: Tuple[int, ...]
    sweep_seeds: bool
    evaluation: EvaluationSettings

    @classmethod
    def from_config(cls, config: Dict[str, Dict[str, Any]], data: str) -> "AblationSettings":
        """Every train config loads with its overrides, every pruning request is valid and
        the datasets have their splits: before the first (long) stage. AblationError names
        the section and key."""
        train = {}
        for name in ("teacher", "baseline", "student"):
            train[name] = TrainSettings.from_section(config[name]).validate(
                AblationError, "section %r: " % name)
        recovery = config["recovery"]
        for key, what in (("lengths", "fine-tuning iteration counts"),
                          ("seeds", "fine-tuning seeds"),
                          ("student_seeds", "training seeds")):
            value = recovery[key]
            if not isinstance(value, list) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
                raise AblationError("section 'recovery': %s must be a list of %s >= 0, got %r"
                                    % (key, what, value))
        prune, sweep, quantise = config["prune"], config["sweep"], config["quantise"]
        if prune["distil_from"] not in DISTIL_FROM:
            raise AblationError("section 'prune': distil_from must be one of %s, got %r"
                                % (", ".join(DISTIL_FROM), prune["distil_from"]))
        if recovery["sweep_seeds"] and not (recovery["seeds"] and sweep["enabled"]):
            raise AblationError("section 'recovery': sweep_seeds repeats the sweep's points with "
                                "the seeds in 'seeds': it needs both (seeds %r, sweep.enabled %r)"
                                % (recovery["seeds"], sweep["enabled"]))
        if recovery["seeds"] and int(prune["finetune_iters"]) <= 0:
            raise AblationError("section 'recovery': seeds need a fine-tune to vary "
                                "(prune.finetune_iters is %r)" % prune["finetune_iters"])
        try:
            pruning = PruneSettings(
                method=prune["method"], amount=prune["amount"], target=prune["target"],
                importance=importance_for(prune["method"], prune["importance"]),
                allocation=prune["allocation"], iterative=int(prune["iterative"]),
                finetune_iters=int(prune["finetune_iters"]),
                round_to=int(prune["round_to"])).validate()
            prune_recipe = FinetuneSettings.of(overrides=override_list(prune["overrides"]))
            sweep_recipe = FinetuneSettings.of(overrides=override_list(sweep["overrides"]))
            prune_recipe.validate()
            sweep_recipe.validate()
            sweeping = None
            if sweep["enabled"]:  # each point pruned in one step with the prune section's ranking
                sweeping = SweepSettings(
                    tuple(sweep["methods"]), tuple(float(a) for a in sweep["amounts"]),
                    pruning.target, pruning.importance, pruning.allocation, pruning.round_to,
                    int(sweep["finetune_iters"]))
                sweeping.points()
        except PruneError as e:
            raise AblationError("%s (in the ablation config)" % e)
        for length in recovery["lengths"]:
            try:
                replace(pruning, finetune_iters=length).validate()
            except PruneError as e:
                raise AblationError("section 'recovery': length %d: %s" % (length, e))
        for split in ("train", "val"):
            from training.data import DatasetError, find_pairs
            try:
                find_pairs(data, split)
            except DatasetError as e:
                raise AblationError("--data: %s" % e)
        evaluation = EvaluationSettings(**config["evaluate"]).validate(
            AblationError, lambda key: "section 'evaluate': %s" % key)
        return cls(teacher=train["teacher"], baseline=train["baseline"],
                   baseline_distil=bool(config["baseline"]["distil"]), student=train["student"],
                   prune=pruning, prune_recipe=prune_recipe, prune_distil=bool(prune["distil"]),
                   distil_from=prune["distil_from"],
                   quantise=QuantiseSettings(bool(quantise["fp16"]), bool(quantise["int8"]),
                                             int(quantise["calib_images"])),
                   sweep=sweeping, sweep_recipe=sweep_recipe,
                   recovery_lengths=tuple(recovery["lengths"]),
                   recovery_seeds=tuple(recovery["seeds"]),
                   student_seeds=tuple(recovery["student_seeds"]),
                   sweep_seeds=bool(recovery["sweep_seeds"]), evaluation=evaluation)

    def pruning_teacher(self, teacher: str, student_kd: str) -> Optional[str]:
        """What the pruned model and its control distil from while fine-tuning: the
        ablation's teacher, or the unpruned + KD student itself (the usual recovery: the
        model being pruned teaches what it knew), or nothing."""
        if not self.prune_distil:
            return None
        return student_kd if self.distil_from == "unpruned" else teacher

    def sweep_shares_point(self) -> bool:
        """The sweep holds the pruned row's point: same method, amount, fine-tuning length
        and overrides, one step."""
        return (self.sweep is not None and self.prune.method in self.sweep.methods
                and self.prune.amount in self.sweep.amounts
                and self.sweep.finetune_iters == self.prune.finetune_iters
                and self.prune.iterative == 1
                and self.sweep_recipe.overrides == self.prune_recipe.overrides)


def check_resume(config: Dict[str, Dict[str, Any]], out: str) -> None:
    """Refuse to resume in ``out`` with a config whose stage sections differ from the one its
    stages were made with (``CONFIG_FILE``), naming each changed key; an OUT without the file
    (new, or from before the file existed) is not checked, and a key the file lacks (added to
    SCHEMA since) counts as its default, which is what the code did before the key existed."""
    path = os.path.join(out, CONFIG_FILE)
    if not os.path.isfile(path):
        return
    old = load_yaml_mapping(path, AblationError)
    keys = [(section, key) for section in STAGE_SECTIONS for key in config[section]]
    keys += [("evaluate", "eval_limit"), ("evaluate", "data")]  # what the evaluations read
    changed = []
    for section, key in keys:
        before = (old.get(section) or {}).get(key, SCHEMA[section][key])
        if before != config[section][key]:
            changed.append("%s.%s: %r -> %r" % (section, key, before, config[section][key]))
    if changed:
        raise AblationError("%s was made with another config (%s), so its finished stages "
                            "would not match this one: %s. Use a new --out (link in the "
                            "stage folders that did not change to reuse them)"
                            % (out, path, "; ".join(changed)))


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
def measure_row(stages: StageRunner, name: str, checkpoint: str, data: str, out: str,
                evaluation: EvaluationSettings, precision: str = "fp32",
                calib_images: int = 32) -> Dict[str, Any]:
    """Export ``checkpoint`` at ``precision`` (int8 calibrated on the train split of ``data``)
    and evaluate it with ONNX Runtime as ``evaluation`` says; cached in OUT/<name>/eval.json."""
    row_dir = os.path.join(out, name)
    path = os.path.join(row_dir, EVAL_JSON)

    def work() -> None:
        os.makedirs(row_dir, exist_ok=True)
        result = sweep_lib.export_and_evaluate(
            checkpoint, data, os.path.join(row_dir, "model.onnx"), evaluation,
            precision=precision, calib_images=calib_images)
        result["checkpoint"] = os.path.abspath(checkpoint)
        write_json_atomic(path, result)

    stages.run("measure %s" % name, path, work)
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def measure_cuda_fp16(stages: StageRunner, checkpoint: str, data: str, out: str,
                      evaluation: EvaluationSettings) -> Optional[Dict[str, Any]]:
    """PyTorch half precision on the GPU (only where CUDA is available)."""
    import torch
    if not torch.cuda.is_available():
        return None
    from training.evaluate import Runtime, evaluate
    row_dir = os.path.join(out, "fp16_cuda")
    path = os.path.join(row_dir, EVAL_JSON)

    def work() -> None:
        os.makedirs(row_dir, exist_ok=True)
        result = evaluate(checkpoint, evaluation.dataset(data), "val",
                          Runtime("pytorch", "cuda", "fp16"), limit=evaluation.eval_limit,
                          progress=False)
        write_json_atomic(path, result)

    stages.run("measure fp16 (PyTorch, CUDA)", path, work)
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def measure_control(stages: StageRunner, runs: PruningRuns, from_sweep: bool, out: str
                    ) -> Optional[Dict[str, Any]]:
    """The control for pruning: the unpruned + KD student fine-tuned exactly as the pruned one
    (same iterations, config and teacher), so that the pruned row is not credited with the
    extra training. The sweep's reference point when the sweep shares the pruned point."""
    from training.pruning.finetune import finetune_unpruned
    if runs.settings.finetune_iters <= 0:
        return None
    if from_sweep:
        path = os.path.join(out, "sweep", sweep_lib.BASE_NAME + "_0", sweep_lib.EVAL_JSON)
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    control_dir = os.path.join(out, "control")
    control = stages.run("control", os.path.join(control_dir, BEST), lambda: finetune_unpruned(
        runs.unpruned, runs.data, control_dir, runs.settings.finetune_iters, runs.recipe))
    return measure_row(stages, "eval_control", control, runs.data, out, runs.evaluation)


def run_ablation(config_path: str, data: str, out: str, resume: bool = False
                 ) -> Dict[str, Any]:
    """Every stage, then the report; returns the JSON report."""
    from training.pruning.request import prune_and_finetune
    config = load_ablation_config(config_path)
    settings = AblationSettings.from_config(config, data)
    if os.path.isdir(out) and os.listdir(out) and not resume:
        raise AblationError("%s already holds runs; pass --resume to reuse its finished stages, "
                            "or choose another --out" % out)
    check_resume(config, out)
    os.makedirs(out, exist_ok=True)
    write_yaml_atomic(os.path.join(out, CONFIG_FILE), config)
    started = time.time()
    stages = StageRunner(resume, error=AblationError)
    run_dir = lambda name: os.path.join(out, name)  # noqa: E731
    best = lambda name: os.path.join(out, name, BEST)  # noqa: E731

    teacher = stages.run("teacher", best("teacher"), lambda: settings.teacher.run(
        data, run_dir("teacher")))
    stages.run("baseline", best("baseline"), lambda: settings.baseline.run(
        data, run_dir("baseline"), teacher if settings.baseline_distil else None))
    stages.run("student", best("student"), lambda: settings.student.run(
        data, run_dir("student")))
    student_kd = stages.run("student_kd", best("student_kd"), lambda: settings.student.run(
        data, run_dir("student_kd"), teacher))
    student_seed_rows: List[Dict[str, Any]] = []
    if settings.student_seeds:  # the rows' own pair first, evaluated the same way as the others
        row_seed = settings.student.seed()
        student_seed_rows = recovery_lib.run_student_seeds(
            stages, run_dir("student_seeds"), settings.student, teacher, data,
            settings.evaluation, sorted({row_seed, *settings.student_seeds}),
            {row_seed: {"student": best("student"), "student_kd": student_kd}})
    prune_teacher = settings.pruning_teacher(teacher, student_kd)
    pruning = settings.prune
    runs = PruningRuns(student_kd, data, pruning,
                       replace(settings.prune_recipe, teacher=prune_teacher),
                       settings.evaluation)

    # The sweep (the plots); its point for the ablation's method and amount is the pruned row.
    sweep_rows: List[Dict[str, Any]] = []
    pruned_ckpt = None
    sweep_shares_point = settings.sweep_shares_point()
    if settings.sweep is not None:
        sweep_dir = run_dir("sweep")
        stages.run("sweep", os.path.join(sweep_dir, sweep_lib.CSV_NAME), lambda: sweep_lib.run_sweep(
            student_kd, data, sweep_dir, settings.sweep,
            replace(settings.sweep_recipe, teacher=prune_teacher), settings.evaluation,
            resume=resume))
        sweep_rows = sweep_lib.read_csv(os.path.join(sweep_dir, sweep_lib.CSV_NAME))
        if sweep_shares_point:
            pruned_ckpt = os.path.join(sweep_dir, sweep_lib.point_name(
                pruning.method, pruning.amount), BEST)
    if pruned_ckpt is None:
        pruned_ckpt = stages.run("pruned", best("pruned"), lambda: prune_and_finetune(
            student_kd, data, run_dir("pruned"), pruning, runs.recipe, progress=False))

    evaluation, quantise = settings.evaluation, settings.quantise
    rows: List[Tuple[str, str, Dict[str, Any]]] = []  # (key, label, measurement)
    rows.append(("teacher", "Teacher (reference)",
                 measure_row(stages, "eval_teacher", teacher, data, out, evaluation)))
    rows.append(("baseline", "ResNet18%s (reference)" % (" + KD" if settings.baseline_distil
                                                         else ""),
                 measure_row(stages, "eval_baseline", best("baseline"), data, out, evaluation)))
    rows.append(("student", "Student",
                 measure_row(stages, "eval_student", best("student"), data, out, evaluation)))
    rows.append(("student_kd", "+ KD",
                 measure_row(stages, "eval_student_kd", student_kd, data, out, evaluation)))
    if sweep_shares_point:  # measured by the sweep already: the same file, the same way
        point = os.path.join(run_dir("sweep"), sweep_lib.point_name(pruning.method,
                                                                    pruning.amount))
        with open(os.path.join(point, sweep_lib.EVAL_JSON), "r", encoding="utf-8") as handle:
            pruned_row = json.load(handle)
    else:
        pruned_row = measure_row(stages, "eval_pruned", pruned_ckpt, data, out, evaluation)
    rows.append(("pruned", "+ KD + pruning", pruned_row))
    control_row = measure_control(stages, runs, sweep_shares_point, out)
    recovery_rows: List[Dict[str, Any]] = []
    if settings.recovery_lengths:
        reuse = {pruning.finetune_iters: {"pruned": pruned_ckpt}}
        if control_row is not None:
            reuse[pruning.finetune_iters]["control"] = control_row["checkpoint"]
        recovery_rows = recovery_lib.run_recovery(stages, run_dir("recovery"), runs,
                                                  settings.recovery_lengths, reuse)
        recovery_lib.plot_recovery(recovery_rows, os.path.join(run_dir("recovery"),
                                                               recovery_lib.PLOT))
    seed_rows: List[Dict[str, Any]] = []
    if settings.recovery_seeds:
        seed_rows = recovery_lib.run_seeds(stages, run_dir("seeds"), runs,
                                           settings.recovery_seeds, TARGET_MIOU_DROP)
    sweep_seed_rows: List[Dict[str, Any]] = []
    if settings.sweep_seeds:
        sweep_runs = replace(runs, recipe=replace(settings.sweep_recipe, teacher=prune_teacher))
        same_control = (settings.sweep.finetune_iters == pruning.finetune_iters
                        and settings.sweep_recipe.overrides == settings.prune_recipe.overrides)
        controls = {seed: os.path.join(run_dir("seeds"), "seed_%d" % seed, "control", BEST)
                    for seed in settings.recovery_seeds} if same_control else {}
        points = [p for p in settings.sweep.points() if not (
            sweep_shares_point and (p.method, p.amount) == (pruning.method, pruning.amount))]
        sweep_seed_rows = recovery_lib.run_sweep_seeds(
            stages, run_dir("sweep_seeds"), sweep_runs, points, settings.recovery_seeds,
            controls, TARGET_MIOU_DROP)
    if control_row is not None:
        rows.append(("control", "+ KD, fine-tuned %d more iterations, unpruned (control)"
                     % pruning.finetune_iters, control_row))
    if quantise.fp16:
        rows.append(("fp16", "+ KD + pruning + fp16 (ONNX, CPU)",
                     measure_row(stages, "eval_fp16", pruned_ckpt, data, out, evaluation,
                                 "fp16")))
        cuda = measure_cuda_fp16(stages, pruned_ckpt, data, out, evaluation)
        if cuda is not None:
            rows.append(("fp16_cuda", "+ KD + pruning + fp16 (PyTorch, CUDA)", cuda))
    if quantise.int8:
        rows.append(("int8", "+ KD + pruning + int8 (ONNX, CPU)",
                     measure_row(stages, "eval_int8", pruned_ckpt, data, out, evaluation, "int8",
                                 quantise.calib_images)))

    # One interleaved timing pass over every ONNX file of the report: latencies measured one
    # file after another drift with the load of a shared machine; these compare.
    files = {("row", i): r[2]["export"]["out"] for i, r in enumerate(rows)
             if r[2].get("export")}
    files.update({("sweep", i): os.path.join(run_dir("sweep"), str(r["onnx"]))
                  for i, r in enumerate(sweep_rows)})
    print("== timing %d ONNX files, interleaved" % len(files), file=sys.stderr, flush=True)
    for (kind, i), latency in sweep_lib.onnx_latency_ms(
            files, evaluation.threads, evaluation.latency_runs).items():
        sweep_lib.set_latency(rows[i][2] if kind == "row" else sweep_rows[i], latency)
    if sweep_rows:
        sweep_lib.finish_rows(sweep_rows)
        sweep_lib.write_csv(sweep_rows, os.path.join(run_dir("sweep"), sweep_lib.CSV_NAME))
        sweep_lib.plot(sweep_rows, run_dir("sweep"))

    from lpcv_segmentation.model.checkpoint import read_metadata
    archs = {key: read_metadata(path)["arch"] for key, path in
             (("teacher", teacher), ("baseline", best("baseline")),
              ("student", best("student")))}
    report = {
        "command": "python -m training ablation --config %s --data %s --out %s"
                   % (os.path.relpath(config_path, ROOT) if config_path.startswith(ROOT)
                      else config_path, data, out),
        "config": config,
        "archs": archs,
        "eval_data": evaluation.dataset(data),  # every mIoU, Dice and IoU below
        "pruning": {"settings": asdict(pruning), "checkpoint": os.path.abspath(pruned_ckpt)},
        "rows": [{"key": k, "label": label, **measurement} for k, label, measurement in rows],
        "sweep": sweep_rows,
        "recovery": recovery_rows,
        "seeds": seed_rows,
        "student_seeds": student_seed_rows,
        "sweep_seeds": sweep_seed_rows,
        "plots": [os.path.join("sweep", n) for n in sweep_lib.PLOTS] if settings.sweep else [],
        "stage_seconds": stages.seconds,
        "seconds": round(time.time() - started, 1),
        "made": report_lib.stamp(),
    }
    report["targets"] = targets(report)
    if control_row is not None:
        # the fair comparison: the unpruned + KD model fine-tuned exactly as the pruned one
        report["targets"].append(compare(
            pruned_row, control_row, "+ KD + pruning vs the control (+ KD fine-tuned the same "
            "%d iterations, unpruned)" % pruning.finetune_iters, TARGET_SPEEDUP))
        report["classes"] = recovery_lib.class_comparison(pruned_row, control_row)
        report["class_target"] = recovery_lib.class_target(report["classes"])
        if seed_rows:  # every run of the recipe: the pruned row, then each other seed
            report["seed_summary"] = recovery_lib.summarise_runs(
                [recovery_lib.judge_pair(pruned_row, control_row, TARGET_MIOU_DROP)] + seed_rows)
    write_json_atomic(os.path.join(out, REPORT_JSON), report)
    with open(os.path.join(out, REPORT_MD), "w", encoding="utf-8") as handle:
        handle.write(markdown(report))
    return report


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _row(report: Dict[str, Any], key: str) -> Optional[Dict[str, Any]]:
    return next((r for r in report["rows"] if r["key"] == key), None)


def compare(row: Dict[str, Any], ref: Dict[str, Any], what: str, goal: float) -> Dict[str, Any]:
    """Speed-up of ``row`` over ``ref`` (ONNX Runtime latency) and its mIoU change."""
    speedup = float(ref["latency_ms"]) / float(row["latency_ms"])
    change = float(row["miou"] or 0.0) - float(ref["miou"] or 0.0)
    return {"what": what, "speedup": speedup, "speedup_goal": goal, "miou_change": change,
            "speedup_met": speedup >= goal if goal > 1.0 else speedup > goal,
            "miou_met": change >= -TARGET_MIOU_DROP}


def targets(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The compression targets, measured on this run: pruning >= 1.5x faster on ONNX Runtime with
    at most 0.02 mIoU lost; int8 faster than fp32 with at most 0.02 mIoU lost."""
    out = []
    pairs = [("pruned", "student_kd", "+ KD + pruning vs + KD", TARGET_SPEEDUP),
             ("int8", "pruned", "int8 vs fp32 (+ KD + pruning), ONNX Runtime CPU", 1.0)]
    for key, ref_key, what, goal in pairs:
        row, ref = _row(report, key), _row(report, ref_key)
        if row is not None and ref is not None:
            out.append(compare(row, ref, what, goal))
    return out


def _distillation(prune: Dict[str, Any]) -> str:
    if not prune["distil"]:
        return ""
    return (" distilled from the unpruned + KD model" if prune["distil_from"] == "unpruned"
            else " distilled from the teacher")


def _student_seeds_markdown(report: Dict[str, Any]) -> List[str]:
    """Student against + KD over the rows' seed and ``recovery.student_seeds``."""
    rows = report["student_seeds"]
    mean = lambda key: sum(r[key] or 0.0 for r in rows) / len(rows)  # noqa: E731
    return ["", "## Distillation over training seeds", "",
            "The student and the + KD student trained again, each pair with its own training "
            "seed (one of them the rows' own pair); val mIoU with PyTorch on the CPU. "
            "Distillation pays when + KD scores at least the student at equal iterations.", "",
            markdown_table(["seed", "student mIoU", "+ KD mIoU", "+ KD - student"],
                           [[r["seed"], fmt(r["student"], "%.4f", "-"),
                             fmt(r["student_kd"], "%.4f", "-"), "%+.4f" % r["change"]]
                            for r in rows]),
            "", "Mean over %d seeds: student %.4f, + KD %.4f (%+.4f); + KD at least the "
            "student on %d of %d." % (len(rows), mean("student"), mean("student_kd"),
                                      mean("student_kd") - mean("student"),
                                      sum(r["change"] >= 0 for r in rows), len(rows))]


def markdown(report: Dict[str, Any]) -> str:
    archs, pruning = report["archs"], report["pruning"]["settings"]
    lines = [
        report_lib.header("Ablation (the paper's table 2)", report["command"],
                          ["%s `%s`" % (r["key"], r["checkpoint"]) for r in report["rows"]
                           if r.get("checkpoint")], report.get("made")),
        "Teacher %s, student %s, baseline %s. Every model is exported to ONNX and evaluated on "
        "the val split of %s with ONNX Runtime on the CPU (%s); latency is the median of %d timed "
        "forward passes (ms), taken in rounds in which every ONNX file of this report (sweep "
        "included) runs a block of %d in turn; score = Dice / latency (s). Pruning: %s, fine-tuned %d iterations%s."
        % (archs["teacher"], archs["student"], archs["baseline"], report["eval_data"],
           "%s thread(s)" % (report["config"]["evaluate"]["threads"] or "default"),
           report["config"]["evaluate"]["latency_runs"], timing.BLOCK,
           "%s, %s %.2f%s, importance %s, %s allocation" % (
               pruning["method"], pruning["target"], pruning["amount"],
               " in %d steps" % pruning["iterative"] if pruning["iterative"] > 1 else "",
               pruning["importance"], pruning["allocation"]),
           pruning["finetune_iters"], _distillation(report["config"]["prune"])),
        "",
        markdown_table(
            ["model", "input", "params", "GMACs", "mIoU", "Dice", "ORT latency (ms)", "score"],
            [[r["label"], r.get("input_size", "-"),
              fmt(r["params"] and r["params"] / 1e6, "%.2fM", "-"), fmt(r["gmacs"], "%.3f", "-"),
              fmt(r["miou"], "%.4f", "-"), fmt(r["dice"], "%.4f", "-"),
              fmt(r["latency_ms"], "%.1f", "-"), fmt(r["score"], "%.2f", "-")]
             for r in report["rows"]]),
        "",
    ]
    for target in report["targets"]:
        lines.append("- %s: %.2fx faster (target %s %.1fx): %s; mIoU %+.4f (target >= -%.2f): %s"
                     % (target["what"], target["speedup"],
                        ">=" if target["speedup_goal"] > 1 else ">", target["speedup_goal"],
                        "met" if target["speedup_met"] else "**MISSED**",
                        target["miou_change"], TARGET_MIOU_DROP,
                        "met" if target["miou_met"] else "**MISSED**"))
    if report.get("class_target"):
        held = report["class_target"]
        lines.append("- %s (held: %s): %s" % (
            held["what"], ", ".join(held["classes_held"]) or "none",
            "met" if held["met"] else "**MISSED** by %s" % ", ".join(held["failed"])))
        lines += ["", "## Per class: + KD + pruning against the control", "", markdown_table(
            ["class", "val images with it", "control IoU", "pruned IoU", "pruned / control",
             "held to the target"],
            [[r["class"], fmt(r.get("images"), "%d", "-"), "%.4f" % r["control"],
              fmt(r["pruned"], "%.4f", "-"), fmt(r["ratio"], "%.2f", "-"),
              ("yes, %s" % ("met" if r["met"] else "**MISSED**")) if r["held"] else "no"]
             for r in report["classes"]])]
    if report.get("recovery"):
        lines += ["", "## Recovery against fine-tuning length", "",
                  "Each point is its own run: the + KD student pruned as above and fine-tuned "
                  "that many iterations, and the control fine-tuned as long (0: the pruned model "
                  "before fine-tuning against + KD itself); val mIoU with PyTorch on the CPU.",
                  "", markdown_table(
                      ["fine-tuning iterations", "pruned mIoU", "control mIoU", "pruned / control"],
                      [[r["iters"], fmt(r["pruned"], "%.4f", "-"), fmt(r["control"], "%.4f", "-"),
                        fmt(r["recovery"], "%.2f", "-")] for r in report["recovery"]])]
        lines += ["", "![recovery](recovery/%s)" % recovery_lib.PLOT]
    if report.get("student_seeds"):
        lines += _student_seeds_markdown(report)
    if report.get("seeds"):
        seeds, summary = report["seeds"], report["seed_summary"]
        lines += ["", "## Other fine-tuning seeds", "",
                  "The pruned row and its control again, each pair with its own fine-tuning "
                  "seed (the same pruning, so the same shapes and speed); val mIoU with PyTorch "
                  "on the CPU. Met: at most %.2f mIoU lost and no held class below %.1fx of "
                  "its control." % (TARGET_MIOU_DROP, recovery_lib.RARE_CLASS_KEEP), "",
                  markdown_table(
                      ["seed", "pruned mIoU", "control mIoU", "change", "held classes lost", "met"],
                      [[r["seed"], fmt(r["pruned"], "%.4f", "-"), fmt(r["control"], "%.4f", "-"),
                        "%+.4f" % r["change"], ", ".join(r["classes_lost"]) or "none",
                        "yes" if r["met"] else "**no**"] for r in seeds])]
        lines += ["", "With the pruned row above, the accuracy and class targets hold on %d of %d "
                  "runs; mean change against the control %+.4f (from %+.4f to %+.4f)." % (
                      summary["met"], summary["runs"], summary["mean_change"],
                      summary["min_change"], summary["max_change"])]
    if report["sweep"]:
        lines += ["", "## Sparsity sweep (from + KD)", "", sweep_lib.markdown(report["sweep"])]
        lines += ["", "Unstructured pruning zeroes weights but keeps every shape: it gives no "
                  "speed-up in dense inference (its latency is the unpruned model's).", ""]
        lines += ["![%s](%s)" % (os.path.splitext(os.path.basename(p))[0], p)
                  for p in report["plots"]]
    if report.get("sweep_seeds"):
        lines += ["", "## Sweep points over fine-tuning seeds", "",
                  "Each sweep point pruned and fine-tuned again with each seed of the seed runs, "
                  "against the unpruned + KD student fine-tuned as long with that seed (the seed "
                  "runs' control where the sweep fine-tunes as the pruned row does); val mIoU "
                  "with PyTorch on the CPU. The pruned row's amount is in the seed runs above.", "",
                  markdown_table(
                      ["method", "amount", "seed", "pruned mIoU", "control mIoU", "change",
                       "held classes lost", "met"],
                      [[r["method"], "%.2f" % r["amount"], r["seed"], fmt(r["pruned"], "%.4f", "-"),
                        fmt(r["control"], "%.4f", "-"), "%+.4f" % r["change"],
                        ", ".join(r["classes_lost"]) or "none", "yes" if r["met"] else "**no**"]
                       for r in report["sweep_seeds"]])]
    lines += ["", "Wall time: %.0f s." % report["seconds"], ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="CFG",
                        help="ablation config (training/configs/ablation.yaml, or "
                             "ablation_quick.yaml for a minutes-long run)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset (LPCV layout)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="writes DIR/ablation.md, ablation.json, the run folders and plots")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the stages DIR already finished")


def main(args: argparse.Namespace) -> int:
    from lpcv_segmentation.model.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.data import DatasetError
    from training.export import ExportError
    from training.train import TrainingError
    try:
        run_ablation(args.config, args.data, args.out, args.resume)
    except (AblationError, PruneError, sweep_lib.SweepError, ConfigError,
            DatasetError, CheckpointError, ExportError, TrainingError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    with open(os.path.join(args.out, REPORT_MD), "r", encoding="utf-8") as handle:
        print(handle.read())
    print("wrote %s and %s" % (os.path.join(args.out, REPORT_MD),
                               os.path.join(args.out, REPORT_JSON)))
    return 0
