"""read_label_png on real PNG files written by OpenCV and by Pillow."""
import cv2
import numpy as np
import pytest
from PIL import Image

from lpcv_segmentation.core.labels_io import LabelFileError, read_label_png


@pytest.fixture
def labels():
    rng = np.random.default_rng(3)
    out = rng.integers(0, 14, (20, 30), dtype=np.uint8)
    out[0, :5] = 255
    return out


def test_greyscale_png_round_trips(tmp_path, labels):
    path = str(tmp_path / "grey.png")
    cv2.imwrite(path, labels)
    got = read_label_png(path)
    assert got.dtype == np.uint8 and got.shape == (20, 30)
    np.testing.assert_array_equal(got, labels)


def test_rgb_png_from_pillow_gives_channel_0_red(tmp_path, labels):
    rgb = np.stack([labels, np.full_like(labels, 7), np.full_like(labels, 3)], axis=-1)
    path = str(tmp_path / "rgb.png")
    Image.fromarray(rgb, "RGB").save(path)
    np.testing.assert_array_equal(read_label_png(path), labels)
    rgba = np.concatenate([rgb, np.full_like(labels, 200)[..., None]], axis=-1)
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(read_label_png(path), labels)


def test_colour_png_from_opencv_gives_the_channel_stored_first(tmp_path, labels):
    # OpenCV writes BGR arrays as RGB files: the index in array channel 2 is the file's red.
    bgr = np.stack([np.full_like(labels, 9), np.full_like(labels, 4), labels], axis=-1)
    path = str(tmp_path / "bgr.png")
    cv2.imwrite(path, bgr)
    assert np.array(Image.open(path))[..., 0].tolist() == labels.tolist()
    np.testing.assert_array_equal(read_label_png(path), labels)


def test_grey_with_alpha_and_16_bit_pngs(tmp_path, labels):
    path = str(tmp_path / "la.png")
    Image.fromarray(np.stack([labels, np.full_like(labels, 99)], axis=-1), "LA").save(path)
    np.testing.assert_array_equal(read_label_png(path), labels)
    path16 = str(tmp_path / "16.png")
    cv2.imwrite(path16, labels.astype(np.uint16))
    got = read_label_png(path16)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, labels)


def test_values_out_of_range_are_refused_naming_file(tmp_path, labels):
    path = str(tmp_path / "bad.png")
    bad = labels.copy()
    bad[5, 5] = 14
    cv2.imwrite(path, bad)
    with pytest.raises(LabelFileError, match=r"bad\.png: values out of range \(14\)"):
        read_label_png(path)
    cv2.imwrite(path, (labels.astype(np.uint16) + (labels == 3) * 297).astype(np.uint16))  # 300
    with pytest.raises(LabelFileError, match=r"bad\.png: .*300"):
        read_label_png(path)
    cv2.imwrite(path, labels)  # holds 255: a label may, a prediction may not
    with pytest.raises(LabelFileError, match=r"bad\.png: .*\(255\)"):
        read_label_png(path, ignore_index=None)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not a png at all", "cannot be decoded"),
    ("truncated", "cannot be decoded"),
    ("palette", "palette"),
])
def test_unreadable_files_are_refused_naming_file(tmp_path, labels, content, message):
    path = str(tmp_path / "label_0007.png")
    if content == "truncated":
        ok, data = cv2.imencode(".png", labels)
        content = data.tobytes()[:60]
    if content == "palette":
        image = Image.fromarray(labels.clip(0, 13), "L").convert("P")
        image.save(path)
    elif content is not None:
        with open(path, "wb") as f:
            f.write(content)
    with pytest.raises(LabelFileError, match=r"label_0007\.png: .*" + message):
        read_label_png(path)
