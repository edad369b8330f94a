"""dataset-to-bag and the bag reader: real rosbag2 files written and read with rosbags."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpcv_segmentation.replay.bagio import (CAMERA_TOPIC, GT_TOPIC, BagError, BagWriter,
                                            FrameReader, bag_topics, read_frames)
from lpcv_segmentation.core.labels_io import read_label_png

ROOT = Path(__file__).resolve().parent.parent
START_NS = 1700000000 * 10 ** 9
RATE_HZ = 4.0


def run_command(*args, module="training"):
    prefix = [sys.executable, "-m", module] + (["dataset-to-bag"] if module == "training" else [])
    return subprocess.run(prefix + [str(a) for a in args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def dataset_frames(root: Path, split: str = "val"):
    """(rgb, label) of each image of the split, in file-name order."""
    import cv2
    names = sorted((root / "IMG" / split).glob("*.png"))
    return [(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB),
             read_label_png(str(root / "GT" / split / p.name))) for p in names]


@pytest.fixture(scope="module")
def mcap_bag(synth_dataset, tmp_path_factory) -> Path:
    """The fixture dataset's val split as a bag, written by the command line."""
    out = tmp_path_factory.mktemp("bags") / "flight"
    result = run_command("--data", synth_dataset, "--split", "val", "--out", out,
                         "--rate", RATE_HZ, "--start-sec", START_NS / 1e9)
    assert result.returncode == 0, result.stderr
    assert "wrote 8 frames" in result.stdout
    return out


def raw_messages(bag: Path):
    """(topic, log time, message) for every message, read with rosbags' own reader."""
    from rosbags.highlevel import AnyReader
    with AnyReader([bag]) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype))
                for c, t, raw in reader.messages()]


def test_dataset_to_bag_writes_frames_and_ground_truth(mcap_bag, synth_dataset):
    expected = dataset_frames(synth_dataset)
    assert (mcap_bag / "metadata.yaml").is_file()
    assert [p.suffix for p in mcap_bag.iterdir() if p.name != "metadata.yaml"] == [".mcap"]
    topics = bag_topics(mcap_bag)
    assert topics[CAMERA_TOPIC] == ("sensor_msgs/msg/Image", len(expected))
    assert topics[GT_TOPIC] == ("sensor_msgs/msg/Image", len(expected))

    messages = raw_messages(mcap_bag)
    period_ns = int(1e9 / RATE_HZ)
    for topic, encoding in ((CAMERA_TOPIC, "rgb8"), (GT_TOPIC, "mono8")):
        msgs = [(t, m) for name, t, m in messages if name == topic]
        stamps = [m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec for _, m in msgs]
        assert stamps == [START_NS + i * period_ns for i in range(len(expected))]
        assert [t for t, _ in msgs] == stamps  # log time = header stamp
        assert {m.encoding for _, m in msgs} == {encoding}
        assert {m.header.frame_id for _, m in msgs} == {"camera"}

    frames = read_frames(mcap_bag)
    assert [f.index for f in frames] == list(range(len(expected)))
    for frame, (rgb, label) in zip(frames, expected):
        np.testing.assert_array_equal(frame.rgb, rgb)
        np.testing.assert_array_equal(frame.gt, label)
        assert frame.stamp_ns == START_NS + frame.index * period_ns


def test_sqlite3_storage_and_limit(synth_dataset, tmp_path):
    from training.dataset_to_bag import FlightClock, write_flight_bag
    out = tmp_path / "flight_db"
    summary = write_flight_bag(synth_dataset, "val", out, FlightClock(10.0, START_NS),
                               storage="sqlite3", limit=3, progress=False)
    assert summary["frames"] == 3 and summary["duration_s"] == pytest.approx(0.2)
    assert [p.suffix for p in out.iterdir() if p.name != "metadata.yaml"] == [".db3"]
    frames = read_frames(out)
    expected = dataset_frames(synth_dataset)[:3]
    assert len(frames) == 3
    for frame, (rgb, label) in zip(frames, expected):
        np.testing.assert_array_equal(frame.rgb, rgb)
        np.testing.assert_array_equal(frame.gt, label)


def test_existing_output_is_refused(mcap_bag, synth_dataset):
    before = sorted(p.stat().st_mtime_ns for p in mcap_bag.iterdir())
    result = run_command("--data", synth_dataset, "--out", mcap_bag)
    assert result.returncode == 1
    assert "already exists" in result.stderr and str(mcap_bag) in result.stderr
    assert sorted(p.stat().st_mtime_ns for p in mcap_bag.iterdir()) == before


