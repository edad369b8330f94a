"""What pruning costs, class by class, and how much fine-tuning buys back.

Three parts of the ablation report (``training/ablation.py``):

- the recovery curve: the pruned model and its control (the unpruned model, fine-tuned the same
  way) each fine-tuned for several lengths, one run per length (each with its own schedule, as a
  user would run it), evaluated on the val split; a table and ``recovery.png``;
- the per-class table: each class's IoU in the pruned row against the control, and the target
  that no class the control segments well (IoU >= ``RARE_CLASS_MIN_IOU``) falls below
  ``RARE_CLASS_KEEP`` of it. The mean hides rare classes; this is where their loss shows;
- the seed runs: the pruned row and its control repeated with other fine-tuning seeds, each
  pair judged by the same targets. One run can meet or miss them by chance; these show how
  often the recipe does.
"""
import json
import os
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

from lpcv_segmentation.core.fileio import atomic_path, write_json_atomic

from training import prune as prune_lib
from training.lab import sweep as sweep_lib
from training.lab.stages import StageRunner

__all__ = ["RARE_CLASS_MIN_IOU", "RARE_CLASS_KEEP", "run_recovery", "plot_recovery",
           "class_comparison", "class_target", "judge_pair", "run_seeds", "summarise_runs"]

RARE_CLASS_MIN_IOU = 0.3  # classes the control segments at least this well are held to...
RARE_CLASS_KEEP = 0.8  # ...at least this fraction of their control IoU after pruning
PLOT = "recovery.png"
BEST = "best.safetensors"


def _evaluate_cached(stages: StageRunner, what: str, checkpoint: str, data: str, path: str,
                     eval_limit: Optional[int]) -> Dict[str, Any]:
    """mIoU and per-class IoU of ``checkpoint`` on the val split (PyTorch, CPU), cached at
    ``path``: accuracy only, the curve needs no latency."""
    from training.evaluate import evaluate

    def work() -> None:
        result = evaluate(checkpoint, data, "val", backend="pytorch", limit=eval_limit,
                          progress=False)
        keep = ("miou", "dice", "per_class_iou", "images", "class_images")
        write_json_atomic(path, {k: result[k] for k in keep})

    stages.run(what, path, work)
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def _pruned_and_control(stages: StageRunner, kind: str, what: str, point: str,
                        student_kd: str, data: str, settings: prune_lib.PruneSettings,
                        teacher: Optional[str], overrides: Sequence[str],
                        eval_limit: Optional[int], given: Optional[Dict[str, str]] = None,
                        eval_data: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """Prune ``student_kd`` as ``settings`` say and fine-tune it on ``data``; fine-tune the
    unpruned model as long (the control; ``student_kd`` itself at 0 iterations); evaluate both
    on the val split of ``eval_data`` (default ``data``), all cached under ``point``.
    ``given`` names checkpoints already trained ({"pruned", "control"}). Returns {"pruned":
    evaluation, "control": evaluation}; stages are named "KIND: ..., WHAT"."""
    given = given or {}
    iters = settings.finetune_iters
    pruned = given.get("pruned") or stages.run(
        "%s: pruned, %s" % (kind, what), os.path.join(point, "pruned", BEST),
        lambda: prune_lib.run_prune(student_kd, data, os.path.join(point, "pruned"), settings,
                                    teacher=teacher, overrides=overrides, progress=False))
    control = given.get("control") or (student_kd if iters == 0 else stages.run(
        "%s: control, %s" % (kind, what), os.path.join(point, "control", BEST),
        lambda: sweep_lib.finetune_only(student_kd, data, os.path.join(point, "control"),
                                        iters, teacher, None, overrides)))
    return {name: _evaluate_cached(
        stages, "%s: evaluate %s, %s" % (kind, name, what), checkpoint, eval_data or data,
        os.path.join(point, "%s_eval.json" % name), eval_limit)
        for name, checkpoint in (("pruned", pruned), ("control", control))}


def run_recovery(stages: StageRunner, out: str, student_kd: str, data: str,
                 settings: prune_lib.PruneSettings, lengths: Sequence[int],
                 teacher: Optional[str], overrides: Sequence[str],
                 reuse: Dict[int, Dict[str, str]], eval_limit: Optional[int],
                 eval_data: Optional[str] = None) -> List[Dict[str, Any]]:
    """For each fine-tuning length: prune ``student_kd`` as ``settings`` say and fine-tune that
    long; fine-tune the unpruned model as long (the control); evaluate both (on ``eval_data``'s
    val split, default ``data``'s). ``reuse`` maps a length to the {"pruned", "control"}
    checkpoints the ablation already trained at it. Length 0 is the pruned model before any
    fine-tuning against ``student_kd`` itself. Returns one row per length: ``{"iters",
    "pruned", "control", "recovery"}`` with recovery = pruned mIoU / control mIoU."""
    rows = []
    for iters in sorted(set(int(n) for n in lengths)):
        scores = _pruned_and_control(
            stages, "recovery", "%d iterations" % iters, os.path.join(out, "iters_%d" % iters),
            student_kd, data, replace(settings, finetune_iters=iters), teacher, overrides,
            eval_limit, reuse.get(iters), eval_data)
        p, c = scores["pruned"]["miou"], scores["control"]["miou"]
        rows.append({"iters": iters, "pruned": p, "control": c,
                     "recovery": (p / c) if p is not None and c else None})
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


def run_seeds(stages: StageRunner, out: str, student_kd: str, data: str,
              settings: prune_lib.PruneSettings, seeds: Sequence[int], teacher: Optional[str],
              overrides: Sequence[str], eval_limit: Optional[int], miou_drop: float,
              eval_data: Optional[str] = None) -> List[Dict[str, Any]]:
    """For each seed: prune ``student_kd`` as ``settings`` say and fine-tune with ``seed=N``;
    fine-tune the unpruned model as long with the same seed (its control); evaluate both on the
    val split of ``eval_data`` (default ``data``; PyTorch, CPU). One row per seed: ``{"seed"}``
    and ``judge_pair``'s verdict."""
    rows = []
    for seed in seeds:
        scores = _pruned_and_control(
            stages, "seeds", "seed %d" % seed, os.path.join(out, "seed_%d" % seed), student_kd,
            data, settings, teacher, list(overrides) + ["seed=%d" % seed],  # later ones win
            eval_limit, eval_data=eval_data)
        rows.append({"seed": int(seed),
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
