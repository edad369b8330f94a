"""training.distill: a student distilled on frames without labels (an image folder, a flight bag)
agrees with its teacher on held-out frames far beyond the teacher's most common class; a run
killed with SIGKILL resumes from its last checkpoint; the LPCV network (a teacher of another
input size, normalisation and stride) distils through its zoo name; malformed frames inside a
bag are counted and skipped, and a bag with none readable is one error naming it.

Frames: synthetic scenes written here (``training synth``), their labels never given to the
student. Teacher: ``models/default.onnx``, the shipped model trained on synthetic scenes and
exported to ONNX (128 px frames, its 256 px input). Students: MobileViT-XXS, 128 px input,
trained on 64 px crops.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.metrics import SegmentationMetrics
from killed_run import kill_training_when
from training.__main__ import main as cli
from training.unlabelled import FrameSourceError, UnlabelledFrame, folder_frames, split_held_out

REPO = Path(__file__).resolve().parent.parent
TEACHER = REPO / "models" / "default.onnx"
PEER = REPO.parent / "shared" / "peers" / "lpcv2023_2nd_topformer_tiny_288.onnx"
STUDENT = ["arch=mobilevit_xxs", "decoder_channels=32", "input_size=128", "crop_size=64",
           "batch_size=8", "workers=0", "warmup_iters=10", "lr=3e-3", "ohem_min_kept=5000",
           "scale_min=0.75", "scale_max=1.5", "max_eval_images=null"]
ITERS = 80
CANDIDATES = 120
# The requirement: the student's labels agree with the teacher's far better than predicting the
# teacher's most common class everywhere (the floor, computed here): an mIoU (over the classes
# either uses) at least MIOU_FACTOR times the floor's, PIXEL_MARGIN more of the pixels agreeing,
# and the teacher's second class, on which the floor scores 0, found with an IoU of at least
# SECOND_CLASS_IOU. Measured (folder and bag alike): mIoU 0.412 against 0.139, pixels 0.821
# against 0.697, water IoU 0.86.
MIOU_FACTOR = 2.0
PIXEL_MARGIN = 0.05
SECOND_CLASS_IOU = 0.3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """64 synthetic scenes of 128 px in the LPCV layout (IMG/train, with GT/train only for
    ``dataset-to-bag``; no student is given a label): the 64 of CANDIDATES drawn scenes on which
    the teacher labels the least background, the footage of a disaster rather than of fields."""
    import cv2

    from lpcv_segmentation.runtime.segmenter import Segmenter
    from training.synth import render_scene
    teacher = Segmenter(str(TEACHER))
    drawn = []
    for seed in range(CANDIDATES):
        rgb, label = render_scene(seed, 128)[:2]
        drawn.append((float((teacher.segment(rgb).labels == 0).mean()), seed, rgb, label))
    kept = sorted(sorted(drawn, key=lambda d: d[0])[:64], key=lambda d: d[1])
    root = tmp_path_factory.mktemp("scenes")
    for folder in ("IMG/train", "GT/train"):
        (root / folder).mkdir(parents=True)
    for i, (_, _, rgb, label) in enumerate(kept):
        cv2.imwrite(str(root / "IMG" / "train" / ("scene_%03d.png" % i)),
                    cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "GT" / "train" / ("scene_%03d.png" % i)), label)
    return root


def distill_cli(out, *args):
    return cli(["distill", "--out", str(out)] + [str(a) for a in args])


def majority_floor(frames: Path):
    """What predicting the teacher's most common class on every held-out pixel scores,
    computed here from the held-out label files the run wrote."""
    from training.data import read_label
    labels = [read_label(p) for p in sorted((frames / "GT" / "val").glob("*.png"))]
    counts = sum(np.bincount(lab[lab != IGNORE_INDEX].ravel(), minlength=NUM_CLASSES)
                 for lab in labels)
    metrics = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
    for lab in labels:
        metrics.update(np.full_like(lab, int(np.argmax(counts))), lab)
    return metrics.summary(), CLASS_NAMES[int(np.argsort(counts)[-2])]


def check_agreement(run: Path, held_out: int):
    report = json.loads((run / "agreement.json").read_text())
    student = report["student"]
    floor, second = majority_floor(run / "frames")
    assert student["frames"] == held_out == report["frames"]["held_out_frames"]
    assert report["majority_class"]["miou"] == pytest.approx(floor["miou"])
    shown = (student["miou"], student["pixel_agreement"], student["per_class_iou"], floor)
    assert student["miou"] >= MIOU_FACTOR * floor["miou"], shown
    assert student["pixel_agreement"] >= floor["pixel_acc"] + PIXEL_MARGIN, shown
    assert (student["per_class_iou"][second] or 0.0) >= SECOND_CLASS_IOU, (second, shown)
    for name in ("best.safetensors", "last.safetensors", "last.state.pt", "metrics.csv",
                 "config.yaml"):
        assert (run / name).is_file(), name
    return report


# --------------------------------------------------------------------------------------------
# Frame sources
# --------------------------------------------------------------------------------------------
def test_folders_are_searched_recursively_and_held_out_by_file_or_flight(tmp_path):
    import cv2
    for rel in ("a/1.png", "a/b/2.jpg", "a/b/2.png", "c.JPG", "notes.txt"):
        path = tmp_path / "flight" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".txt":
            path.write_text("x")
        else:
            cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    frames = folder_frames(str(tmp_path / "flight"), 0)
    assert [f.name for f in frames] == ["f0_a_1.png", "f0_a_b_2.jpg", "f0_a_b_2.png", "f0_c.JPG"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FrameSourceError, match="no images in it or below it"):
        folder_frames(str(tmp_path / "empty"), 1)
    with pytest.raises(FrameSourceError, match="no such folder"):
        folder_frames(str(tmp_path / "missing"), 1)

    flights = [[UnlabelledFrame(i, "f%d_%d" % (i, j), "x", None) for j in range(10)]
               for i in range(4)]
    train, held, by = split_held_out(flights, 0.25, "auto")
    assert by == "flight" and len(held) == 10 and len({f.flight for f in held}) == 1
    assert not {f.flight for f in held} & {f.flight for f in train}
    train, held, by = split_held_out(flights, 0.2, "file")
    assert by == "file" and len(held) == 8 and {f.flight for f in held} == {0, 1, 2, 3}
    with pytest.raises(FrameSourceError, match="two flights or more"):
        split_held_out(flights[:1], 0.2, "flight")


def test_bad_sources_and_teachers_are_one_clear_error(tmp_path, capsys):
    assert distill_cli(tmp_path / "r1", "--teacher", TEACHER) == 1
    assert "no frames: give --images DIR and/or --bag FLIGHT" in capsys.readouterr().err
    assert distill_cli(tmp_path / "r2", "--teacher", "zoo:nope", "--images", tmp_path) == 1
    assert "not a zoo model" in capsys.readouterr().err
    assert distill_cli(tmp_path / "r3", "--teacher", TEACHER, "--bag", tmp_path / "nobag") == 1
    assert "no such bag" in capsys.readouterr().err
    assert distill_cli(tmp_path / "r4", "--teacher", TEACHER, "--resume") == 1
    assert "holds no distillation run" in capsys.readouterr().err


START_NS = 1700000000 * 10 ** 9
# frame index -> what is wrong with it (the others are good rgb8 frames)
MALFORMED = {1: "short", 3: "encoding", 4: "garbage", 7: "short"}


def write_damaged_bag(path: Path, count: int = 8, malformed=MALFORMED) -> Path:
    """A real flight bag (the repo's BagWriter) whose camera frames ``malformed`` are broken: a
    raw Image whose data is shorter than height x step, one of an encoding no camera decoder
    knows, bytes that are not a CDR message at all."""
    from types import SimpleNamespace

    from lpcv_segmentation.replay.bagio import CAMERA_TOPIC, IMAGE_TYPE, BagWriter
    with BagWriter(path) as writer:
        for i in range(count):
            stamp = START_NS + i * 10 ** 8
            rgb = np.full((32, 48, 3), 20 * i, np.uint8)
            header = SimpleNamespace(stamp=SimpleNamespace(sec=stamp // 10 ** 9,
                                                           nanosec=stamp % 10 ** 9), frame_id="cam")
            kind = malformed.get(i)
            if kind is None:
                writer.write_image(CAMERA_TOPIC, stamp, rgb, "rgb8")
            elif kind == "garbage":  # written below the message layer: it cannot deserialise
                writer._writer.write(writer._connection(CAMERA_TOPIC, IMAGE_TYPE), stamp,
                                     b"\x00\x01not a message")
            else:
                data = rgb.reshape(-1)[:100] if kind == "short" else rgb.reshape(-1)  # (H*W*3,)
                writer.write_image_msg(CAMERA_TOPIC, SimpleNamespace(
                    header=header, height=32, width=48, step=48 * 3, is_bigendian=0, data=data,
                    encoding="rgb8" if kind == "short" else "yuv422_yuy2"), stamp)
    return path


def test_malformed_bag_frames_are_counted_and_skipped_with_a_warning(tmp_path):
    """Each frame taken from a bag that cannot be read is left out with one warning line
    naming the bag, topic and stamp, and counted as an unreadable image file is; frames not
    taken (--every) are not looked at."""
    from training.unlabelled import SKIPPED, bag_frames, read_frames
    bag = write_damaged_bag(tmp_path / "flight")
    frames = bag_frames(str(bag), 0)
    assert len(frames) == 8  # malformed frames keep their place
    skipped, warnings = {}, []
    read = list(read_frames(frames, skipped=skipped, warn=warnings.append))
    assert [f.bag_index for f, _ in read] == [0, 2, 5, 6]
    assert [int(rgb[0, 0, 0]) for _, rgb in read] == [0, 40, 100, 120]
    assert skipped == {SKIPPED: 4} and len(warnings) == 4
    for line, index in zip(warnings, sorted(MALFORMED)):
        assert line.startswith("warning: %s: /camera/image_raw " % bag) and line.endswith("; skipped")
        assert str(START_NS + index * 10 ** 8) in line, line
    assert "data length 100" in warnings[0] and "yuv422_yuy2" in warnings[1]
    assert "does not deserialise" in warnings[2]

    import cv2

    from lpcv_segmentation.replay.bagio import CAMERA_TOPIC, BagWriter
    compressed = tmp_path / "compressed"  # a camera recorded as JPEG: one frame is not a JPEG
    with BagWriter(compressed) as writer:
        for i in range(3):
            jpeg = cv2.imencode(".jpg", np.full((32, 48, 3), 60 * i, np.uint8))[1].tobytes()
            writer.write_compressed(CAMERA_TOPIC, START_NS + i, b"\xff\xd8 not a jpeg" if i == 1
                                    else jpeg, "jpeg")
    skipped, warnings = {}, []
    read = list(read_frames(bag_frames(str(compressed), 0), skipped=skipped, warn=warnings.append))
    assert [(f.bag_index, rgb.shape) for f, rgb in read] == [(0, (32, 48, 3)), (2, (32, 48, 3))]
    assert skipped == {SKIPPED: 1} and len(warnings) == 1
    assert warnings[0].startswith("warning: %s: /camera/image_raw at stamp %d: cannot decode "
                                  "compressed image" % (compressed, START_NS + 1))

    skipped, warnings = {}, []  # every 2nd frame: 0, 2, 4, 6; only 4 is malformed
    read = list(read_frames(bag_frames(str(bag), 0, every=2), skipped=skipped, warn=warnings.append))
    assert [f.bag_index for f, _ in read] == [0, 2, 6] and skipped == {SKIPPED: 1}
    assert len(warnings) == 1 and str(START_NS + 4 * 10 ** 8) in warnings[0]


def test_distill_reports_skipped_frames_and_refuses_a_bag_with_none_readable(tmp_path, capsys):
    """The teacher labels the good frames of a damaged bag and the manifest counts the others;
    a bag whose frames are all malformed stops the run with one error naming it."""
    import argparse

    from training.distill import add_arguments, prepare_frames
    bag = write_damaged_bag(tmp_path / "flight")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--teacher", str(TEACHER), "--bag", str(bag), "--holdout", "0.25",
                              "--out", str(tmp_path / "run")])
    manifest = prepare_frames(args, tmp_path / "run", progress=False)
    assert manifest["unreadable_skipped"] == 4
    made = sorted(p.name for p in (tmp_path / "run" / "frames" / "GT").glob("*/*.png"))
    assert made == ["f0_%06d.png" % i for i in (0, 2, 5, 6)]
    err = capsys.readouterr().err
    assert err.count("warning: %s: /camera/image_raw" % bag) == 4

    every_kind = {0: "short", 1: "garbage", 2: "encoding"}
    bad = write_damaged_bag(tmp_path / "all_bad", count=3, malformed=every_kind)
    assert distill_cli(tmp_path / "r", "--teacher", TEACHER, "--bag", bad, "--every", "1") == 1
    err = capsys.readouterr().err
    assert err.count("; skipped") == 3
    assert "error: %s: no frame on /camera/image_raw can be read: all 3 taken are malformed" % bad in err


@pytest.mark.slow
def test_a_checkpoint_student_with_labelled_data_mixed_in_exports_like_any(
        synth_dataset, tiny_checkpoint, tiny_onnx, tmp_path):
    """--student CKPT keeps its architecture and input size; --data links the labelled training
    pairs in beside the teacher-labelled frames; the result exports to ONNX."""
    import yaml

    from lpcv_segmentation.model.checkpoint import read_metadata
    from lpcv_segmentation.runtime.segmenter import Segmenter
    from training.export import export_onnx
    run = tmp_path / "ckpt"
    assert distill_cli(run, "--teacher", tiny_onnx, "--student", tiny_checkpoint, "--images",
                       synth_dataset / "IMG" / "val", "--data", synth_dataset, "--holdout",
                       "0.25", "iters=2", "eval_every=2", "batch_size=2", "workers=0") == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["init"] == str(tiny_checkpoint) and config["crop_size"] == 128
    manifest = json.loads((run / "frames" / "manifest.json").read_text())
    assert (manifest["train_frames"], manifest["held_out_frames"]) == (6, 2)
    assert manifest["labelled_train_images"] == 24
    labelled = sorted((run / "frames" / "GT" / "train").glob("labelled_*.png"))
    assert len(labelled) == 24 and labelled[0].resolve().parent == synth_dataset / "GT" / "train"
    meta = read_metadata(str(run / "best.safetensors"))
    assert (meta["arch"], meta["decoder_channels"], meta["input_size"]) == ("mobilevit_xxs", 32, 128)
    exported = tmp_path / "student.onnx"
    export_onnx(str(run / "best.safetensors"), str(exported), verify_images=1)
    assert Segmenter(str(exported)).input_size == 128


# --------------------------------------------------------------------------------------------
# It learns from the teacher alone
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_student_distilled_from_an_image_folder_agrees_with_the_teacher(scenes, tmp_path):
    run = tmp_path / "folder"
    assert distill_cli(run, "--teacher", TEACHER, "--images", scenes / "IMG", "--holdout", "0.25",
                       "iters=%d" % ITERS, "eval_every=%d" % ITERS, *STUDENT) == 0
    report = check_agreement(run, 16)
    assert report["frames"]["train_frames"] == 48 and report["frames"]["holdout_by"] == "file"
    # the labels the student learnt from are the teacher's, made through the runtime
    from lpcv_segmentation.runtime.segmenter import Segmenter
    from training.data import read_image, read_label
    image = sorted((run / "frames" / "IMG" / "train").glob("*.png"))[0]
    teacher = Segmenter(str(TEACHER))
    np.testing.assert_array_equal(read_label(run / "frames" / "GT" / "train" / image.name),
                                  teacher.segment(read_image(image)).labels)
    # the result is a checkpoint like any other: it evaluates (and so prunes and exports)
    from training.evaluate import Runtime, evaluate
    held = evaluate(str(run / "best.safetensors"), str(run / "frames"), "val", Runtime(warmup=0),
                    progress=False)
    assert held["miou"] == pytest.approx(report["student"]["miou"])


@pytest.mark.slow
def test_student_distilled_from_a_flight_bag_resumes_after_sigkill(scenes, tmp_path):
    from training.dataset_to_bag import write_flight_bag
    bag = tmp_path / "flight"
    write_flight_bag(scenes, "train", bag, progress=False)  # 64 frames, labels on their own topic
    run = tmp_path / "bag_run"
    args = ["--teacher", TEACHER, "--bag", bag, "--every", "1", "--holdout", "0.25",
            "iters=%d" % ITERS, "eval_every=%d" % ITERS, "checkpoint_every=10"] + STUDENT
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    kill_training_when(["distill", "--out", run] + args, env, tmp_path / "stderr.txt",
                       lambda: (run / "last.state.pt").is_file(), timeout_s=300)
    import torch
    stopped = torch.load(run / "last.state.pt", map_location="cpu", weights_only=True)["iteration"]
    assert 10 <= stopped < ITERS and not (run / "agreement.json").exists()
    assert distill_cli(run, "--resume") == 0  # sources and teacher come from the run
    from lpcv_segmentation.model.checkpoint import read_metadata
    assert read_metadata(str(run / "last.safetensors"))["training"]["iteration"] == ITERS
    report = check_agreement(run, 16)
    assert report["frames"]["train_frames"] == 48


@pytest.mark.slow
@pytest.mark.skipif(not PEER.is_file(), reason="the LPCV network's copy %s is absent" % PEER)
def test_student_distils_from_the_lpcv_network_by_its_zoo_name(scenes, tmp_path, monkeypatch,
                                                               capsys):
    """288 px input, its own mean/std, stride-8 logits: all read from the wrapped model."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    from lpcv_segmentation.zoo import install
    install("lpcv2023-topformer-tiny", str(PEER))
    from training.dataset_to_bag import write_flight_bag
    bag = tmp_path / "flight"
    write_flight_bag(scenes, "train", bag, progress=False)
    run = tmp_path / "lpcv"
    assert distill_cli(run, "--teacher", "zoo:lpcv2023-topformer-tiny", "--bag", bag, "--every",
                       "1", "--holdout", "0.25", "iters=4", "eval_every=4", *STUDENT) == 0
    out = capsys.readouterr().out
    report = json.loads((run / "agreement.json").read_text())
    assert report["teacher"] == "zoo:lpcv2023-topformer-tiny" and report["student"]["frames"] == 16
    assert 0.0 <= report["student"]["pixel_agreement"] <= 1.0
    assert "agreement with the teacher on 16 held-out frames" in out
    print("LPCV network -> student on a 64-frame flight bag, 4 iterations: agreement mIoU %.3f, "
          "pixels %.3f (no bound: the network never saw drawn scenes)"
          % (report["student"]["miou"], report["student"]["pixel_agreement"]))
