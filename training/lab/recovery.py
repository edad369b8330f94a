"""What pruning costs, class by class, and how much fine-tuning buys back.

Three parts of the ablation report (``training/lab/ablation.py``):

- the recovery curve: the pruned model and its control (the unpruned model, fine-tuned the same
  way) each fine-tuned for several lengths, one run per length (each with its own schedule, as a
  user would run it), evaluated on the val split; a table and ``recovery.png``;
- the per-class table: each class's IoU in the pruned row against the control, and the target
  that no class the control segments well (IoU >= ``RARE_CLASS_MIN_IOU``) falls below
  ``RARE_CLASS_KEEP`` of it. The mean hides rare classes; this is where their loss shows;
- the seed runs: the pruned row and its control repeated with other fine-tuning seeds, each
  pair judged by the same targets. One run can meet or miss them by chance; these show how
  often the recipe does. The student and the + KD student are repeated the same way
  (``run_student_seeds``): whether distillation pays, not one run's luck.
"""
import json
import os
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

from lpcv_segmentation.core.fileio import atomic_path, write_json_atomic

from training.lab.settings import EvaluationSettings, TrainSettings
from training.lab.stages import StageRunner
from training.pruning.settings import FinetuneSettings, PruneSettings

__all__ = ["RARE_CLASS_MIN_IOU", "RARE_CLASS_KEEP", "PruningRuns", "run_recovery",
           "plot_recovery", "class_comparison", "class_target", "judge_pair", "run_seeds",
           "summarise_runs", "evaluate_cached", "run_student_seeds", "run_sweep_seeds"]

RARE_CLASS_MIN_IOU = 0.3  # classes the control segments at least this well are held to...
RARE_CLASS_KEEP = 0.8  # ...at least this fraction of their control IoU after pruning
PLOT = "recovery.png"
BEST = "best.safetensors"


@dataclass(frozen=True)
class PruningRuns:
    """What every pruned run and its control start from and how: ``unpruned`` (the + KD
    student) is pruned as ``settings`` say and fine-tuned on ``data`` as ``recipe`` says (the
    control: fine-tuned the same, unpruned), and both are evaluated as ``evaluation`` says."""
    unpruned: str
    data: str
    settings: PruneSettings
    recipe: FinetuneSettings
    evaluation: EvaluationSettings


def evaluate_cached(stages: StageRunner, what: str, checkpoint: str, path: str,
                    data: str, evaluation: EvaluationSettings) -> Dict[str, Any]:
    """mIoU and per-class IoU of ``checkpoint`` on the val split ``evaluation`` reads for
    ``data`` (PyTorch, CPU), cached at ``path``: accuracy only, repeated runs need no latency."""
    from training.evaluate import Runtime, evaluate

    def work() -> None:
        result = evaluate(checkpoint, evaluation.dataset(data), "val",
                          Runtime(backend="pytorch"), limit=evaluation.eval_limit,
                          progress=False)
        keep = ("miou", "dice", "per_class_iou", "images", "class_images")
        write_json_atomic(path, {k: result[k] for k in keep})

    stages.run(what, path, work)
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def _pruned_and_control(stages: StageRunner, runs: PruningRuns, kind: str, what: str,
                        point: str, given: Optional[Dict[str, str]] = None
                        ) -> Dict[str, Dict[str, Any]]:
    """Prune and fine-tune as ``runs`` say; fine-tune the unpruned model as long (the
    control; ``runs.unpruned`` itself at 0 iterations); evaluate both, all cached under
    ``point``. ``given`` names checkpoints already trained ({"pruned", "control"}). Returns
    {"pruned": evaluation, "control": evaluation}; stages are named "KIND: ..., WHAT"."""
    from training.pruning.finetune import finetune_unpruned
    from training.pruning.request import prune_and_finetune
    given = given or {}
    iters = runs.settings.finetune_iters
    pruned = given.get("pruned") or stages.run(
        "%s: pruned, %s" % (kind, what), os.path.join(point, "pruned", BEST),
        lambda: prune_and_finetune(runs.unpruned, runs.data, os.path.join(point, "pruned"),
                                   runs.settings, runs.recipe, progress=False))
    control = given.get("control") or (runs.unpruned if iters == 0 else stages.run(
        "%s: control, %s" % (kind, what), os.path.join(point, "control", BEST),
        lambda: finetune_unpruned(runs.unpruned, runs.data, os.path.join(point, "control"),
                                  iters, runs.recipe)))
    return {name: evaluate_cached(
        stages, "%s: evaluate %s, %s" % (kind, name, what), checkpoint,
        os.path.join(point, "%s_eval.json" % name), runs.data, runs.evaluation)
        for name, checkpoint in (("pruned", pruned), ("control", control))}


