"""training.train: it learns, distils, resumes exactly (also after kill -9), runs under
torchrun with identical ranks, and stops with clear errors on bad input.

Real training steps on the synthetic fixture dataset (24 train / 8 val scenes of 128 px) at
64 px crops; the full recipes live in training/configs/.
"""
import csv
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lpcv_segmentation.model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from lpcv_segmentation.core.metrics import SegmentationMetrics
from lpcv_segmentation.model.segmodel import build_model
from killed_run import kill_training_when
from training.__main__ import main as cli
from training.data import SegmentationDataset
from training.distributed import ResumableBatchSampler, SeededSamples
from training.onnx_teacher import OnnxTeacher
from training.train import (atomic_torch_save, fit_schedule, load_teacher, lr_factor,
                            teacher_forward)

REPO = Path(__file__).resolve().parents[1]
STUDENT_YAML = str(REPO / "training" / "configs" / "student.yaml")
TEACHER_YAML = str(REPO / "training" / "configs" / "teacher.yaml")
# the smallest student at 64 px: each step takes well under a second on 2 cores
TINY = ["arch=mobilevit_xxs", "decoder_channels=16", "input_size=64", "crop_size=64",
        "batch_size=4", "workers=0", "warmup_iters=2", "lr=2e-3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def train_cli(data, out, *overrides, config=STUDENT_YAML, teacher=None, resume=False):
    argv = ["train", "--config", config, "--data", str(data), "--out", str(out)]
    argv += ["--teacher", str(teacher)] if teacher else []
    argv += ["--resume"] if resume else []
    return cli(argv + list(overrides))


def read_rows(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def state_dicts_equal(a_path, b_path, exact=True):
    a, _ = load_checkpoint(str(a_path))
    b, _ = load_checkpoint(str(b_path))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    if exact:
        return all(torch.equal(sa[k], sb[k]) for k in sa)
    return all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6, rtol=1e-5) for k in sa)


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


# --------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------
def test_sampler_starts_anywhere_and_splits_epochs_between_ranks():
    full = ResumableBatchSampler(10, batch_size=2, seed=3)
    stream = iter(full)
    first = [next(stream) for _ in range(12)]  # 5 batches per epoch: crosses two epochs
    resumed = iter(ResumableBatchSampler(10, batch_size=2, seed=3, start_iteration=7))
    assert [next(resumed) for _ in range(5)] == first[7:12]
    epoch0 = sorted(i for batch in first[:5] for _, i in batch)
    assert epoch0 == list(range(10))
    assert [i for _, i in first[0] + first[1]] != [i for _, i in first[5] + first[6]]
    ranks = [ResumableBatchSampler(10, 2, 3, rank=r, world_size=2) for r in range(2)]
    shares = [set(r.epoch_indices(0)) for r in ranks]
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        ResumableBatchSampler(3, batch_size=4, seed=0)


def test_samples_depend_only_on_seed_epoch_and_index(synth_dataset):
    from training.data import TrainTransform

    dataset = SegmentationDataset(synth_dataset, "train", transform=TrainTransform(64),
                                  validate=False)
    samples = SeededSamples(dataset, seed=5)
    a_image, a_label = samples[(2, 3)]
    torch.manual_seed(123)
    np.random.seed(7)
    b_image, b_label = samples[(2, 3)]
    assert torch.equal(a_image, b_image) and torch.equal(a_label, b_label)
    c_image, _ = samples[(3, 3)]
    assert not torch.equal(a_image, c_image)


