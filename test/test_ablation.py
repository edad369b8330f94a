"""The quick ablation runs the whole chain (teacher, ResNet18, student, +KD, sweep, pruning,
fp16, int8) on the synthetic set and writes its table, JSON and plots; bad configs fail before
any work."""
import collections
import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lpcv_segmentation.core.classes import CLASS_NAMES, NUM_CLASSES
from lpcv_segmentation.core.fileio import write_yaml_atomic
from training.lab import ablation, recovery
from training.data import find_pairs, read_label
from training.lab.sweep import PLOTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "training", "configs", "ablation_quick.yaml")
TEST_SET_COUNT = 5


@pytest.mark.slow
def test_quick_ablation_writes_table_and_plots(synth_dataset, tmp_path):
    """The quick config with ``evaluate.data``: trained on the fixture set, every evaluation
    on a separate 5-scene test set (all of it: no eval_limit); the pruned model and its
    control distil from the unpruned + KD student (``prune.distil_from: unpruned``)."""
    from training.synth import write_dataset
    test_set = write_dataset(tmp_path / "test_set", count=TEST_SET_COUNT, size=128, seed=7,
                             val_fraction=1.0, progress=False)
    config = tmp_path / "ablation_quick_test_set.yaml"
    text = open(QUICK).read().replace("  eval_limit: 4\n", "  eval_limit: null\n  data: %s\n"
                                      % test_set)
    config.write_text(text.replace("  finetune_iters: 2\n  distil: true\n",
                                   "  finetune_iters: 2\n  distil: true\n  distil_from: unpruned\n"))
    out = tmp_path / "ablation"
    result = subprocess.run(
        [sys.executable, "-m", "training", "ablation", "--config", str(config), "--data",
         str(synth_dataset), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads((out / "ablation.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert {"teacher", "baseline", "student", "student_kd", "pruned", "fp16", "int8"} <= set(rows)
    for row in rows.values():  # every figure is a measurement, none missing or made up
        for key in ("params", "gmacs", "miou", "dice", "latency_ms", "score"):
            assert row[key] is not None, (row["key"], key)
        assert row["params"] > 0 and row["gmacs"] > 0 and row["latency_ms"] > 0, row
        # fractions (two training iterations can leave a model near 0, so no lower bound)
        assert 0 <= row["miou"] <= 1 and 0 <= row["dice"] <= 1, row
        # the challenge's score, from the row's own Dice and latency
        assert row["score"] == pytest.approx(row["dice"] / (row["latency_ms"] / 1000.0)), row
        assert row["images"] == TEST_SET_COUNT  # the test set, not --data's 8 val scenes
    assert report["archs"] == {"teacher": "swinv2_tiny", "baseline": "resnet18",
                               "student": "mobilevit_xxs"}
    # pruning made the distilled student physically smaller; the exports kept its size
    assert rows["pruned"]["params"] < 0.5 * rows["student_kd"]["params"]
    assert rows["pruned"]["gmacs"] < 0.5 * rows["student_kd"]["gmacs"]
    assert rows["fp16"]["precision"] == "fp16" and rows["int8"]["precision"] == "int8"
    assert rows["int8"]["params"] == rows["pruned"]["params"]
    assert rows["teacher"]["params"] > rows["baseline"]["params"] > rows["student"]["params"]

    table = (out / "ablation.md").read_text()
    for label in ("Teacher (reference)", "ResNet18 + KD (reference)", "| Student |", "| + KD |",
                  "+ KD + pruning |", "+ KD + pruning + fp16", "+ KD + pruning + int8"):
        assert label in table
    assert "Command: `python -m training ablation --config" in table
    for line in ("- Date: ", "- Machine: ", "- Models: teacher `%s" % out):
        assert "\n" + line in table, line  # the dated report's header
    assert report["eval_data"] == str(test_set)
    assert "evaluated on the val split of %s with ONNX Runtime" % test_set in table
    assert "%.2fM" % (rows["pruned"]["params"] / 1e6) in table
    # pruned in the config's two steps, each fine-tuned, not taken from the one-step sweep
    steps = json.loads((out / "pruned" / "prune.json").read_text())["pruning"]["steps"]
    assert [s["finetune_iters"] for s in steps] == [1, 1]
    assert "all, sparsity 0.50 in 2 steps" in table
    assert "distilled from the unpruned + KD model" in table
    student_kd = str(out / "student_kd" / "best.safetensors")
    for run in ("pruned", "control", "seeds/seed_1/pruned", "seeds/seed_1/control"):
        settings = yaml.safe_load((out / run / "config.yaml").read_text())
        assert os.path.abspath(settings["teacher"]) == student_kd, run

    # the recovery curve: one run per length; 2 = the pruned row's own fine-tune, reused
    curve = {r["iters"]: r for r in report["recovery"]}
    assert sorted(curve) == [0, 2, 4]
    assert (out / "recovery" / "iters_4" / "pruned" / "best.safetensors").is_file()
    assert (out / "recovery" / "iters_4" / "control" / "best.safetensors").is_file()
    assert not (out / "recovery" / "iters_2" / "pruned").exists()
    for name in ("pruned", "control"):
        evaluation = json.loads((out / "recovery" / "iters_4" / ("%s_eval.json" % name)).read_text())
        assert evaluation["images"] == TEST_SET_COUNT
    for r in curve.values():
        assert 0 <= r["pruned"] <= 1 and 0 < r["control"] <= 1, r
        assert r["recovery"] == pytest.approx(r["pruned"] / r["control"])
    # length 0 measures + KD itself as the control (PyTorch here, ONNX Runtime in its row)
    assert curve[0]["control"] == pytest.approx(rows["student_kd"]["miou"], abs=0.01)
    image = cv2.imread(str(out / "recovery" / "recovery.png"))
    assert image is not None and image.shape[0] > 200, "recovery.png"
    assert "![recovery](recovery/recovery.png)" in table
    # per class: the pruned row against the control, from their own evaluations
    control = rows["control"]["per_class_iou"]
    listed = {r["class"]: r for r in report["classes"]}
    assert set(listed) == {name for name, iou in control.items() if iou is not None}
    for name, r in listed.items():
        assert r["control"] == control[name]
        assert r["pruned"] == rows["pruned"]["per_class_iou"][name]
    assert report["class_target"]["met"] == all(r["met"] for r in listed.values())
    # ... with the number of evaluated test images whose labels hold each class
    holding = collections.Counter()
    for _, label_path in find_pairs(str(test_set), "val"):
        holding.update(CLASS_NAMES[c] for c in np.unique(read_label(label_path)) if c < NUM_CLASSES)
    assert {name: r["images"] for name, r in listed.items()} == {
        name: holding[name] for name in listed}
    assert "| val images with it |" in table
    assert "## Per class: + KD + pruning against the control" in table

    # the seed runs: the pruned row and its control again, fine-tuned with seed 1
    (seeded,) = report["seeds"]
    point = out / "seeds" / "seed_1"
    for name in ("pruned", "control"):
        assert (point / name / "best.safetensors").is_file()
    assert "seed: 1" in (point / "control" / "config.yaml").read_text().splitlines()
    main_control = load_file(str(out / "control" / "best.safetensors"))
    seed_control = load_file(str(point / "control" / "best.safetensors"))
    assert any(not torch.equal(main_control[k], seed_control[k]) for k in main_control)
    scores = {name: json.loads((point / ("%s_eval.json" % name)).read_text())
              for name in ("pruned", "control")}
    assert scores["pruned"]["images"] == scores["control"]["images"] == TEST_SET_COUNT
    assert seeded["pruned"] == scores["pruned"]["miou"]
    assert seeded["control"] == scores["control"]["miou"]
    assert seeded["change"] == pytest.approx(seeded["pruned"] - seeded["control"])
    lost = recovery.class_target(recovery.class_comparison(scores["pruned"], scores["control"]))
    assert seeded["classes_lost"] == lost["failed"]
    assert seeded["met"] == (seeded["change"] >= -ablation.TARGET_MIOU_DROP and not lost["failed"])
    assert "## Other fine-tuning seeds" in table

    # the student and + KD again with seed 1; seed 0's pair is the rows' own checkpoints
    by_seed = {r["seed"]: r for r in report["student_seeds"]}
    assert sorted(by_seed) == [0, 1]
    assert not (out / "student_seeds" / "seed_0" / "student").exists()
    for seed in (0, 1):
        point = out / "student_seeds" / ("seed_%d" % seed)
        for name in ("student", "student_kd"):
            evaluation = json.loads((point / ("%s_eval.json" % name)).read_text())
            assert evaluation["images"] == TEST_SET_COUNT
            assert by_seed[seed][name] == evaluation["miou"]
        assert by_seed[seed]["change"] == pytest.approx(by_seed[seed]["student_kd"] - by_seed[seed]["student"])
    for name, teacher in (("student", None), ("student_kd", str(out / "teacher" / "best.safetensors"))):
        settings = yaml.safe_load((out / "student_seeds" / "seed_1" / name / "config.yaml").read_text())
        assert settings["seed"] == 1
        assert (settings["teacher"] and os.path.abspath(settings["teacher"])) == teacher, name
    assert by_seed[0]["student"] == pytest.approx(rows["student"]["miou"], abs=0.01)
    assert "## Distillation over training seeds" in table

    # every sweep point again with seed 1, against a control fine-tuned as long with seed 1
    assert [(r["method"], r["amount"], r["seed"]) for r in report["sweep_seeds"]] == [
        ("all", 0.5, 1), ("unstructured", 0.5, 1)]
    for r in report["sweep_seeds"]:
        point = out / "sweep_seeds" / ("%s_0.5_seed_1" % r["method"])
        scores = {name: json.loads((point / ("%s_eval.json" % name)).read_text())
                  for name in ("pruned", "control")}
        assert (r["pruned"], r["control"]) == (scores["pruned"]["miou"], scores["control"]["miou"])
        assert "seed: 1" in (point / "pruned" / "config.yaml").read_text().splitlines()
    assert "## Sweep points over fine-tuning seeds" in table
    vs_control = report["targets"][-1]  # the pruned row against its control
    assert "the control" in vs_control["what"]
    summary = report["seed_summary"]  # the pruned row and seed 1: both runs of the recipe
    assert summary["runs"] == 2
    assert summary["met"] == (vs_control["miou_met"] and report["class_target"]["met"]) + seeded["met"]
    assert summary["mean_change"] == pytest.approx((vs_control["miou_change"] + seeded["change"]) / 2)
    assert "hold on %d of 2 runs" % summary["met"] in table

    with open(out / "sweep" / "sweep.csv") as handle:
        sweep = list(csv.DictReader(handle))
    assert [int(r["images"]) for r in sweep] == [TEST_SET_COUNT] * len(sweep)
    methods = {r["method"]: r for r in sweep}
    assert set(methods) == {"none", "all", "unstructured"}
    assert methods["unstructured"]["params"] == methods["none"]["params"]  # zeros, same shapes
    assert float(methods["all"]["param_sparsity"]) > 0.5
    for name in PLOTS:
        image = cv2.imread(str(out / "sweep" / name))
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 300, name
        assert "sweep/%s" % name in table


@pytest.mark.parametrize("text, message", [
    ("prune:\n  method: all\n  amout: 0.5\n", "unknown key.*amout.*section 'prune'"),
    ("prune:\n  amount: 1.5\n", "amount"),
    ("student:\n  overrides: {iterz: 3}\n", "iterz"),
    ("recovery:\n  lengths: [0, -5]\n", "section 'recovery': lengths .* -5"),
    ("prune:\n  iterative: 3\n  finetune_iters: 300\nrecovery:\n  lengths: [0, 2, 300]\n",
     r"section 'recovery': length 2: --finetune-iters 2 is fewer than one iteration per "
     r"--iterative step \(3\)"),
    ("recovery:\n  seeds: [1, two]\n", "section 'recovery': seeds must be a list of "
     "fine-tuning seeds"),
    ("prune:\n  finetune_iters: 0\nrecovery:\n  seeds: [1]\n",
     r"section 'recovery': seeds need a fine-tune to vary \(prune.finetune_iters is 0\)"),
    ("prune:\n  distil_from: itself\n",
     "section 'prune': distil_from must be one of teacher, unpruned, got 'itself'"),
    ("evaluate:\n  data: /nonexistent/test_set\n",
     "section 'evaluate': data: .*/nonexistent/test_set"),
], ids=["unknown key", "pruning amount", "training override", "recovery lengths",
        "recovery length under the pruning steps", "recovery seeds", "seeds without a fine-tune",
        "distillation source", "missing test set"])
def test_a_bad_config_fails_before_any_work(synth_dataset, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(ablation.AblationError, match=message):
        ablation.run_ablation(str(config), str(synth_dataset), str(out))
    assert not out.exists()


def test_class_target_holds_only_the_classes_the_control_segments_well():
    control = {"per_class_iou": {"background": 0.9, "flood/water/river/sea": 0.5,
                                 "vehicle": 0.2, "fire": None}}
    pruned = {"per_class_iou": {"background": 0.88, "flood/water/river/sea": 0.35,
                                "vehicle": 0.0, "fire": None}}
    rows = {r["class"]: r for r in recovery.class_comparison(pruned, control)}
    assert set(rows) == {"background", "flood/water/river/sea", "vehicle"}  # fire: absent
    assert rows["flood/water/river/sea"]["ratio"] == pytest.approx(0.7)
    assert rows["vehicle"]["held"] is False and rows["vehicle"]["met"] is True
    target = recovery.class_target(list(rows.values()))
    assert target["classes_held"] == ["background", "flood/water/river/sea"]
    assert target["failed"] == ["flood/water/river/sea"] and target["met"] is False
    pruned["per_class_iou"]["flood/water/river/sea"] = 0.4  # exactly 0.8x: kept
    assert recovery.class_target(recovery.class_comparison(pruned, control))["met"] is True


def test_pruning_teacher_is_the_teacher_the_unpruned_model_or_none(synth_dataset):
    config = ablation.load_ablation_config(QUICK)

    def teacher_of(**prune):
        config["prune"].update(prune)
        settings = ablation.AblationSettings.from_config(config, str(synth_dataset))
        return settings.pruning_teacher("teacher.st", "student_kd.st")

    assert teacher_of() == "teacher.st"
    assert teacher_of(distil_from="unpruned") == "student_kd.st"
    assert teacher_of(distil=False) is None


def test_resume_refuses_a_config_its_stages_were_not_made_with(synth_dataset, tmp_path):
    """OUT records the config it was started with; resuming with another pruning amount would
    reuse pruned models made with the old one, so it stops first, naming the key. Adding
    seeds only adds runs and is accepted."""
    out = tmp_path / "out"
    config = ablation.load_ablation_config(QUICK)
    ablation.AblationSettings.from_config(config, str(synth_dataset))
    out.mkdir()
    write_yaml_atomic(str(out / ablation.CONFIG_FILE), config)
    ablation.check_resume(config, str(out))  # the same config: nothing to refuse
    more_seeds = dict(config, recovery=dict(config["recovery"], seeds=[1, 2, 3]))
    ablation.check_resume(more_seeds, str(out))
    older = {section: dict(keys) for section, keys in config.items()}
    del older["prune"]["distil_from"], older["evaluate"]["data"]  # an OUT from before the keys
    write_yaml_atomic(str(out / ablation.CONFIG_FILE), older)
    ablation.check_resume(config, str(out))  # made with their defaults: nothing changed
    write_yaml_atomic(str(out / ablation.CONFIG_FILE), config)
    test_set = dict(config, evaluate=dict(config["evaluate"], data="runs/test_set"))
    with pytest.raises(ablation.AblationError, match=r"evaluate\.data: None -> 'runs/test_set'"):
        ablation.check_resume(test_set, str(out))  # the cached evaluations read another set

    changed = tmp_path / "changed.yaml"
    changed.write_text(open(QUICK).read().replace("  amount: 0.5", "  amount: 0.4"))
    assert ablation.load_ablation_config(str(changed))["prune"]["amount"] == 0.4
    (out / "teacher").mkdir()  # a finished-looking stage folder
    with pytest.raises(ablation.AblationError, match=r"prune\.amount: 0\.5 -> 0\.4.*new --out"):
        ablation.run_ablation(str(changed), str(synth_dataset), str(out), resume=True)
    assert sorted(os.listdir(out)) == [ablation.CONFIG_FILE, "teacher"]  # nothing ran
    assert ablation.load_ablation_config(str(out / ablation.CONFIG_FILE))["prune"]["amount"] == 0.5


def test_sweep_report_is_dated_and_lists_every_point():
    from training.lab import sweep
    from training.lab.settings import EvaluationSettings
    rows = [{"method": m, "amount": a, "params": p, "param_sparsity": 1 - p / 2e6, "gmacs": 0.5,
             "miou": 0.3, "dice": 0.4, "latency_ms": 10.0, "speedup": 1.0}
            for m, a, p in (("none", 0.0, 2e6), ("all", 0.5, 1e6), ("head", 0.5, 1.9e6))]
    text = sweep.report_markdown(rows, "python -m training sweep --checkpoint c.safetensors",
                                 "c.safetensors", "DATA", EvaluationSettings(threads=1))
    assert text.startswith("# Sparsity sweep\n")
    for line in ("- Date: ", "- Machine: ", "- Command: `python -m training sweep --checkpoint",
                 "- Models: pruned `c.safetensors`"):
        assert "\n" + line in text, line
    assert "| all | 0.50 | 1.00M | 0.50 |" in text and "| head | 0.50 | 1.90M |" in text
    assert all("![%s](%s)" % (name[:-4], name) in text for name in sweep.PLOTS)
