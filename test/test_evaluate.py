"""training.evaluate: the same figures for a checkpoint and its ONNX export, equal to the
training loop's validation, the challenge score, overlays, and clear errors."""
import json

import cv2
import numpy as np
import pytest
import torch

from lpcv_segmentation.core.classes import CLASS_NAMES, palette
from lpcv_segmentation.model.checkpoint import load_checkpoint
from training.__main__ import main as cli
from training.data import EvalTransform, SegmentationDataset, find_pairs, read_label
from training.distributed import DistContext
from training.evaluate import MIN_PANEL_WIDTH, Runtime, evaluate, overlay_panel
from training.train import val_loader, validate

KEYS = ("miou", "dice", "pixel_acc", "per_class_iou", "params", "gmacs", "latency_ms", "score")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def checkpoint_result(tiny_checkpoint, synth_dataset):
    return evaluate(str(tiny_checkpoint), str(synth_dataset), "val", Runtime(warmup=1),
                    progress=False)


def test_checkpoint_figures(checkpoint_result, tiny_checkpoint, synth_dataset):
    r = checkpoint_result
    for key in KEYS:
        assert r[key] is not None, key
    assert r["backend"] == "pytorch" and r["images"] == len(find_pairs(synth_dataset, "val"))
    assert list(r["per_class_iou"]) == list(CLASS_NAMES)
    assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["dice"] <= 1.0 and 0.0 < r["pixel_acc"] <= 1.0
    # mIoU is the mean over the classes present in a label or a prediction (the others: None)
    present = [iou for iou in r["per_class_iou"].values() if iou is not None]
    assert present and r["miou"] == pytest.approx(sum(present) / len(present))
    model, meta = load_checkpoint(str(tiny_checkpoint))
    assert r["params"] == sum(p.numel() for p in model.parameters()) == meta["params"]
    assert 0.0 < r["gmacs"] < 1.0
    assert r["latency_ms"] > 0 and r["score"] == pytest.approx(r["dice"] / (r["latency_ms"] / 1e3))


def test_training_validation_reports_the_same_figures(checkpoint_result, tiny_checkpoint,
                                                      synth_dataset):
    """One metric: the train loop's validation (batched, EvalTransform) agrees with
    evaluate (Segmenter, one image at a time) on the same checkpoint."""
    model, meta = load_checkpoint(str(tiny_checkpoint))
    val = SegmentationDataset(synth_dataset, "val",
                              transform=EvalTransform(meta["input_size"], resize_label=False),
                              validate=False)
    config = {"max_eval_images": None, "batch_size": 4, "workers": 0}
    summary = validate(model, val_loader(val, config, DistContext()), DistContext())
    for key in ("miou", "dice", "pixel_acc"):
        assert summary[key] == pytest.approx(checkpoint_result[key], abs=1e-3), key


def test_onnx_export_scores_like_its_checkpoint(checkpoint_result, tiny_onnx, synth_dataset):
    r = evaluate(str(tiny_onnx), str(synth_dataset), "val", Runtime(warmup=1), progress=False)
    assert r["backend"] == "onnxruntime"
    for key in ("miou", "dice", "pixel_acc"):
        assert r[key] == pytest.approx(checkpoint_result[key], abs=0.01), key
    # cost from the file's metadata, written by the export
    assert r["params"] == checkpoint_result["params"]
    assert r["gmacs"] == pytest.approx(checkpoint_result["gmacs"], rel=1e-3)
    assert r["score"] == pytest.approx(r["dice"] / (r["latency_ms"] / 1e3))


def test_command_writes_json_and_overlays(tiny_checkpoint, synth_dataset, tmp_path, capsys):
    out = tmp_path / "eval" / "result.json"
    rc = cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_dataset),
              "--split", "val", "--json", str(out), "--overlays", "2", "--warmup", "1"])
    assert rc == 0
    assert "score" in capsys.readouterr().out
    result = json.loads(out.read_text())
    for key in KEYS:
        assert key in result
    pngs = sorted((tmp_path / "eval" / "result_overlays").glob("*.png"))
    assert [p.name for p in pngs] == [p.name for p, _ in find_pairs(synth_dataset, "val")[:2]]
    panel = cv2.cvtColor(cv2.imread(str(pngs[0])), cv2.COLOR_BGR2RGB)
    # three enlarged 128 px panels side by side, a title row above, a legend below
    side = 128 * -(-MIN_PANEL_WIDTH // 128)
    assert panel.shape[1] == 3 * side + 8 and panel.shape[0] > side
    # the middle panel is the label in the class colours (below a title row of unknown height)
    label = read_label(find_pairs(synth_dataset, "val")[0][1])
    scale = side // 128
    expected = palette()[label]
    assert any(np.array_equal(panel[top:top + side:scale, side + 4:2 * side + 4:scale], expected)
               for top in range(panel.shape[0] - side))


def test_overlay_legend_lists_the_classes_shown():
    image = np.full((64, 64, 3), 90, np.uint8)
    label = np.zeros((64, 64), np.uint8)
    label[:10] = 10  # person
    prediction = np.full((64, 64), 7, np.uint8)  # water
    with_two = overlay_panel(image, label, prediction)
    label[20:30] = 13
    with_three = overlay_panel(image, label, prediction)
    assert with_two.shape[1] == with_three.shape[1]
    # the legend region carries each class colour shown
    legend = with_three[-30:]
    for cls in (0, 7, 10, 13):
        assert (legend == palette()[cls]).all(axis=-1).any(), CLASS_NAMES[cls]


def test_bad_inputs_give_one_clear_error(tiny_checkpoint, synth_dataset, tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert cli(["evaluate", "--checkpoint", str(missing), "--data", str(synth_dataset),
                "--json", str(tmp_path / "a.json")]) == 1
    assert str(missing) in capsys.readouterr().err
    assert cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_dataset),
                "--split", "test", "--json", str(tmp_path / "b.json")]) == 1
    assert "IMG/test" in capsys.readouterr().err
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    assert cli(["evaluate", "--checkpoint", str(engine), "--data", str(synth_dataset),
                "--json", str(tmp_path / "c.json")]) == 1
    err = capsys.readouterr().err
    assert "tensorrt" in err.lower() and "Traceback" not in err
    assert not (tmp_path / "a.json").exists()


def test_pytorch_fp16_on_cpu_is_refused_clearly(tiny_checkpoint, synth_dataset, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 runs where CUDA is available")
    assert cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_dataset),
                "--precision", "fp16", "--json", str(tmp_path / "x.json")]) == 1
    assert "fp16" in capsys.readouterr().err