def test_learning_rate_warms_up_then_decays_to_zero():
    f = [lr_factor(i, iters=100, warmup_iters=10, warmup_factor=0.1, power=1.0)
         for i in range(101)]
    assert f[0] == pytest.approx(0.1)
    assert f[5] == pytest.approx((1 - 0.05) * (0.1 + 0.9 * 0.5))
    assert f[10] == pytest.approx(0.9) and f[50] == pytest.approx(0.5) and f[100] == 0.0
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_schedules_that_would_silently_fail_are_fitted_with_a_note(synth_dataset, tmp_path,
                                                                   capsys):
    config = {"iters": 300, "warmup_iters": 1500, "warmup_factor": 1e-3, "poly_power": 1.0,
              "eval_every": 2000, "checkpoint_every": 500}
    notes = fit_schedule(config)
    assert config["warmup_iters"] == 30 and config["eval_every"] == 300
    assert config["checkpoint_every"] == 300 and len(notes) == 3
    assert "warmup_iters=1500 is more than a quarter of iters=300" in notes[0]
    # with the fitted warm-up the learning rate reaches (nearly) lr; unfitted it peaked at 0.05
    peak = max(lr_factor(i, 300, 30, 1e-3, 1.0) for i in range(300))
    assert peak > 0.85
    sane = {"iters": 300, "warmup_iters": 20, "warmup_factor": 1e-3, "poly_power": 1.0,
            "eval_every": 100, "checkpoint_every": None}
    assert fit_schedule(dict(sane)) == [] and fit_schedule(sane) == [] and sane["warmup_iters"] == 20
    # a run reports the change and saves the fitted schedule in its config.yaml
    run = tmp_path / "run"
    assert train_cli(synth_dataset, run, *TINY, "iters=2", "warmup_iters=1500",
                     "eval_every=50", "max_eval_images=2") == 0
    err = capsys.readouterr().err
    assert "note: warmup_iters=1500" in err and "note: eval_every=50 is beyond iters=2" in err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["warmup_iters"] == 0 and saved["eval_every"] == 2
    assert [r["iteration"] for r in read_rows(run)] == ["2"]


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.state.pt"
    atomic_torch_save({"iteration": 1, "w": torch.ones(3)}, path)
    with pytest.raises((AttributeError, pickle.PicklingError), match="pickle local object"):
        # a lambda cannot be pickled: torch.save fails after it has started writing
        atomic_torch_save({"iteration": 2, "w": torch.zeros(1000), "bad": lambda: 0}, path)
    assert torch.load(path, weights_only=True)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.state.pt"]