def test_label_of_wrong_size_stops_and_leaves_no_bag(synth_dataset, tmp_path):
    import cv2
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    bad = sorted((data / "GT" / "val").glob("*.png"))[2]
    cv2.imwrite(str(bad), np.zeros((40, 50), np.uint8))
    out = tmp_path / "flight"
    result = run_command("--data", data, "--out", out)
    assert result.returncode == 1
    assert bad.name in result.stderr and "50x40" in result.stderr
    assert not out.exists()


# -- reader errors ---------------------------------------------------------------------------
def copy_bag(bag: Path, dest: Path) -> Path:
    shutil.copytree(bag, dest)
    return dest


def storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.name != "metadata.yaml")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_is_a_clear_error(synth_dataset, tmp_path, storage):
    from training.dataset_to_bag import FlightClock, write_flight_bag
    bag = tmp_path / "flight"
    write_flight_bag(synth_dataset, "val", bag, FlightClock(start_ns=START_NS), storage=storage,
                     progress=False)
    data = storage_file(bag).read_bytes()
    storage_file(bag).write_bytes(data[:len(data) // 2])
    with pytest.raises(BagError, match="corrupt or truncated") as error:
        read_frames(bag)
    assert str(bag) in str(error.value)


def test_bag_without_metadata_or_missing(mcap_bag, tmp_path):
    bag = copy_bag(mcap_bag, tmp_path / "flight")
    (bag / "metadata.yaml").unlink()
    with pytest.raises(BagError, match="no metadata.yaml"):
        FrameReader(bag)
    with pytest.raises(BagError, match="no such bag"):
        FrameReader(tmp_path / "nowhere")


def write_bag(path: Path, topics, size=(16, 24), gt_size=None, count=3):
    """A small bag with the given topics; the ground truth may differ in size."""
    gt_size = gt_size or size
    with BagWriter(path) as writer:
        for i in range(count):
            stamp = START_NS + i * 10 ** 8
            if CAMERA_TOPIC in topics:
                writer.write_image(CAMERA_TOPIC, stamp, np.full(size + (3,), i, np.uint8), "rgb8")
            if GT_TOPIC in topics:
                writer.write_image(GT_TOPIC, stamp, np.full(gt_size, i, np.uint8), "mono8")
            if "/other" in topics:
                writer.write_string("/other", "x", stamp)
    return path


def test_bag_without_camera_topic(tmp_path):
    bag = write_bag(tmp_path / "no_camera", [GT_TOPIC, "/other"])
    with pytest.raises(BagError, match="no camera topic /camera/image_raw") as error:
        FrameReader(bag)
    assert "/camera/gt_mask, /other" in str(error.value)
    result = run_command("--bag", bag, "--json", tmp_path / "out.json",
                         module="lpcv_segmentation.replay.bag_eval")
    assert result.returncode == 1
    assert "no camera topic /camera/image_raw" in result.stderr and str(bag) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_bag_without_ground_truth_topic(tmp_path):
    bag = write_bag(tmp_path / "no_gt", [CAMERA_TOPIC])
    with pytest.raises(BagError, match="no ground-truth topic /camera/gt_mask"):
        FrameReader(bag)
    assert len(read_frames(bag, gt_topic=None)) == 3


def test_ground_truth_of_wrong_size(tmp_path):
    bag = write_bag(tmp_path / "bad_gt", [CAMERA_TOPIC, GT_TOPIC], size=(16, 24),
                    gt_size=(8, 24))
    with pytest.raises(BagError, match=r"/camera/gt_mask at stamp \d+ is 24x8 \(WxH\) but its "
                                       r"frame on /camera/image_raw is 24x16"):
        read_frames(bag)


def test_unpaired_frames_are_counted(tmp_path):
    bag = tmp_path / "gaps"
    with BagWriter(bag) as writer:
        for i in range(4):
            stamp = START_NS + i * 10 ** 8
            writer.write_image(CAMERA_TOPIC, stamp, np.full((8, 8, 3), i, np.uint8), "rgb8")
            if i != 1:  # frame 1 has no ground truth; one label has no frame
                writer.write_image(GT_TOPIC, stamp + (5 if i == 3 else 0),
                                   np.full((8, 8), i, np.uint8), "mono8")
    reader = FrameReader(bag)
    frames = sorted(reader, key=lambda f: f.index)
    assert [f.gt is None for f in frames] == [False, True, False, True]
    assert reader.unpaired_camera == 2 and reader.unpaired_gt == 1
