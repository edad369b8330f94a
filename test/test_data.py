"""The dataset reader: finding the organisers' layout, validation errors that name the file,
reading the synthetic generator's output back, and augmentation that keeps image and label
aligned."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from training.data import (DatasetError, EvalTransform, SegmentationDataset, TrainTransform,
                           find_pairs, validate_pairs)
from training.synth import render_scene, scene_seed, write_dataset

# ImageNet statistics, which every model here is normalised with (stated here, not imported,
# so a wrong constant in the code cannot undo itself in the test).
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _copy_split(src_root: Path, split: str, dst_base: Path, label_dir: str) -> None:
    shutil.copytree(src_root / "IMG" / split, dst_base / "IMG" / split)
    shutil.copytree(src_root / "GT" / split, dst_base / label_dir / split)


@pytest.fixture
def real_layout(synth_dataset, tmp_path) -> Path:
    """The synthetic data arranged as the organisers released it, under one parent folder."""
    _copy_split(synth_dataset, "train", tmp_path / "LPCVC_Train_Updated", "GT_Updated")
    _copy_split(synth_dataset, "val", tmp_path / "LPCVC_Val", "GT")
    return tmp_path


@pytest.fixture
def small_copy(synth_dataset, tmp_path) -> Path:
    """A writable copy of the fixture's val split (8 images) to break on purpose."""
    _copy_split(synth_dataset, "val", tmp_path / "ds", "GT")
    return tmp_path / "ds"


# --------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------
def test_find_pairs_flat_layout(synth_dataset):
    train, val = find_pairs(synth_dataset, "train"), find_pairs(synth_dataset, "val")
    assert len(train) == 24 and len(val) == 8
    for image, label in train + val:
        assert image.name == label.name and label.parent.parent.name == "GT"
    assert [p[0].name for p in train] == ["train_%04d.png" % i for i in range(24)]


def test_find_pairs_real_layout_one_level_down(real_layout):
    train = find_pairs(real_layout, "train")
    val = find_pairs(real_layout, "val")
    assert len(train) == 24 and len(val) == 8
    assert train[0][1] == real_layout / "LPCVC_Train_Updated/GT_Updated/train/train_0000.png"
    assert val[0][1] == real_layout / "LPCVC_Val/GT/val/val_0000.png"
    # The folder holding IMG/ directly works too.
    assert find_pairs(real_layout / "LPCVC_Val", "val") == val


def test_updated_labels_win_over_old_ones(small_copy):
    shutil.copytree(small_copy / "GT" / "val", small_copy / "GT_Updated" / "val")
    assert all(label.parent.parent.name == "GT_Updated"
               for _, label in find_pairs(small_copy, "val"))


def test_missing_folders_are_named(tmp_path, small_copy):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        find_pairs(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match=r"no IMG/train folder") as err:
        find_pairs(small_copy, "train")
    assert str(small_copy) in str(err.value)
    shutil.rmtree(small_copy / "GT")
    with pytest.raises(DatasetError, match="no label folder") as err:
        find_pairs(small_copy, "val")
    assert str(small_copy / "GT_Updated" / "val") in str(err.value)


def test_two_candidate_folders_are_ambiguous(synth_dataset, tmp_path):
    for name in ("a", "b"):
        _copy_split(synth_dataset, "val", tmp_path / name, "GT")
    with pytest.raises(DatasetError, match="several IMG/val folders"):
        find_pairs(tmp_path, "val")


# --------------------------------------------------------------------------------------
# Validation: each problem stops with an error naming the file
# --------------------------------------------------------------------------------------
def _remove_label(root):
    path = root / "GT/val/val_0003.png"
    path.unlink()
    return path, "label missing"


def _corrupt_image(root):
    path = root / "IMG/val/val_0002.png"
    path.write_bytes(path.read_bytes()[:60])  # truncated in the middle of the header chunks
    return path, "cannot be read"


def _corrupt_label(root):
    path = root / "GT/val/val_0005.png"
    path.write_bytes(b"not a png at all")
    return path, "cannot be decoded"


def _shrink_label(root):
    path = root / "GT/val/val_0001.png"
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), label[:100])
    return path, "label is 128x100 but its image"


def _bad_label_value(root):
    path = root / "GT/val/val_0006.png"
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    label[5, 5] = NUM_CLASSES  # 14: not a class and not the ignore value
    cv2.imwrite(str(path), label)
    return path, "values out of range \\(14\\)"