def test_teacher_is_frozen_and_resized_to_its_input(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "swin.safetensors"
    save_checkpoint(str(path), build_model("swinv2_tiny", decoder_channels=16, input_size=64))
    teacher = load_teacher(str(path), torch.device("cpu"))
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(2, 3, 96, 96, requires_grad=True)  # Swin takes 64x64 only
    out = teacher_forward(teacher, images, (96, 96))
    assert out["logits"].shape == (2, 14, 96, 96) and not out["logits"].requires_grad
    assert [f.shape[-1] for f in out["encoder"]] == [16, 8, 4, 2]


# --------------------------------------------------------------------------------------
# It learns
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_student_learns_far_above_all_background(synth_dataset, tmp_path):
    from training.evaluate import Runtime, evaluate

    run = tmp_path / "learn"
    rc = train_cli(synth_dataset, run, "arch=mobilevit_xxs", "decoder_channels=32",
                   "input_size=64", "crop_size=64", "batch_size=8", "workers=0", "iters=200",
                   "eval_every=100", "warmup_iters=10", "lr=3e-3", "loss=ohem",
                   "ohem_min_kept=5000", "scale_min=0.75", "scale_max=1.5")
    assert rc == 0
    rows = read_rows(run)
    assert [int(r["iteration"]) for r in rows] == [100, 200]
    final = {k: float(rows[-1][k]) for k in ("miou", "dice", "pixel_acc", "loss")}

    background = SegmentationMetrics()
    val = SegmentationDataset(synth_dataset, "val", validate=False)
    for i in range(len(val)):
        _, label = val.load(i)
        background.update(np.zeros_like(label), label)
    base = background.summary()
    assert final["miou"] > 1.6 * base["miou"], (final, base)
    assert final["dice"] > base["dice"] + 0.03, (final, base)
    assert final["pixel_acc"] > base["pixel_acc"] + 0.04, (final, base)
    assert final["loss"] < float(rows[0]["loss"])

    # the checkpoint records its training, and evaluate scores it as training validated it
    meta = read_metadata(str(run / "last.safetensors"))
    assert meta["training"]["iteration"] == 200
    assert meta["training"]["metrics"]["miou"] == pytest.approx(final["miou"])
    result = evaluate(str(run / "last.safetensors"), str(synth_dataset), "val",
                      Runtime(warmup=1), progress=False)
    assert result["miou"] == pytest.approx(final["miou"], abs=2e-3)
    assert result["dice"] == pytest.approx(final["dice"], abs=2e-3)


# --------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_distillation_losses_fall(synth_dataset, tmp_path):
    teacher_run = tmp_path / "teacher"
    # the teacher recipe (Swin-v2-T), shrunk: 128 px, few steps
    assert train_cli(synth_dataset, teacher_run, "decoder_channels=16", "input_size=128",
                     "crop_size=128", "batch_size=2", "iters=6", "eval_every=6", "workers=0",
                     "warmup_iters=1", config=TEACHER_YAML) == 0
    teacher = teacher_run / "last.safetensors"
    teacher_bytes = teacher.read_bytes()
    student_run = tmp_path / "student"
    # student crops of 64 px: the teacher sees them resized to its 128 px input
    assert train_cli(synth_dataset, student_run, *TINY, "iters=40", "eval_every=20",
                     "kd_mse_weight=1", "kd_kl_weight=0.5", "fm_weight=1", "fg_weight=1",
                     "fm_stages=[0,1]", "fg_stages=[2]", "kd_normalize=false",
                     "kd_pixels=all", teacher=teacher) == 0  # the paper's MSE
    rows = read_rows(student_run)
    assert len(rows) == 2
    for term in ("kd_mse", "kd_kl", "fm", "fg", "sup", "loss"):
        first, last = float(rows[0][term]), float(rows[1][term])
        assert np.isfinite(first) and last < first, (term, first, last)
    total = float(rows[1]["sup"]) + float(rows[1]["kd_mse"]) + 0.5 * float(rows[1]["kd_kl"]) \
        + float(rows[1]["fm"]) + float(rows[1]["fg"])
    assert float(rows[1]["loss"]) == pytest.approx(total, rel=1e-5)
    assert teacher.read_bytes() == teacher_bytes  # frozen: never written
    meta = read_metadata(str(student_run / "last.safetensors"))
    assert meta["training"]["teacher"] == str(teacher)
    assert meta["arch"] == "mobilevit_xxs"
    assert not any(k.startswith(("fm", "fg")) for k in
                   load_checkpoint(str(student_run / "last.safetensors"))[0].state_dict())


# --------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_stopped_and_resumed_run_equals_uninterrupted_run(synth_dataset, tiny_checkpoint,
                                                          tmp_path):
    # with a teacher and both feature heads, so their state and the masks' RNG are covered
    common = TINY + ["iters=10", "eval_every=4", "fm_weight=1", "fg_weight=1",
                     "fg_stages=[3]", "kd_kl_weight=0.5"]
    assert train_cli(synth_dataset, tmp_path / "a", *common, teacher=tiny_checkpoint) == 0
    assert train_cli(synth_dataset, tmp_path / "b", *common, "stop_after=6",
                     teacher=tiny_checkpoint) == 0
    assert read_metadata(str(tmp_path / "b" / "last.safetensors"))["training"]["iteration"] == 6
    # the resumed invocation gives only --resume: config and teacher come from the run
    assert cli(["train", "--data", str(synth_dataset), "--out", str(tmp_path / "b"),
                "--resume"]) == 0
    assert state_dicts_equal(tmp_path / "a" / "last.safetensors",
                             tmp_path / "b" / "last.safetensors")
    assert state_dicts_equal(tmp_path / "a" / "best.safetensors",
                             tmp_path / "b" / "best.safetensors")
    rows_a, rows_b = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    for row in rows_a + rows_b:
        row.pop("time_s")
    assert rows_a == rows_b and len(rows_a) == 3


@pytest.mark.slow
def test_kill_9_while_writing_checkpoints_leaves_a_resumable_last(synth_dataset, tmp_path):
    run = tmp_path / "run"

    def three_iterations_saved() -> bool:
        try:
            return read_metadata(str(run / "last.safetensors"))["training"]["iteration"] >= 3
        except Exception:  # not written yet
            return False
    # checkpoint after every step, so the process spends much of its time writing
    kill_training_when(["train", "--config", STUDENT_YAML, "--data", synth_dataset, "--out", run]
                       + TINY + ["iters=100000", "eval_every=100000", "checkpoint_every=1"],
                       subprocess_env(), tmp_path / "stderr.txt", three_iterations_saved,
                       timeout_s=240, settle_s=0.13)
    model, meta = load_checkpoint(str(run / "last.safetensors"))
    state = torch.load(run / "last.state.pt", map_location="cpu", weights_only=True)
    # last.safetensors is written first: at most one iteration ahead of the state file
    assert meta["training"]["iteration"] - state["iteration"] in (0, 1)
    stopped = state["iteration"]
    assert train_cli(synth_dataset, run, "iters=%d" % (stopped + 2), resume=True) == 0
    assert read_metadata(str(run / "last.safetensors"))["training"]["iteration"] == stopped + 2
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


