"""`python -m training default-model --quick`: the whole chain that builds the shipped model
(synth, teacher, distilled student, pruning, ONNX fp32/fp16 export, evaluation, card) at tiny
sizes, each stage through the repository's real command."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_chain_builds_a_model_and_its_card(tmp_path):
    out, work = tmp_path / "models", tmp_path / "work"
    result = subprocess.run([sys.executable, "-m", "training", "default-model", "--quick",
                             "--out", out, "--work", work], cwd=ROOT, capture_output=True,
                            text=True, timeout=480)  # with the second run, under pytest's 600 s
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"default.onnx", "default_fp16.onnx",
                                               "default.safetensors", "default_model.json",
                                               "README.md"}
    report = json.loads((out / "default_model.json").read_text())
    assert [s["stage"] for s in report["stages"]] == [
        "data", "teacher", "student", "prune", "export_fp32", "export_fp16", "checkpoint",
        "evaluate_teacher", "evaluate_student", "evaluate_pruned", "evaluate_onnx_fp32",
        "evaluate_onnx_fp16"]
    student_command = report["stages"][2]["command"]
    assert "--teacher" in student_command  # distilled
    prune = report["prune"]
    assert prune["after"]["params"] < prune["before"]["params"]
    evaluations = report["evaluations"]
    assert evaluations["onnx_fp32"]["params"] == prune["after"]["params"]
    assert report["export"]["fp16"]["precision"] == "fp16"

    from lpcv_segmentation.runtime.segmenter import Segmenter
    segmenter = Segmenter(str(out / "default.onnx"))
    assert segmenter.input_size == 64  # the quick settings
    # logits left at upernet_lite's stride (export.output_stride: native), and the shipped
    # checkpoint records it, so both back ends return the same logits
    assert segmenter.output_stride == 8 and report["export"]["fp32"]["output_stride"] == 8
    checkpoint = Segmenter(str(out / "default.safetensors"))
    assert checkpoint.output_stride == 8
    blank = np.zeros((64, 64, 3), np.uint8)
    x = segmenter.preprocess(blank)
    assert checkpoint.infer(x).shape == segmenter.infer(x).shape == (1, 14, 8, 8)
    assert segmenter.segment(blank).labels.shape == (64, 64)

    card = (out / "README.md").read_text()
    assert "trained on synthetic scenes only" in card
    assert "`--quick` run" in card and "python -m training default-model --quick" in card
    assert "%.3f" % evaluations["onnx_fp32"]["miou"] in card
    assert "Train on the real LPCV 2023 data" in card

    # Nothing is redone over a finished build unless asked.
    again = subprocess.run([sys.executable, "-m", "training", "default-model", "--quick",
                            "--out", out, "--work", work], cwd=ROOT, capture_output=True,
                           text=True, timeout=90)
    assert again.returncode == 1 and "--resume" in again.stderr


def test_quick_refuses_to_overwrite_the_shipped_model(tmp_path):
    # In a copy of the code, so that a broken refusal overwrites the copy's models/ folder,
    # never the committed model.
    sandbox = tmp_path / "repo"
    for package in ("training", "lpcv_segmentation"):
        shutil.copytree(ROOT / package, sandbox / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shipped = sandbox / "models" / "default.onnx"
    shipped.parent.mkdir()
    shipped.write_bytes(b"the shipped model")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "training", "default-model", "--quick"],
                            cwd=sandbox, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "another --out than %s" % (sandbox / "models") in result.stderr
    assert [p.name for p in shipped.parent.iterdir()] == ["default.onnx"]
    assert shipped.read_bytes() == b"the shipped model"
    assert not (sandbox / "runs").exists()  # refused before any work