@pytest.mark.parametrize("breakage", [_remove_label, _corrupt_image, _corrupt_label,
                                      _shrink_label, _bad_label_value])
def test_validation_names_the_bad_file(small_copy, breakage):
    path, reason = breakage(small_copy)
    with pytest.raises(DatasetError, match=reason) as err:
        SegmentationDataset(small_copy, "val", progress=False)
    assert str(path) in str(err.value)
    assert err.value.path == path
    assert isinstance(err.value, ValueError)


def test_validation_accepts_ignore_value_and_lists_further_problems(small_copy):
    path = small_copy / "GT/val/val_0000.png"
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    label[:10] = IGNORE_INDEX
    cv2.imwrite(str(path), label)
    validate_pairs(find_pairs(small_copy, "val"), progress=False)  # 255 is allowed

    first, _ = _remove_label(small_copy)
    second, _ = _bad_label_value(small_copy)
    with pytest.raises(DatasetError) as err:
        validate_pairs(find_pairs(small_copy, "val"), progress=False)
    assert err.value.path == first
    assert "1 more problem" in str(err.value) and str(second) in str(err.value)


# --------------------------------------------------------------------------------------
# Reading the generator's output back
# --------------------------------------------------------------------------------------
def test_reader_reads_generator_output_exactly(synth_dataset):
    ds = SegmentationDataset(synth_dataset, "val", progress=False)
    assert len(ds) == 8 and ds.names[0] == "val_0000.png"
    rgb, label = ds.load(0)
    expected_rgb, expected_label = render_scene(scene_seed(0, 24), 128)  # val follows 24 train
    assert np.array_equal(rgb, expected_rgb) and np.array_equal(label, expected_label)
    image, target = ds[0]  # no transform: native size, normalised
    assert image.dtype == torch.float32 and image.shape == (3, 128, 128)
    assert target.dtype == torch.int64 and target.shape == (128, 128)
    mean, std = np.array(MEAN), np.array(STD)
    restored = (image.numpy().transpose(1, 2, 0) * std + mean) * 255
    assert np.abs(restored - rgb).max() < 1e-3
    assert torch.equal(target, torch.from_numpy(label.astype(np.int64)))


def test_reader_real_layout_matches_flat(synth_dataset, real_layout):
    flat = SegmentationDataset(synth_dataset, "train", progress=False)
    nested = SegmentationDataset(real_layout, "train", progress=False)
    assert len(flat) == len(nested) == 24
    for i in (0, 23):
        a, b = flat.load(i), nested.load(i)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_three_channel_label_uses_channel_0(small_copy):
    path = small_copy / "GT/val/val_0004.png"
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    # File channel 0 (red) holds the index; green and blue hold values that are not classes.
    bgr = np.dstack([np.full_like(label, 200), np.full_like(label, 77), label])
    cv2.imwrite(str(path), bgr)
    ds = SegmentationDataset(small_copy, "val", progress=False)
    assert np.array_equal(ds.load(4)[1], label)


def test_every_class_read_back_across_a_few_hundred_generated_images(tmp_path):
    root = write_dataset(tmp_path / "survey", count=300, size=128, seed=0, progress=False)
    pixels = np.zeros(NUM_CLASSES, np.int64)
    for split in ("train", "val"):
        ds = SegmentationDataset(root, split, progress=False)
        for i in range(len(ds)):
            pixels += np.bincount(ds.load(i)[1].ravel(), minlength=NUM_CLASSES)
    missing = [CLASS_NAMES[k] for k in range(NUM_CLASSES) if pixels[k] == 0]
    assert not missing, missing