# --------------------------------------------------------------------------------------
# torchrun
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_with_identical_weights(synth_dataset, tmp_path):
    run = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         "-m", "training", "train", "--config", STUDENT_YAML, "--data", str(synth_dataset),
         "--out", str(run)] + TINY + ["iters=6", "eval_every=3", "save_rank_weights=true"],
        cwd=str(REPO), env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    rank0, rank1 = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    last = load_checkpoint(str(run / "last.safetensors"))[0].state_dict()
    assert all(torch.equal(rank0[k], last[k]) for k in rank0)
    fresh = build_model("mobilevit_xxs", decoder_channels=16, input_size=64).state_dict()
    assert not torch.equal(fresh["classifier.weight"], rank0["classifier.weight"])  # it trained
    meta = read_metadata(str(run / "last.safetensors"))
    assert meta["training"]["world_size"] == 2
    assert len(read_rows(run)) == 2  # rank 0 alone writes the log


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(synth_dataset, tmp_path,
                                                                         capsys):
    run = tmp_path / "nan"
    # lr 1e30: the first step makes the weights huge, the second forward pass overflows
    rc = train_cli(synth_dataset, run, *TINY, "iters=20", "eval_every=10", "checkpoint_every=1",
                   "warmup_iters=0", "lr=1e30")
    assert rc == 1
    err = capsys.readouterr().err
    assert "loss is not finite at iteration 2" in err and str(run / "last.safetensors") in err
    model, meta = load_checkpoint(str(run / "last.safetensors"))
    assert meta["training"]["iteration"] == 1
    assert all(torch.isfinite(t).all() for t in model.state_dict().values()
               if t.is_floating_point())
    assert torch.load(run / "last.state.pt", weights_only=True)["iteration"] == 1


