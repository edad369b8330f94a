"""Distil a student from any teacher on unlabelled footage: image folders and flight bags.

  python -m training distill --teacher zoo:lpcv2023-topformer-tiny \\
      --bag flights/monday --bag flights/tuesday --every 5 --out runs/distilled [key=value ...]
  python -m training distill --teacher runs/teacher/best.safetensors --images footage/ \\
      --student models/default.safetensors --data LPCV --out runs/distilled
  python -m training distill ... --out runs/distilled --resume

The teacher is any segmentation model this project runs: an exported or imported ``.onnx``, a
``.safetensors`` checkpoint, or ``zoo:NAME``. Its input size, normalisation and stride come from
its metadata, so a teacher of another size than the student (the LPCV network: 288 px, its own
mean/std, stride-8 logits) needs nothing more.

Steps, each visible in RUN (``--out``):
  1. frames/   the frames in the LPCV layout: ``IMG/train`` (the training frames) and
               ``IMG/val`` (the held-out frames, ``--holdout`` of them, by file or by flight),
               each with the teacher's label map in ``GT/<split>``, made once through the
               runtime's ``Segmenter`` (as the node would label them). PNG frames of a folder are
               linked, others decoded to PNG; ``--data DIR`` links that dataset's labelled
               training pairs in beside them. ``frames/manifest.json`` records what was made.
               A frame that cannot be read (an image file that does not decode, a malformed bag
               frame) is left out with a warning naming it and counted (``unreadable_skipped``
               in the manifest and agreement.json); a bag none of whose frames can be read
               stops the run with an error naming it.
  2. training  ``python -m training train`` on ``frames/`` with the teacher: cross-entropy on
               the teacher's labels plus the KD losses on its logits (kd_kl_weight,
               kd_mse_weight) on every augmented crop. ``--student`` is a config (default
               ``training/configs/distill.yaml``) or a checkpoint to start from; key=value
               overrides apply. RUN holds what any training run holds: config.yaml, metrics.csv,
               best.safetensors, last.safetensors, last.state.pt; ``--resume`` continues it.
  3. agreement.json  the best checkpoint's agreement with the teacher on the held-out frames:
               mIoU and per-class IoU of the student's labels against the teacher's, the share of
               pixels where they agree, and what predicting the teacher's most common class
               everywhere scores (the floor a student must clear).

In metrics.csv and the checkpoints' metadata of a distillation run, ``miou``, ``pixel_acc`` and
``iou_<class>`` are these agreement figures (the held-out frames' labels are the teacher's). The
result prunes, exports and evaluates like any checkpoint (``--data RUN/frames`` for pruning's
fine-tune when no labelled data exists).
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np

from lpcv_segmentation.core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.fileio import file_sha256, write_bytes_atomic, write_json_atomic
from lpcv_segmentation.core.formatting import fmt
from lpcv_segmentation.core.metrics import SegmentationMetrics
from lpcv_segmentation.replay.bagio import CAMERA_TOPIC
from lpcv_segmentation.runtime.segmenter import RuntimeConfigError, Segmenter
from lpcv_segmentation.zoo import ZooError, resolve_model_path
from training.unlabelled import (HOLDOUT_BY, SKIPPED, FrameSourceError, UnlabelledFrame, bag_frames,
                                 folder_frames, read_frames, split_held_out)

__all__ = ["DistillError", "DEFAULT_STUDENT_CONFIG", "prepare_frames", "agreement",
           "add_arguments", "main", "distill"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STUDENT_CONFIG = str(REPO / "training" / "configs" / "distill.yaml")
FRAMES = "frames"
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
AGREEMENT = "agreement.json"
TRAIN_SPLIT, HELD_OUT_SPLIT = "train", "val"
LABELLED_PREFIX = "labelled_"


class DistillError(RuntimeError):
    """A distillation that cannot start or go on; the message names the file or option."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", metavar="MODEL",
                        help="the teacher: an .onnx file, a .safetensors checkpoint or zoo:NAME "
                             "(required, except with --resume: the run's own)")
    parser.add_argument("--student", default=DEFAULT_STUDENT_CONFIG, metavar="CONFIG_OR_CKPT",
                        help="student config (YAML; default %(default)s) or a checkpoint to "
                             "start from (its architecture and input size are kept)")
    parser.add_argument("--images", action="append", default=[], metavar="DIR",
                        help="a folder of frames, searched recursively (one flight; repeat)")
    parser.add_argument("--bag", action="append", default=[], metavar="FLIGHT",
                        help="a rosbag2 flight (one flight; repeat)")
    parser.add_argument("--camera-topic", default=CAMERA_TOPIC,
                        help="the bags' camera topic (default %(default)s)")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="take every Nth frame of a bag (default %(default)s)")
    parser.add_argument("--holdout", type=float, default=0.1, metavar="FRACTION",
                        help="share of the frames (or flights) held out to score the agreement "
                             "with the teacher (default %(default)s)")
    parser.add_argument("--holdout-by", choices=HOLDOUT_BY, default="auto",
                        help="hold out spread files, or whole flights (auto: flights when "
                             "there are several)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="also train on this labelled dataset's training split (LPCV layout)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run folder: frames/, checkpoints, metrics.csv, agreement.json")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR (the frames already made are kept)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override student config keys, e.g. iters=2000 lr=1e-3")


def main(args: argparse.Namespace) -> int:
    from lpcv_segmentation.model.weights import CheckpointError
    from training.config import ConfigError
    from training.data import DatasetError
    from training.pretrained import WeightsError
    from training.train import TrainingError

    try:
        return distill(args)
    except (DistillError, FrameSourceError, ConfigError, TrainingError, DatasetError, CheckpointError,
            WeightsError) as error:
        print("error: %s" % error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------------
# Step 1: the frames, labelled by the teacher
# --------------------------------------------------------------------------------------------
def _teacher(spec: str) -> Segmenter:
    try:
        return Segmenter(spec, backend="auto", device="cpu")
    except (RuntimeConfigError, ValueError) as error:
        raise DistillError("--teacher %s: %s" % (spec, error))


def _list_frames(args: argparse.Namespace) -> List[List[UnlabelledFrame]]:
    if not args.images and not args.bag:
        raise DistillError("no frames: give --images DIR and/or --bag FLIGHT")
    flights = [folder_frames(folder, i) for i, folder in enumerate(args.images)]
    flights += [bag_frames(bag, len(args.images) + i, args.camera_topic, args.every)
                for i, bag in enumerate(args.bag)]
    return flights


def _settings(args: argparse.Namespace, teacher_path: str) -> Dict[str, Any]:
    """What the frames folder depends on: a run started with other settings starts it anew."""
    return {"teacher": args.teacher, "teacher_sha256": file_sha256(teacher_path),
            "images": [os.path.abspath(p) for p in args.images],
            "bags": [os.path.abspath(p) for p in args.bag], "camera_topic": args.camera_topic,
            "every": args.every, "holdout": args.holdout, "holdout_by": args.holdout_by,
            "data": os.path.abspath(args.data) if args.data else None}


def _png(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DistillError("cannot encode a PNG of shape %s" % (array.shape,))
    return encoded.tobytes()


def _link(src: Path, dst: Path) -> None:
    """``dst`` -> ``src`` (a symbolic link; a copy where links cannot be made)."""
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        dst.symlink_to(src.resolve())
    except OSError:
        shutil.copyfile(str(src), str(dst))


def prepare_frames(args: argparse.Namespace, run_dir: Path, resume: bool = False,
                   progress: bool = True) -> Dict[str, Any]:
    """RUN/frames in the LPCV layout with the teacher's labels; its manifest. A complete folder
    is kept when resuming or when it was made with the same settings; frames whose label is
    already there (an interrupted preparation) are not labelled again."""
    from tqdm import tqdm

    try:
        teacher_path = resolve_model_path(args.teacher)
    except ZooError as error:
        raise DistillError("--teacher: %s" % error)
    frames_dir = run_dir / FRAMES
    settings = _settings(args, teacher_path)
    manifest_path = frames_dir / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if resume or manifest.get("settings") == settings:
            return manifest
    settings_path = frames_dir / SETTINGS
    stale = not settings_path.is_file() or json.loads(settings_path.read_text()) != settings
    if frames_dir.exists() and not resume and stale:
        shutil.rmtree(str(frames_dir))  # made for other sources or another teacher
    flights = _list_frames(args)
    train, held, by = split_held_out(flights, args.holdout, args.holdout_by)
    for split in (TRAIN_SPLIT, HELD_OUT_SPLIT):
        (frames_dir / "IMG" / split).mkdir(parents=True, exist_ok=True)
        (frames_dir / "GT" / split).mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings_path, settings)

    split_of = {f.name: TRAIN_SPLIT for f in train}
    split_of.update({f.name: HELD_OUT_SPLIT for f in held})
    todo = [f for f in train + held
            if not (frames_dir / "GT" / split_of[f.name] / (f.name + ".png")).is_file()]
    skipped: Dict[str, int] = {}
    segmenter = _teacher(args.teacher) if todo else None
    made = {TRAIN_SPLIT: 0, HELD_OUT_SPLIT: 0}

    def warn(line: str) -> None:
        tqdm.write(line, file=sys.stderr)  # above the bar, not through it

    for frame, rgb in tqdm(read_frames(todo, args.camera_topic, skipped, warn), total=len(todo),
                           desc="teacher labels", unit="frame", disable=not progress):
        split = split_of[frame.name]
        image_path = frames_dir / "IMG" / split / (frame.name + ".png")
        if frame.bag_index is None and frame.path.lower().endswith(".png"):
            _link(Path(frame.path), image_path)
        else:
            write_bytes_atomic(image_path, _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
        labels = segmenter.segment(rgb).labels  # type: ignore[union-attr]
        # written last: a label file means its frame is complete
        write_bytes_atomic(frames_dir / "GT" / split / (frame.name + ".png"), _png(labels))
        made[split] += 1

    for frames in flights:
        if frames[0].bag_index is not None and not any(
                (frames_dir / "GT" / split_of[f.name] / (f.name + ".png")).is_file() for f in frames):
            raise DistillError("%s: no frame on %s can be read: all %d taken are malformed (see the "
                               "warnings above)" % (frames[0].path, args.camera_topic, len(frames)))
    labelled = 0
    if args.data:
        from training.data import find_pairs
        for image, label in find_pairs(args.data, TRAIN_SPLIT):
            name = LABELLED_PREFIX + image.name
            _link(image, frames_dir / "IMG" / TRAIN_SPLIT / name)
            _link(label, frames_dir / "GT" / TRAIN_SPLIT / name)
            labelled += 1
    count = {s: len(list((frames_dir / "GT" / s).glob("*.png")))
             for s in (TRAIN_SPLIT, HELD_OUT_SPLIT)}
    if count[HELD_OUT_SPLIT] == 0 or count[TRAIN_SPLIT] == labelled:
        raise DistillError("no usable %s frames (%d unreadable frames skipped)"
                           % ("held-out" if count[HELD_OUT_SPLIT] == 0 else "training",
                              skipped.get(SKIPPED, 0)))
    manifest = {"settings": settings, "teacher_path": teacher_path, "holdout_by": by,
                "flights": len(flights), "train_frames": count[TRAIN_SPLIT] - labelled,
                "held_out_frames": count[HELD_OUT_SPLIT], "labelled_train_images": labelled,
                "unreadable_skipped": skipped.get(SKIPPED, 0),
                "held_out": sorted(f.name for f in held)}
    write_json_atomic(manifest_path, manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# Step 3: agreement with the teacher
# --------------------------------------------------------------------------------------------
def _held_out_labels(frames_dir: Path) -> List[np.ndarray]:
    from training.data import read_label
    return [read_label(p) for p in sorted((frames_dir / "GT" / HELD_OUT_SPLIT).glob("*.png"))]


def majority_baseline(teacher_labels: Sequence[np.ndarray]) -> Dict[str, Any]:
    """Agreement of a model predicting the teacher's most common class everywhere."""
    counts = np.zeros(NUM_CLASSES, np.int64)
    for labels in teacher_labels:
        counts += np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    majority = int(counts.argmax())
    metrics = SegmentationMetrics(NUM_CLASSES, IGNORE_INDEX)
    for labels in teacher_labels:
        metrics.update(np.full_like(labels, majority), labels)
    summary = metrics.summary()
    return {"class": CLASS_NAMES[majority], "miou": summary["miou"],
            "pixel_agreement": summary["pixel_acc"]}


def agreement(model: str, frames_dir: Path) -> Dict[str, Any]:
    """The student's labels against the teacher's on the held-out frames, through the runtime
    (as ``training evaluate`` scores a model)."""
    from training.evaluate import Runtime, evaluate
    result = evaluate(model, str(frames_dir), HELD_OUT_SPLIT, Runtime(warmup=0), progress=False)
    return {"model": result["model"], "frames": result["images"], "miou": result["miou"],
            "pixel_agreement": result["pixel_acc"], "per_class_iou": result["per_class_iou"]}


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def _student_config(student: str) -> List[str]:
    """(--config path, extra overrides) for ``--student``: a YAML config as it is, or a
    checkpoint started from (``init=``) with the distillation defaults and its own input size
    as the crop."""
    if student.lower().endswith((".yaml", ".yml")):
        if not os.path.isfile(student):
            raise DistillError("--student %s: no such config" % student)
        return [student]
    if not os.path.isfile(student):
        raise DistillError("--student %s: no such config or checkpoint" % student)
    from lpcv_segmentation.model.checkpoint import CheckpointError, read_metadata
    try:
        meta = read_metadata(student)
    except CheckpointError as error:
        raise DistillError("--student: %s" % error)
    return [DEFAULT_STUDENT_CONFIG, "init=%s" % os.path.abspath(student),
            "crop_size=%d" % int(meta["input_size"])]


def distill(args: argparse.Namespace) -> int:
    from training.train import CONFIG_YAML, STATE, resolve_config, train

    run_dir = Path(args.out)
    resume = bool(args.resume)
    if resume and not (run_dir / STATE).is_file():
        if not (run_dir / FRAMES).is_dir():
            raise DistillError("--resume: %s holds no distillation run" % run_dir)
        print("resume: no checkpoint in %s yet; the frames made so far are kept and training "
              "starts" % run_dir, file=sys.stderr)
        resume = False
    if not resume and (run_dir / STATE).exists():
        raise DistillError("%s already holds a run (%s); pass --resume to continue it or choose "
                           "another --out" % (run_dir, STATE))
    if not args.resume and not args.teacher:
        raise DistillError("--teacher is required (an .onnx file, a .safetensors checkpoint or "
                           "zoo:NAME)")
    if resume:
        saved = json.loads((run_dir / FRAMES / MANIFEST).read_text())["settings"]
        args.teacher = saved["teacher"]  # the run's own teacher, whatever this call says
    elif args.resume and (run_dir / FRAMES / SETTINGS).is_file():
        # an interrupted preparation: the sources and teacher it was started with
        saved = json.loads((run_dir / FRAMES / SETTINGS).read_text())
        args.teacher, args.images, args.bag = saved["teacher"], saved["images"], saved["bags"]
        args.camera_topic, args.every, args.data = saved["camera_topic"], saved["every"], saved["data"]
        args.holdout, args.holdout_by = saved["holdout"], saved["holdout_by"]
    if not args.teacher:
        raise DistillError("--resume: %s has no record of its teacher and sources yet; start it "
                           "again with --teacher and --images/--bag" % run_dir)
    config, *student_overrides = _student_config(args.student) if not resume else [None]
    user_keys = {o.split("=", 1)[0] for o in args.overrides}
    student_overrides = [o for o in student_overrides if o.split("=", 1)[0] not in user_keys]

    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = prepare_frames(args, run_dir, resume=bool(args.resume))
    unreadable = manifest.get("unreadable_skipped", 0)
    print("frames: %d training, %d held out (by %s) from %d flight(s)%s%s; teacher labels in %s"
          % (manifest["train_frames"], manifest["held_out_frames"], manifest["holdout_by"],
             manifest["flights"], (", plus %d labelled images" % manifest["labelled_train_images"])
             if manifest["labelled_train_images"] else "",
             (", %d unreadable frames skipped" % unreadable) if unreadable else "",
             run_dir / FRAMES), file=sys.stderr)

    overrides = student_overrides + list(args.overrides) + [
        "train_split=%s" % TRAIN_SPLIT, "val_split=%s" % HELD_OUT_SPLIT, "teacher=%s" % args.teacher]
    rc = train(resolve_config(config, overrides, run_dir, resume), str(run_dir / FRAMES), run_dir,
               resume)
    if rc != 0 or not (run_dir / "best.safetensors").is_file():
        return rc
    stopped = _stopped_early(run_dir / CONFIG_YAML, run_dir)
    if stopped:
        return 0
    frames = {k: manifest[k] for k in ("train_frames", "held_out_frames", "labelled_train_images",
                                       "flights", "holdout_by")}
    report = {"teacher": args.teacher, "frames": dict(frames, unreadable_skipped=unreadable),
              "student": agreement(str(run_dir / "best.safetensors"), run_dir / FRAMES),
              "majority_class": majority_baseline(_held_out_labels(run_dir / FRAMES))}
    write_json_atomic(run_dir / AGREEMENT, report)
    student, floor = report["student"], report["majority_class"]
    print("agreement with the teacher on %d held-out frames (best.safetensors): mIoU %s, pixels "
          "agreeing %s; predicting its most common class (%s) everywhere: mIoU %s, pixels %s; "
          "wrote %s" % (student["frames"], fmt(student["miou"]), fmt(student["pixel_agreement"]),
                        floor["class"], fmt(floor["miou"]), fmt(floor["pixel_agreement"]),
                        run_dir / AGREEMENT))
    return 0


def _stopped_early(config_yaml: Path, run_dir: Path) -> bool:
    """True when the run stopped before ``iters`` (stop_after): it is scored when it ends."""
    import yaml
    from lpcv_segmentation.model.checkpoint import read_metadata
    iters = int(yaml.safe_load(config_yaml.read_text())["iters"])
    return int(read_metadata(str(run_dir / "last.safetensors"))["training"]["iteration"]) < iters