def run_recovery(stages: StageRunner, out: str, runs: PruningRuns, lengths: Sequence[int],
                 reuse: Dict[int, Dict[str, str]]) -> List[Dict[str, Any]]:
    """For each fine-tuning length: prune as ``runs`` say and fine-tune that long; fine-tune
    the unpruned model as long (the control); evaluate both. ``reuse`` maps a length to the
    {"pruned", "control"} checkpoints the ablation already trained at it. Length 0 is the
    pruned model before any fine-tuning against the unpruned model itself. Returns one row
    per length: ``{"iters", "pruned", "control", "recovery"}`` with recovery = pruned mIoU /
    control mIoU."""
    rows = []
    for iters in sorted(set(int(n) for n in lengths)):
        scores = _pruned_and_control(
            stages, replace(runs, settings=replace(runs.settings, finetune_iters=iters)),
            "recovery", "%d iterations" % iters, os.path.join(out, "iters_%d" % iters),
            reuse.get(iters))
        pruned, control = scores["pruned"]["miou"], scores["control"]["miou"]
        rows.append({"iters": iters, "pruned": pruned, "control": control,
                     "recovery": (pruned / control) if pruned is not None and control else None})
    return rows


def judge_pair(pruned: Dict[str, Any], control: Dict[str, Any], miou_drop: float
               ) -> Dict[str, Any]:
    """A pruned model's evaluation against its control's: ``{"pruned", "control", "change",
    "classes_lost", "met"}``, met when the mIoU change is at least ``-miou_drop`` and no held
    class is lost (``class_target``)."""
    change = (pruned["miou"] or 0.0) - (control["miou"] or 0.0)
    lost = class_target(class_comparison(pruned, control))["failed"]
    return {"pruned": pruned["miou"], "control": control["miou"], "change": change,
            "classes_lost": lost, "met": change >= -miou_drop and not lost}


def run_seeds(stages: StageRunner, out: str, runs: PruningRuns, seeds: Sequence[int],
              miou_drop: float) -> List[Dict[str, Any]]:
    """For each seed: prune and fine-tune as ``runs`` say with ``seed=N``; fine-tune the
    unpruned model as long with the same seed (its control); evaluate both (PyTorch, CPU).
    One row per seed: ``{"seed"}`` and ``judge_pair``'s verdict."""
    rows = []
    for seed in seeds:
        seeded = replace(runs.recipe, overrides=runs.recipe.overrides + ("seed=%d" % seed,))
        scores = _pruned_and_control(  # the seed override comes last, so it wins
            stages, replace(runs, recipe=seeded), "seeds", "seed %d" % seed,
            os.path.join(out, "seed_%d" % seed))
        rows.append({"seed": int(seed),
                     **judge_pair(scores["pruned"], scores["control"], miou_drop)})
    return rows


def run_student_seeds(stages: StageRunner, out: str, student: TrainSettings, teacher: str,
                      data: str, evaluation: EvaluationSettings, seeds: Sequence[int],
                      given: Optional[Dict[int, Dict[str, str]]] = None) -> List[Dict[str, Any]]:
    """For each seed: train ``student`` on the labels alone and again distilled from
    ``teacher``, both with ``seed=N``; evaluate both (PyTorch, CPU). ``given`` maps a seed to
    the {"student", "student_kd"} checkpoints already trained with it. One row per seed:
    ``{"seed", "student", "student_kd", "change"}``, change = + KD mIoU - student mIoU."""
    rows = []
    for seed in seeds:
        seeded = replace(student, overrides=student.overrides + ("seed=%d" % seed,))
        point = os.path.join(out, "seed_%d" % seed)
        scores = {}
        for name, distil_from in (("student", None), ("student_kd", teacher)):
            run = os.path.join(point, name)
            checkpoint = (given or {}).get(seed, {}).get(name) or stages.run(
                "student seeds: %s, seed %d" % (name, seed), os.path.join(run, BEST),
                lambda: seeded.run(data, run, distil_from))
            scores[name] = evaluate_cached(
                stages, "student seeds: evaluate %s, seed %d" % (name, seed), checkpoint,
                os.path.join(point, "%s_eval.json" % name), data, evaluation)["miou"]
        rows.append({"seed": int(seed), **scores,
                     "change": (scores["student_kd"] or 0.0) - (scores["student"] or 0.0)})
    return rows


