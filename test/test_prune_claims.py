"""Pruning keeps what it claims to keep, measured on a trained model with the user's commands.

The shipped checkpoint (models/default.safetensors, trained on synthetic scenes) is pruned
by ``python -m training prune`` with the default importance and fine-tuned briefly; the same
checkpoint is fine-tuned as long without pruning by ``python -m training train`` with the very
config the pruning run trained with (its config.yaml, only ``init`` changed): the control.
The same pruning with ``--importance random`` is the floor the default has to beat. Each model
is scored by ``training.evaluate`` on the val split of a synthetic set none of them was trained
on before, and the two pruned models also straight after pruning, where the importance shows
most. Bounds are the requirement's, set here. About 100 s on 2 busy cores (the two prune runs
side by side, then the control; no distillation, to keep it short).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "default.safetensors"
MAX_LOSS_VS_CONTROL = 0.02  # mIoU: pruned + fine-tuned against fine-tuned as long, unpruned
AMOUNT = 0.2  # of every unit kind (heads, MLP neurons, encoder filters, decoder channels)
# Measured at this amount (seed 7 scenes): control 0.161; default 0.140 straight after pruning,
# 0.1425 fine-tuned (-0.0185); random 0.088 straight after pruning, 0.128 fine-tuned.
MIN_LEAD_OVER_RANDOM_PRUNED = 0.02  # straight after pruning, before fine-tuning evens it out
ITERS = 40  # fine-tuning iterations, the pruned runs and the control alike
RUN_TIMEOUT_S = 420  # one run: ~85 s with three at once on 2 busy cores; pytest stops at 600

pytestmark = pytest.mark.slow


def _start(args, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two threads per run spin-wait on 2 cores
    handle = open(log, "w")
    try:
        return subprocess.Popen([sys.executable, "-m", "training"] + [str(a) for a in args],
                                cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    finally:
        handle.close()


def _finish(process: subprocess.Popen, log: Path) -> None:
    try:
        code = process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    assert code == 0, log.read_text()[-3000:]


def test_pruning_keeps_accuracy_and_beats_random_importance(tmp_path):
    from training.evaluate import Runtime, evaluate
    from training.synth import write_dataset

    data = write_dataset(tmp_path / "data", count=64, size=256, seed=7, val_fraction=0.5,
                         progress=False)
    runs = {}
    for name, importance in (("default", []), ("random", ["--importance", "random"])):
        out = tmp_path / name
        runs[name] = (_start(["prune", "--checkpoint", SHIPPED, "--data", data, "--out", out,
                              "--method", "all", "--amount", AMOUNT, "--finetune-iters", ITERS,
                              "--no-distil"] + importance, tmp_path / ("%s.log" % name)), out)
    for name, (process, _) in runs.items():
        _finish(process, tmp_path / ("%s.log" % name))
    control = _start(["train", "--config", tmp_path / "default" / "config.yaml", "--data", data,
                      "--out", tmp_path / "control", "init=%s" % SHIPPED],
                     tmp_path / "control.log")
    _finish(control, tmp_path / "control.log")

    def score(checkpoint: Path) -> float:
        return evaluate(str(checkpoint), str(data), "val",
                        Runtime(backend="pytorch", threads=1, warmup=0), progress=False)["miou"]
    miou = {name: score(tmp_path / name / "best.safetensors")
            for name in ("default", "random", "control")}
    pruned = {name: score(tmp_path / name / "pruned.safetensors") for name in ("default", "random")}
    print("mIoU straight after pruning %s; after %d iterations %s"
          % ({k: round(v, 4) for k, v in pruned.items()}, ITERS,
             {k: round(v, 4) for k, v in miou.items()}))
    assert miou["default"] >= miou["control"] - MAX_LOSS_VS_CONTROL, miou
    assert miou["default"] > miou["random"], miou
    assert pruned["default"] >= pruned["random"] + MIN_LEAD_OVER_RANDOM_PRUNED, pruned