def test_corrupt_image_stops_before_training_naming_the_file(synth_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    bad = sorted((data / "IMG" / "train").iterdir())[3]
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rc = train_cli(data, tmp_path / "run", *TINY, "iters=2")
    assert rc == 1
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_teacher_errors_are_clear(synth_dataset, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    assert train_cli(synth_dataset, tmp_path / "r1", *TINY, "iters=2", teacher=missing) == 1
    assert "teacher checkpoint" in capsys.readouterr().err
    five = tmp_path / "five.safetensors"
    save_checkpoint(str(five), build_model("mobilevit_xxs", num_classes=5, decoder_channels=8,
                                           input_size=64))
    assert train_cli(synth_dataset, tmp_path / "r2", *TINY, "iters=2", teacher=five) == 1
    assert "predicts 5 classes" in capsys.readouterr().err


def test_feature_stages_the_encoders_lack_are_refused(synth_dataset, tiny_checkpoint, tmp_path,
                                                      capsys):
    rc = train_cli(synth_dataset, tmp_path / "r", *TINY, "iters=2", "fm_weight=1",
                   "fm_stages=[0,7]", teacher=tiny_checkpoint)
    assert rc == 1
    assert "fm_stages [7] out of range" in capsys.readouterr().err


def test_unknown_config_key_and_misuse_of_run_folders(synth_dataset, tmp_path, capsys):
    assert train_cli(synth_dataset, tmp_path / "r", *TINY, "iter=2") == 1
    assert "unknown config key 'iter'" in capsys.readouterr().err
    assert train_cli(synth_dataset, tmp_path / "empty", resume=True) == 1
    assert "nothing to resume" in capsys.readouterr().err
    run = tmp_path / "done"
    assert train_cli(synth_dataset, run, *TINY, "iters=1", "eval_every=1") == 0
    capsys.readouterr()
    assert train_cli(synth_dataset, run, *TINY, "iters=1") == 1  # would overwrite a run
    assert "--resume" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# ONNX teachers
# --------------------------------------------------------------------------------------
def test_onnx_teacher_gives_the_exported_models_logits(tiny_checkpoint, tiny_onnx):
    torch_teacher = load_teacher(str(tiny_checkpoint), torch.device("cpu"))
    onnx_teacher = load_teacher(str(tiny_onnx), torch.device("cpu"))
    assert isinstance(onnx_teacher, OnnxTeacher) and onnx_teacher.input_size == 128
    torch.manual_seed(0)
    images = torch.randn(3, 3, 96, 96)  # the ONNX file takes 1x3x128x128: resized, one by one
    out = teacher_forward(onnx_teacher, images, (80, 80))
    assert out["logits"].shape == (3, 14, 80, 80) and out["encoder"] is None
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(images, size=(128, 128), mode="bilinear",
                                                  align_corners=False)
        reference = torch.nn.functional.interpolate(torch_teacher(resized, full_res=True),
                                                    size=(80, 80), mode="bilinear",
                                                    align_corners=False)
    assert torch.allclose(out["logits"], reference, atol=1e-3, rtol=1e-3)


def test_student_distils_from_an_onnx_teacher(synth_dataset, tiny_onnx, tmp_path, capsys):
    run = tmp_path / "kd_onnx"
    assert train_cli(synth_dataset, run, *TINY, "iters=3", "eval_every=3", "max_eval_images=2",
                     teacher=tiny_onnx) == 0
    row = read_rows(run)[-1]
    assert "kd_mse" not in row  # the default distils with the KL term alone
    assert float(row["kd_kl"]) > 0 and np.isfinite(float(row["kd_kl"]))
    meta = load_checkpoint(str(run / "last.safetensors"))[1]
    assert meta["training"]["teacher"] == str(tiny_onnx)
    # feature distillation needs encoder features an ONNX file does not have
    capsys.readouterr()
    assert train_cli(synth_dataset, tmp_path / "fm", *TINY, "iters=2", "fm_weight=1",
                     teacher=tiny_onnx) == 1
    err = capsys.readouterr().err
    assert "ONNX teacher" in err and "fm_weight=0" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------
# The paper's recipe
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,arch", [("teacher", "swinv2_tiny"), ("student", "mobilevit_s")])
def test_paper_configs_build_their_models(name, arch):
    from training import config as config_lib
    from training.train import create_model
    path = REPO / "training" / "configs" / "paper" / (name + ".yaml")
    paper = config_lib.load_config(str(path))
    # the paper's schedule, as its code trained it
    assert (paper["arch"], paper["iters"], paper["batch_size"], paper["crop_size"]) == \
        (arch, 20000, 16, 512)
    assert paper["encoder_weights"] == "imagenet" and paper["amp"] is True
    assert (paper["optimizer"], paper["lr"], paper["poly_power"], paper["warmup_iters"]) == \
        ("sgd", 1e-3, 0.9, 1000)
    assert paper["fm_weight"] == paper["fg_weight"] == 0
    if name == "student":  # the paper's raw MSE on every pixel, not this project's default KL
        assert paper["kd_mse_weight"] == 1.0 and paper["kd_kl_weight"] == 0
        assert paper["kd_normalize"] is False and paper["kd_pixels"] == "all"
    # built at a tiny size, without the hub (encoder_weights=null)
    tiny = config_lib.load_config(str(path), ["input_size=64", "crop_size=64",
                                              "decoder_channels=16", "encoder_weights=null"])
    model = create_model(tiny).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64), full_res=True).shape == (1, 14, 64, 64)
    assert model.arch == arch


def test_scores_before_distilling_are_reported_and_a_teacher_no_better_is_warned(
        synth_dataset, tiny_checkpoint, tmp_path, capsys):
    run = tmp_path / "self_kd"
    # the student starts from the teacher's own weights: the teacher cannot be better
    assert train_cli(synth_dataset, run, *TINY, "iters=1", "eval_every=1", "max_eval_images=4",
                     "init=%s" % tiny_checkpoint, teacher=tiny_checkpoint) == 0
    err = capsys.readouterr().err
    scores = read_metadata(str(run / "last.safetensors"))["training"]["before_distilling"]
    assert scores["teacher_miou"] == pytest.approx(scores["student_miou"])
    assert "before distilling: val mIoU teacher %.4f, student %.4f" % (
        scores["teacher_miou"], scores["student_miou"]) in err
    assert "warning: the teacher (val mIoU" in err and "is not better than the student" in err
