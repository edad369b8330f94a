"""The synthetic disaster-scene generator: determinism, class coverage and frequencies,
the dataset it writes, and its command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lpcv_segmentation.core.classes import CLASS_NAMES, NUM_CLASSES, class_id
from training.synth import (MARKER_FILE, SynthError, colour_only_miou, render_scene, scene_seed,
                            split_counts, write_dataset)

REPO = Path(__file__).resolve().parents[1]
PERSON, VEHICLE, FIRE = class_id("person"), class_id("vehicle"), class_id("fire/flare")

SURVEY_SCENES = 300
SURVEY_SIZE = 128


@pytest.fixture(scope="module")
def survey():
    """Per-scene class pixel counts over a few hundred small scenes (about 2 s)."""
    counts = np.zeros((SURVEY_SCENES, NUM_CLASSES), np.int64)
    for i in range(SURVEY_SCENES):
        _, label = render_scene(scene_seed(0, i), SURVEY_SIZE)
        counts[i] = np.bincount(label.ravel(), minlength=NUM_CLASSES)
    return counts


def test_scene_shapes_and_values():
    rgb, label = render_scene(5, 96)
    assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
    assert label.shape == (96, 96) and label.dtype == np.uint8
    assert int(label.max()) < NUM_CLASSES
    assert rgb.std() > 5  # a picture, not a flat fill


def test_same_seed_same_scene_different_seed_different_scene():
    a_rgb, a_label = render_scene(7, 128)
    b_rgb, b_label = render_scene(7, 128)
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_label, b_label)
    c_rgb, c_label = render_scene(8, 128)
    assert not np.array_equal(a_rgb, c_rgb)
    assert not np.array_equal(a_label, c_label)


def test_layout_depends_on_seed_not_size():
    _, small = render_scene(11, 128)
    _, large = render_scene(11, 256)
    shrunk = cv2.resize(large, (128, 128), interpolation=cv2.INTER_NEAREST_EXACT)
    assert (shrunk == small).mean() > 0.9


def test_bad_arguments_are_refused():
    with pytest.raises(SynthError, match="seed"):
        render_scene(-1, 64)
    with pytest.raises(SynthError, match="size"):
        render_scene(0, 4)


def test_every_class_appears_across_a_few_hundred_scenes(survey):
    images_with = (survey > 0).sum(axis=0)
    missing = [CLASS_NAMES[k] for k in range(NUM_CLASSES) if images_with[k] == 0]
    assert not missing, "classes never drawn in %d scenes: %s" % (SURVEY_SCENES, missing)


def test_class_frequencies_look_like_the_real_data(survey):
    share = survey.sum(axis=0) / survey.sum()
    # Background holds most pixels; the rare classes are a tiny share of them.
    assert share.argmax() == 0 and share[0] > 0.5
    for k in (PERSON, VEHICLE, FIRE):
        assert share[k] < 0.005, (CLASS_NAMES[k], share[k])
    # People and vehicles are small in every scene that has them, and absent from many.
    per_image = survey / survey.sum(axis=1, keepdims=True)
    for k in (PERSON, VEHICLE):
        assert per_image[:, k].max() < 0.02, CLASS_NAMES[k]
        assert (survey[:, k] == 0).mean() > 0.2, CLASS_NAMES[k]
    # Fire appears in a minority of scenes only.
    assert (survey[:, FIRE] > 0).mean() < 0.4


def test_colour_alone_does_not_solve_it():
    """The best colour-only classifier (a lookup table from quantised RGB to the most common
    class, fitted on 150 scenes) scores a low mean IoU on 50 others."""
    fit = (render_scene(scene_seed(1, i), 96) for i in range(150))
    held_out = (render_scene(scene_seed(1, i), 96) for i in range(150, 200))
    assert colour_only_miou(fit, held_out) < 0.35


def test_colour_only_baseline_can_tell_when_colour_suffices():
    """The same measure scores near 1 on scenes painted in one colour per class."""
    colours = np.random.default_rng(0).integers(0, 256, (NUM_CLASSES, 3)).astype(np.uint8)

    def painted(seed):
        _, label = render_scene(seed, 64)
        return colours[label], label

    fit = (painted(i) for i in range(60))
    held_out = (painted(i) for i in range(60, 80))
    assert colour_only_miou(fit, held_out) > 0.95


def test_write_dataset_layout_and_content(tmp_path):
    root = write_dataset(tmp_path / "ds", count=10, size=64, seed=3, val_fraction=0.2,
                         progress=False)
    assert split_counts(10, 0.2) == {"train": 8, "val": 2}
    for split, n in (("train", 8), ("val", 2)):
        images = sorted(p.name for p in (root / "IMG" / split).iterdir())
        labels = sorted(p.name for p in (root / "GT" / split).iterdir())
        assert images == labels == ["%s_%04d.png" % (split, i) for i in range(n)]
    # Files hold exactly the rendered scenes (PNG is lossless); labels are mono PNGs.
    # Scene seeds run over train first, then val.
    for split, i, index in (("train", 0, 0), ("train", 7, 7), ("val", 0, 8), ("val", 1, 9)):
        rgb, label = render_scene(scene_seed(3, index), 64)
        name = "%s_%04d.png" % (split, i)
        on_disk = cv2.imread(str(root / "IMG" / split / name), cv2.IMREAD_COLOR)[..., ::-1]
        stored = cv2.imread(str(root / "GT" / split / name), cv2.IMREAD_UNCHANGED)
        assert stored.ndim == 2
        assert np.array_equal(on_disk, rgb) and np.array_equal(stored, label)
    marker = json.loads((root / MARKER_FILE).read_text())
    assert marker["synthetic"] is True and marker["seed"] == 3 and marker["count"] == 10


def test_rewriting_replaces_own_output_but_never_foreign_pngs(tmp_path):
    root = write_dataset(tmp_path / "ds", count=6, size=32, seed=0, progress=False)
    write_dataset(root, count=3, size=32, seed=0, val_fraction=0.0, progress=False)
    assert len(list((root / "IMG" / "train").glob("*.png"))) == 3
    assert not list((root / "IMG" / "val").glob("*.png"))

    foreign = tmp_path / "real"
    (foreign / "IMG" / "train").mkdir(parents=True)
    cv2.imwrite(str(foreign / "IMG" / "train" / "train_0000.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SynthError, match=str(foreign)):
        write_dataset(foreign, count=2, size=32, seed=0, progress=False)
    assert (foreign / "IMG" / "train" / "train_0000.png").is_file()


def _run_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "training", "synth"] + list(args), cwd=str(REPO),
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_writes_dataset_and_preview(tmp_path):
    out, preview = tmp_path / "cli", tmp_path / "sheet.png"
    result = _run_cli("--out", str(out), "--count", "5", "--size", "64", "--seed", "2",
                      "--val-fraction", "0.4", "--preview", str(preview), "--stats")
    assert result.returncode == 0, result.stderr
    assert "3 train + 2 val" in result.stdout
    # --stats reads the dataset back through training.data and reports every class.
    assert "train: 3 images, validated" in result.stdout
    assert all(name in result.stdout for name in CLASS_NAMES)
    assert "render_scene at 64 px" in result.stdout
    assert len(list((out / "IMG" / "train").glob("*.png"))) == 3
    assert len(list((out / "GT" / "val").glob("*.png"))) == 2
    sheet = cv2.imread(str(preview), cv2.IMREAD_COLOR)
    assert sheet is not None and sheet.shape[0] > 2 * 192  # scene row, label row, legend
    # The same seed from the library gives the same first scene.
    rgb, _ = render_scene(scene_seed(2, 0), 64)
    assert np.array_equal(cv2.imread(str(out / "IMG" / "train" / "train_0000.png"))[..., ::-1],
                          rgb)


def test_cli_val_fraction_one_writes_a_test_set(tmp_path):
    """Every scene in val (an evaluation set no run trains on); the preview shows val scenes."""
    out, preview = tmp_path / "test_set", tmp_path / "sheet.png"
    result = _run_cli("--out", str(out), "--count", "3", "--size", "32", "--seed", "5",
                      "--val-fraction", "1", "--preview", str(preview))
    assert result.returncode == 0, result.stderr
    assert "0 train + 3 val" in result.stdout
    assert not list((out / "IMG" / "train").glob("*.png"))
    assert len(list((out / "GT" / "val").glob("*.png"))) == 3
    assert cv2.imread(str(preview), cv2.IMREAD_COLOR) is not None
    result = _run_cli("--out", str(tmp_path / "x"), "--count", "3", "--val-fraction", "1.5")
    assert result.returncode == 1 and "val_fraction must be in [0, 1], got 1.5" in result.stderr


def test_cli_bad_argument_is_one_clear_error(tmp_path):
    result = _run_cli("--out", str(tmp_path / "x"), "--count", "0")
    assert result.returncode == 1
    assert "count must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help():
    result = _run_cli("--help")
    assert result.returncode == 0
    for flag in ("--out", "--count", "--size", "--seed", "--val-fraction", "--preview"):
        assert flag in result.stdout