def test_dataloader_workers_are_repeatable_with_torch_seed(synth_dataset):
    ds = SegmentationDataset(synth_dataset, "train", TrainTransform(64), progress=False)

    def one_epoch():
        torch.manual_seed(123)
        loader = DataLoader(ds, batch_size=6, num_workers=2, shuffle=True)
        return [(x.clone(), y.clone()) for x, y in loader]

    first, second = one_epoch(), one_epoch()
    assert len(first) == 4
    assert first[0][0].shape == (6, 3, 64, 64) and first[0][1].shape == (6, 64, 64)
    for (xa, ya), (xb, yb) in zip(first, second):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    torch.manual_seed(124)
    other = [y for _, y in DataLoader(ds, batch_size=6, num_workers=2, shuffle=True)]
    assert not all(torch.equal(a, b) for a, b in zip([y for _, y in first], other))


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------
# Distinct colours for a constructed image whose label can be read back from its colours.
COLORS = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220], [230, 230, 40],
                   [200, 40, 200], [40, 210, 210]], np.uint8)
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _blocks(size=160, block=20, seed=0):
    """A label of square blocks of classes 0..5 and the image painted in their colours."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, len(COLORS), (size // block, size // block)).astype(np.uint8)
    label = np.kron(cells, np.ones((block, block), np.uint8))
    return COLORS[label], label


def _label_from_colors(image_chw):
    rgb = image_chw.transpose(1, 2, 0) * 255.0
    distance = ((rgb[:, :, None, :] - COLORS[None, None].astype(np.float32)) ** 2).sum(-1)
    return distance.argmin(-1)


def test_train_transform_keeps_image_and_label_aligned():
    image, label = _blocks()
    transform = TrainTransform(96, scale=(0.5, 2.0), hflip=0.5, jitter=None, **PLAIN)
    for seed in range(12):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 96, 96) and out_label.shape == (96, 96)
        derived = _label_from_colors(out_image)
        # Compare away from block edges, where bilinear resizing blends two colours.
        valid = out_label != IGNORE_INDEX
        uniform = cv2.erode(out_label.astype(np.uint8), np.ones((3, 3))) == \
            cv2.dilate(out_label.astype(np.uint8), np.ones((3, 3)))
        check = valid & uniform
        assert check.sum() > 500
        assert (derived[check] == out_label[check]).mean() > 0.99, seed


def test_flip_mirrors_image_and_label_together():
    image, label = _blocks(seed=1)
    kept = TrainTransform(96, hflip=0.0, **PLAIN)(image, label, np.random.default_rng(5))
    flipped = TrainTransform(96, hflip=1.0, **PLAIN)(image, label, np.random.default_rng(5))
    assert np.array_equal(flipped[0], kept[0][:, :, ::-1])
    assert np.array_equal(flipped[1], kept[1][:, ::-1])


def test_crop_padding_is_ignore_and_mean_colour():
    image, label = _blocks()
    transform = TrainTransform(96, scale=(0.5, 0.5), hflip=0.0)  # resized to 48: needs padding
    out_image, out_label = transform(image, label, np.random.default_rng(0))
    assert (out_label[48:, :] == IGNORE_INDEX).all() and (out_label[:, 48:] == IGNORE_INDEX).all()
    assert (out_label[:48, :48] != IGNORE_INDEX).all()
    assert np.abs(out_image[:, 48:, :]).max() < 0.01  # mean colour normalises to zero
    assert np.abs(out_image[:, :48, :48]).max() > 0.5


def test_train_transform_is_deterministic_for_a_generator():
    image, label = _blocks(seed=2)
    transform = TrainTransform(64)
    a = transform(image, label, np.random.default_rng(9))
    b = transform(image, label, np.random.default_rng(9))
    c = transform(image, label, np.random.default_rng(10))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_colour_jitter_changes_colours_not_geometry():
    image, label = _blocks(seed=3)
    plain = TrainTransform(64, jitter=None)(image, label, np.random.default_rng(4))
    jittered = TrainTransform(64, jitter=(0.4, 0.4, 0.4, 0.05))(image, label,
                                                                np.random.default_rng(4))
    assert np.array_equal(plain[1], jittered[1])
    assert not np.allclose(plain[0], jittered[0])


def test_eval_transform_is_a_plain_resize():
    image, label = _blocks(size=160, block=1)  # a different class in every pixel
    out_image, out_label = EvalTransform(80, **PLAIN)(image, label)
    assert out_image.shape == (3, 80, 80) and out_label.dtype == np.int64
    assert np.array_equal(out_label, label[1::2, 1::2])  # nearest, sampled at pixel centres
    expected = cv2.resize(image, (80, 80), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out_image.transpose(1, 2, 0) * 255 - expected).max() < 1e-3
    full_image, full_label = EvalTransform(80, resize_label=False)(image, label)
    assert full_image.shape == (3, 80, 80) and full_label.shape == (160, 160)
