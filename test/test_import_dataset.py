"""training.import_dataset: colour- and index-coded labels become LPCV class indices in the
LPCV layout that training reads; bad values stop with the file and value, leaving nothing."""
import json
import shlex
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
import yaml

from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX
from lpcv_segmentation.core.labels_io import read_label_png
from training.__main__ import main as cli
from training.data import SegmentationDataset
from training.import_dataset import read_mapping

REPO = Path(__file__).resolve().parents[1]
WATER, ROAD, BUILDING = (CLASS_NAMES.index(n) for n in
                         ("flood/water/river/sea", "road/railway/bridge", "building_undamaged"))
RGB_MAPPING = {"encoding": "rgb", "classes": [
    {"value": [28, 42, 168], "class": "flood/water/river/sea"},
    {"value": [128, 64, 128], "class": "road/railway/bridge"},
    {"value": [0, 0, 0], "class": "background"},
    {"value": [255, 255, 255], "class": "ignore"}]}


def write_rgb_source(root, count=5, size=(40, 30), odd=None):
    """Images <stem>.jpg and colour labels <stem>_lab.png: water left, road right, a white
    (ignored) corner; ``odd`` paints one pixel of the third label with that colour."""
    images, labels = root / "img", root / "lab"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    w, h = size
    for i in range(count):
        rgb = np.full((h, w, 3), 20 * i, np.uint8)
        cv2.imwrite(str(images / ("%03d.jpg" % i)), rgb)
        lab = np.zeros((h, w, 3), np.uint8)
        lab[:, : w // 2] = (28, 42, 168)
        lab[:, w // 2:] = (128, 64, 128)
        lab[:3, :3] = (255, 255, 255)
        if odd is not None and i == 2:
            lab[h - 1, w - 1] = odd
        cv2.imwrite(str(labels / ("%03d_lab.png" % i)), cv2.cvtColor(lab, cv2.COLOR_RGB2BGR))
    return images, labels


def write_mapping(path, mapping):
    path.write_text(yaml.safe_dump(mapping))
    return path


def run(images, labels, mapping, out, *extra):
    return cli(["import-dataset", "--images", str(images), "--labels", str(labels),
                "--mapping", str(mapping), "--out", str(out), *extra])


def test_rgb_labels_become_lpcv_indices_in_the_lpcv_layout(tmp_path):
    images, labels = write_rgb_source(tmp_path / "src", count=10)
    mapping = write_mapping(tmp_path / "map.yaml", RGB_MAPPING)
    out = tmp_path / "out"
    assert run(images, labels, mapping, out, "--label-suffix", "_lab", "--val-fraction", "0.3",
               "--seed", "4") == 0
    train = sorted(p.name for p in (out / "IMG" / "train").iterdir())
    val = sorted(p.name for p in (out / "IMG" / "val").iterdir())
    assert len(val) == 3 and len(train) == 7 and not set(train) & set(val)
    label = read_label_png(str(out / "GT" / "val" / val[0]))
    assert label.shape == (30, 40)
    assert (label[5:, :20] == WATER).all() and (label[5:, 20:] == ROAD).all()
    assert (label[:3, :3] == IGNORE_INDEX).all()
    # the training loader reads it as it is
    dataset = SegmentationDataset(str(out), "train", validate=True, progress=False)
    assert len(dataset) == 7
    # the same seed draws the same split
    again = tmp_path / "again"
    assert run(images, labels, mapping, again, "--label-suffix", "_lab", "--val-fraction",
               "0.3", "--seed", "4") == 0
    assert sorted(p.name for p in (again / "IMG" / "val").iterdir()) == val


def test_index_labels_resized_by_the_shorter_side_and_suffix_from_the_mapping(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir()
    labels.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / ("s%d.png" % i)), np.zeros((60, 80, 3), np.uint8))
        index = np.zeros((60, 80), np.uint8)
        index[:, 40:] = 7
        index[:30, :40] = 3
        cv2.imwrite(str(labels / ("s%d_lab.png" % i)), index)
    mapping = write_mapping(tmp_path / "map.yaml", {
        "encoding": "index", "label_suffix": "_lab", "classes": [
            {"value": 0, "class": "background"}, {"value": 3, "class": "building_undamaged"},
            {"value": 7, "class": "road/railway/bridge"}]})
    out = tmp_path / "out"
    assert run(images, labels, mapping, out, "--size", "30", "--val-fraction", "0",
               "--prefix", "x_") == 0
    assert not list((out / "IMG" / "val").iterdir())
    image = cv2.imread(str(out / "IMG" / "train" / "x_s0.png"))
    label = read_label_png(str(out / "GT" / "train" / "x_s0.png"))
    assert image.shape == (30, 40, 3) and label.shape == (30, 40)
    assert set(np.unique(label).tolist()) == {0, BUILDING, ROAD}  # nearest: no new values
    assert (label[:, 20:] == ROAD).all() and (label[:15, :20] == BUILDING).all()


def test_unknown_value_names_file_and_value_and_writes_nothing(tmp_path, capsys):
    images, labels = write_rgb_source(tmp_path / "src", odd=(1, 2, 3))
    mapping = write_mapping(tmp_path / "map.yaml", RGB_MAPPING)
    out = tmp_path / "out"
    assert run(images, labels, mapping, out, "--label-suffix", "_lab") == 1
    err = capsys.readouterr().err
    assert str(labels / "002_lab.png") in err and "[1, 2, 3]" in err and "(1 pixels)" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.yaml", "src"]  # no staging left
    # --unknown background maps it to background instead
    assert run(images, labels, mapping, out, "--label-suffix", "_lab", "--unknown",
               "background", "--val-fraction", "0") == 0
    label = read_label_png(str(out / "GT" / "train" / "002.png"))
    assert label[-1, -1] == 0 and label[-1, 0] == WATER


def test_missing_label_and_bad_mapping_are_named(tmp_path, capsys):
    images, labels = write_rgb_source(tmp_path / "src")
    (labels / "001_lab.png").unlink()
    mapping = write_mapping(tmp_path / "map.yaml", RGB_MAPPING)
    assert run(images, labels, mapping, tmp_path / "o1", "--label-suffix", "_lab") == 1
    assert "001.jpg: no label" in capsys.readouterr().err
    bad = write_mapping(tmp_path / "bad.yaml", {"encoding": "rgb", "classes": [
        {"value": [1, 2, 3], "class": "lava"}]})
    assert run(images, labels, bad, tmp_path / "o2") == 1
    assert "classes[0]: unknown class 'lava'" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("name", ["floodnet", "rescuenet", "semantic_drone", "semantic_drone_rgb",
                                  "uavid"])
def test_shipped_mappings_parse_and_cite_their_source_and_licence(name):
    path = REPO / "training" / "mappings" / (name + ".yaml")
    mapping = read_mapping(str(path))
    assert len(mapping.table) >= 8
    text = path.read_text().lower()
    assert "licence" in text and "http" in text


# -- every shipped mapping, on a source written as that dataset writes it --------------------
# name -> (image file of one frame, label file of it), relative to the --images / --labels
# folders of the mapping's header command: each dataset's own file naming and format.
SOURCE_FILES = {
    "floodnet": ("10165.jpg", "10165_lab.png"),  # index PNG <stem>_lab.png
    "rescuenet": ("10794.jpg", "10794_lab.png"),  # index PNG <stem>_lab.png
    "semantic_drone": ("042.jpg", "042.png"),  # original_images/*.jpg, index PNG
    "uavid": ("000100.png", "000100.png"),  # seqN/Images/*.png, colour PNG (RGB)
    "semantic_drone_rgb": ("042.jpg", "042.png"),  # low_res_images/*.jpg, colour PNG (RGB)
    "lpcv": ("train/000001.jpg", "train/000001.png"),  # the node's capture_dir: IMG/, GT/
}
# Every value each dataset's labels hold, from its own documentation (not from the mapping,
# so that a value the mapping forgets is painted anyway and stops the import).
DATASET_VALUES = {
    "floodnet": list(range(10)),  # FloodNet README: 10 classes, 0 Background .. 9 Grass
    "rescuenet": list(range(12)),  # RescueNet v1.0: 0 Background .. 11 Sand
    "semantic_drone": list(range(24)),  # class_dict.csv: 0 unlabeled .. 23 conflicting
    "uavid": [[0, 0, 0], [128, 0, 0], [128, 64, 128], [0, 128, 0], [128, 128, 0],
              [64, 0, 128], [192, 0, 192], [64, 64, 0]],  # UAVid paper, Table 1 (RGB)
    # class_dict.csv of the GitHub copy: unlabeled .. conflicting (RGB)
    "semantic_drone_rgb": [[0, 0, 0], [128, 64, 128], [130, 76, 0], [0, 102, 0], [112, 103, 87],
                           [28, 42, 168], [48, 41, 30], [0, 50, 89], [107, 142, 35], [70, 70, 70],
                           [102, 102, 156], [254, 228, 12], [254, 148, 12], [190, 153, 153],
                           [153, 153, 153], [255, 22, 96], [102, 51, 0], [9, 143, 150],
                           [119, 11, 32], [51, 51, 0], [190, 250, 190], [112, 150, 146],
                           [2, 135, 115], [255, 0, 0]],
    "lpcv": list(range(14)) + [255],  # LPCV 2023 class indices, 255 = ignore
}
STRIPE = 4  # pixels per painted value


def header_command(path: Path) -> List[str]:
    """The import command in the mapping's header comment, as the argument list after
    ``python -m training``; a shell loop over sequences (UAVid) is run for its first one."""
    lines = [line.lstrip("#").strip() for line in path.read_text().splitlines()
             if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if "import-dataset" in line)
    text = ""
    for line in lines[start:]:
        text += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            break
    text = text[text.index("python -m training"):].split(";")[0]
    text = text.replace("${n}", "seq1").replace("$n", "seq1").replace("$s", "uavid_train/seq1")
    words = shlex.split(text)
    assert words[:3] == ["python", "-m", "training"], text
    return words[3:]


def _arg(words: List[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def test_every_shipped_mapping_has_its_source_written_here():
    shipped = sorted(path.stem for path in (REPO / "training" / "mappings").glob("*.yaml"))
    assert shipped == sorted(SOURCE_FILES) == sorted(DATASET_VALUES)


@pytest.mark.parametrize("name", sorted(SOURCE_FILES))
def test_each_shipped_mapping_imports_its_dataset_with_its_own_command(name, tmp_path,
                                                                       monkeypatch):
    path = REPO / "training" / "mappings" / (name + ".yaml")
    mapping = yaml.safe_load(path.read_text())
    command = header_command(path)
    assert command[0] == "import-dataset" and Path(_arg(command, "--mapping")).name == path.name
    command[command.index("--mapping") + 1] = str(path)
    values = DATASET_VALUES[name]
    classes = {json.dumps(entry["value"]): entry["class"] for entry in mapping["classes"]}
    # One frame painting every listed value in a stripe of its own, in the dataset's encoding.
    height, width = 6, STRIPE * len(values)
    if mapping["encoding"] == "rgb":
        label = np.zeros((height, width, 3), np.uint8)
    else:
        label = np.zeros((height, width), np.uint8)
    for index, value in enumerate(values):
        label[:, index * STRIPE:(index + 1) * STRIPE] = value
    monkeypatch.chdir(tmp_path)
    image_name, label_name = SOURCE_FILES[name]
    images, labels = Path(_arg(command, "--images")), Path(_arg(command, "--labels"))
    (images / image_name).parent.mkdir(parents=True)
    (labels / label_name).parent.mkdir(parents=True)
    cv2.imwrite(str(images / image_name), np.full((height, width, 3), 90, np.uint8))
    cv2.imwrite(str(labels / label_name),
                cv2.cvtColor(label, cv2.COLOR_RGB2BGR) if label.ndim == 3 else label)

    assert cli(command) == 0
    out, prefix = Path(_arg(command, "--out")), _arg(command, "--prefix")
    (written,) = list((out / "GT").glob("*/%s%s.png" % (prefix, Path(image_name).stem)))
    imported = read_label_png(str(written))
    size = int(_arg(command, "--size")) if "--size" in command else height  # else kept
    assert min(imported.shape) == size  # --size: the shorter side
    scale = imported.shape[1] / float(width)
    assert sorted(classes) == sorted(json.dumps(v) for v in values)  # nothing left unused
    for index, value in enumerate(values):
        column = int((index + 0.5) * STRIPE * scale)  # the middle of the value's stripe
        target = classes[json.dumps(value)]
        expected = IGNORE_INDEX if target == "ignore" else CLASS_NAMES.index(target)
        assert (imported[:, column] == expected).all(), (name, value, target,
                                                         np.unique(imported[:, column]))


def test_semantic_drone_colour_layout_imports_each_colour_onto_its_class(tmp_path):
    """A tiny source in the layout of the Semantic Drone Dataset's GitHub copy (JPEG frames,
    colour labels under gt/semantic/) imports through the shipped colour mapping: every
    colour lands on the class the index mapping gives the same source class."""
    colour = read_mapping(str(REPO / "training" / "mappings" / "semantic_drone_rgb.yaml"))
    index = read_mapping(str(REPO / "training" / "mappings" / "semantic_drone.yaml"))
    colours = list(colour.table)  # file order = the dataset's class order (class_dict.csv)
    assert len(colours) == len(index.table) == 24
    assert [colour.table[c] for c in colours] == [index.table[(i,)] for i in range(24)]
    root = tmp_path / "semantic_drone_dataset" / "training_set"
    images, labels = root / "low_res_images", root / "gt" / "semantic" / "low_res_label_images"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for n in range(2):
        lab = np.zeros((4 * 6, 6 * 6, 3), np.uint8)  # a 4x6 grid of 6x6 cells, one colour each
        for k, rgb in enumerate(colours):
            cell = (k + n) % 24
            lab[6 * (cell // 6): 6 * (cell // 6 + 1), 6 * (cell % 6): 6 * (cell % 6 + 1)] = rgb
        cv2.imwrite(str(labels / ("%03d.png" % n)), cv2.cvtColor(lab, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(images / ("%03d.jpg" % n)), np.full(lab.shape, 90, np.uint8))
    out = tmp_path / "sdd"
    assert run(images, labels, REPO / "training" / "mappings" / "semantic_drone_rgb.yaml", out,
               "--val-fraction", "0.5", "--prefix", "sdd_") == 0
    for split in ("train", "val"):
        (name,) = [p.name for p in (out / "GT" / split).iterdir()]
        n = int(name[len("sdd_"):-len(".png")])
        label = read_label_png(str(out / "GT" / split / name))
        for k, rgb in enumerate(colours):
            cell = (k + n) % 24
            want = colour.table[rgb]
            assert (label[6 * (cell // 6): 6 * (cell // 6 + 1),
                          6 * (cell % 6): 6 * (cell % 6 + 1)] == want).all(), (split, rgb)
    names = {CLASS_NAMES[v] if v != IGNORE_INDEX else "ignore" for v in colour.table.values()}
    assert names == {"ignore", "background", "road/railway/bridge", "flood/water/river/sea",
                     "building_undamaged", "person", "vehicle"}
    assert colour.table[(0, 0, 0)] == colour.table[(255, 0, 0)] == IGNORE_INDEX
    assert len(SegmentationDataset(str(out), "val", validate=True, progress=False)) == 1