def run_sweep_seeds(stages: StageRunner, out: str, runs: PruningRuns,
                    points: Sequence[PruneSettings], seeds: Sequence[int],
                    controls: Dict[int, str], miou_drop: float) -> List[Dict[str, Any]]:
    """Each sweep point (``points``, fine-tuned as ``runs.recipe`` says) pruned and fine-tuned
    again with each seed, judged against the unpruned model fine-tuned as long with that seed:
    ``controls`` maps a seed to such a checkpoint already trained (the seed runs'), else one is
    trained beside the point. One row per point and seed: ``{"method", "amount", "seed"}`` and
    ``judge_pair``'s verdict."""
    from training.lab.sweep import point_name
    rows = []
    for point in points:
        for seed in seeds:
            seeded = replace(runs.recipe, overrides=runs.recipe.overrides + ("seed=%d" % seed,))
            given = {"control": controls[seed]} if seed in controls else None
            scores = _pruned_and_control(
                stages, replace(runs, settings=point, recipe=seeded), "sweep seeds",
                "%s %.2f, seed %d" % (point.method, point.amount, seed),
                os.path.join(out, "%s_seed_%d" % (point_name(point.method, point.amount), seed)),
                given)
            rows.append({"method": point.method, "amount": point.amount, "seed": int(seed),
                         **judge_pair(scores["pruned"], scores["control"], miou_drop)})
    return rows


def summarise_runs(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """How often ``judge_pair``'s verdicts were met, and the spread of their mIoU changes."""
    changes = [r["change"] for r in rows]
    return {"runs": len(rows), "met": sum(bool(r["met"]) for r in rows),
            "mean_change": sum(changes) / len(changes), "min_change": min(changes),
            "max_change": max(changes)}


def plot_recovery(rows: Sequence[Dict[str, Any]], path: str, title: str = "") -> str:
    """mIoU of the pruned model and of its control against fine-tuning iterations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    xs = [r["iters"] for r in rows]
    for key, label, color in (("control", "unpruned, fine-tuned as long (control)", "black"),
                              ("pruned", "pruned, then fine-tuned", "tab:red")):
        ys = [float("nan") if r[key] is None else r[key] for r in rows]
        ax.plot(xs, ys, marker="o", color=color, label=label)
    ax.set_xlabel("fine-tuning iterations after pruning (one run per point)")
    ax.set_ylabel("mean IoU (val)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def class_comparison(pruned: Dict[str, Any], control: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per class present in the control's evaluation: its IoU there, in the pruned row, the
    ratio, whether the class is held to the target (control IoU >= RARE_CLASS_MIN_IOU), and
    the number of evaluated images that hold it (None from evaluations older than the count)."""
    rows = []
    images = control.get("class_images") or {}
    for name, ref in control["per_class_iou"].items():
        if ref is None:  # absent from the val split's labels and never predicted
            continue
        got = pruned["per_class_iou"].get(name)
        ratio = (got or 0.0) / ref if ref > 0 else None
        held = ref >= RARE_CLASS_MIN_IOU
        rows.append({"class": name, "images": images.get(name), "control": ref, "pruned": got,
                     "ratio": ratio, "held": held,
                     "met": (not held) or ratio >= RARE_CLASS_KEEP})
    return rows


def class_target(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The per-class target over ``class_comparison``'s rows."""
    held = [r for r in rows if r["held"]]
    failed = [r["class"] for r in held if not r["met"]]
    return {"what": "every class with control IoU >= %.1f keeps >= %.1fx of it after pruning"
                    % (RARE_CLASS_MIN_IOU, RARE_CLASS_KEEP),
            "classes_held": [r["class"] for r in held], "failed": failed, "met": not failed}
