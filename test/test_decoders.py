"""The lighter UPerNet (``decoder: upernet_lite``) works wherever UPerNet does: cost, shapes,
checkpoints (pruned ones included), torch-pruning, distillation, ONNX export in every
precision and the back ends; the ``decoder`` key is checked where it enters."""
import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lpcv_segmentation.model.checkpoint import (METADATA_KEY, CheckpointError, load_checkpoint,
                                                read_metadata, save_checkpoint)
from lpcv_segmentation.model.cost import count_macs
from lpcv_segmentation.model.segmodel import build_model, main
from lpcv_segmentation.runtime.segmenter import Segmenter
from training import config as config_lib
from training.pruning.structured import prune_by_ratio
from training.export import Calibration, check_scenes, export_onnx
from training.train import build_step, teacher_forward

SIZE = 64  # smallest input the MobileViT encoder takes
WIDTH = 16


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return build_model("mobilevit_xxs", decoder_channels=WIDTH, input_size=SIZE,
                       decoder="upernet_lite").eval()


def test_lite_costs_at_most_six_tenths_of_upernet_at_256():
    """The lite head must cost at most 0.6x UPerNet: same encoder (MobileViT-XXS), width 64, 256 px."""
    full = count_macs(build_model("mobilevit_xxs", decoder_channels=64, input_size=256))
    light = count_macs(build_model("mobilevit_xxs", decoder_channels=64, input_size=256,
                                   decoder="upernet_lite"))
    assert light <= 0.6 * full


def test_lite_fuses_at_one_eighth_and_returns_full_resolution_logits(lite):
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = lite.forward_features(x)
        logits = lite(x)
    assert [tuple(f.shape[1:]) for f in feats["encoder"]] == [
        (c, SIZE // s, SIZE // s) for c, s in zip(lite.encoder_channels, (4, 8, 16, 32))]
    assert feats["decoder"].shape == (2, WIDTH, SIZE // 8, SIZE // 8)
    assert feats["logits"].shape == (2, 14, SIZE // 8, SIZE // 8)
    assert logits.shape == (2, 14, SIZE, SIZE)
    depthwise = [m for m in lite.decoder.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    assert len(depthwise) == 4  # three FPN levels and the fusion


def test_model_cli_prints_both_decoders(capsys):
    assert main(["--arch", "mobilevit_xxs", "--decoder", "upernet", "upernet_lite",
                 "--input-size", "128"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[4].strip() for r in rows] == ["upernet", "upernet_lite"]
    gmacs = [float(r[7]) for r in rows]
    assert gmacs[1] < gmacs[0]


def test_unknown_decoder_is_refused_where_it_enters(tmp_path, lite):
    with pytest.raises(ValueError, match="unknown decoder 'segformer'.*upernet_lite"):
        build_model("mobilevit_xxs", input_size=SIZE, decoder="segformer")
    with pytest.raises(config_lib.ConfigError, match="decoder must be one of"):
        config_lib.load_config(None, ["decoder=segformer"])
    path = tmp_path / "bad.safetensors"
    save_checkpoint(str(path), lite)
    meta = read_metadata(str(path))
    state = {k: v.contiguous() for k, v in lite.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(dict(meta, decoder="segformer"))})
    with pytest.raises(CheckpointError, match="bad.safetensors: unknown decoder 'segformer'"):
        load_checkpoint(str(path))


def test_checkpoint_without_decoder_key_loads_as_upernet(tmp_path):
    """Checkpoints written before the key existed hold UPerNet."""
    torch.manual_seed(0)
    model = build_model("mobilevit_xxs", decoder_channels=WIDTH, input_size=SIZE).eval()
    path = tmp_path / "old.safetensors"
    save_checkpoint(str(path), model)
    meta = read_metadata(str(path))
    assert meta["decoder"] == "upernet"
    del meta["decoder"]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={METADATA_KEY: json.dumps(meta)})
    loaded, _ = load_checkpoint(str(path))
    assert loaded.decoder_name == "upernet"
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_pruned_lite_checkpoint_reloads_with_same_outputs(lite, tmp_path):
    """torch-pruning's dependency graph cuts the depthwise convs with the layers they couple
    to; the structure record rebuilds them (groups included)."""
    model = copy.deepcopy(lite)
    prune_by_ratio(model, "all", 0.5, importance="l2")
    dw = model.decoder.fuse[0]
    assert dw.groups == dw.in_channels == dw.out_channels < lite.decoder.fuse[0].in_channels
    assert model.decoder.fpn_convs[0][3].out_channels < WIDTH  # decoder channels were cut
    path = str(tmp_path / "pruned_lite.safetensors")
    save_checkpoint(path, model)
    reloaded, meta = load_checkpoint(path)
    assert meta["decoder"] == "upernet_lite" and reloaded.decoder_name == "upernet_lite"
    assert any(name.startswith("decoder.") for name in meta["structure"])
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(model(x), reloaded(x), atol=1e-5)


def test_lite_student_distils_from_an_upernet_teacher(lite):
    """Logit KD and feature mimicking read forward_features of both models, whatever the
    decoder's output stride."""
    config = config_lib.load_config(None, ["fm_weight=1.0", "fg_weight=1.0", "kd_mse_weight=1.0",
                                           "ohem_min_kept=10"])
    teacher = build_model("mobilevit_xxs", decoder_channels=WIDTH, input_size=SIZE).eval()
    student = copy.deepcopy(lite).train()
    step, active = build_step(student, teacher, config)
    assert active == ["sup", "kd_mse", "kd_kl", "fm", "fg"]
    images = torch.randn(2, 3, SIZE, SIZE)
    labels = torch.randint(0, 14, (2, SIZE, SIZE))
    terms = step(images, labels, teacher_forward(teacher, images, labels.shape[-2:]))
    sum(terms.values()).backward()
    assert set(terms) == set(active) and all(torch.isfinite(t) for t in terms.values())
    assert student.decoder.fuse[3].weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_lite_exports_in_every_precision_and_runs_on_each_back_end(tmp_path, synth_dataset):
    torch.manual_seed(0)
    model = build_model("mobilevit_xxs", decoder_channels=WIDTH, input_size=SIZE,
                        decoder="upernet_lite")
    prune_by_ratio(model.eval(), "channel", 0.3, importance="l2")  # a pruned lite model, as the pipeline ships
    ckpt = tmp_path / "lite.safetensors"
    save_checkpoint(str(ckpt), model.eval())
    image = check_scenes(1, SIZE)[0]
    reference = Segmenter(str(ckpt), backend="pytorch").segment(image).labels
    for precision, extra in (("fp32", {}), ("fp16", {}),
                             ("int8", {"calibration": Calibration(str(synth_dataset), 4)})):
        out = tmp_path / ("lite_%s.onnx" % precision)
        export_onnx(str(ckpt), str(out), precision=precision, verify_images=1, **extra)
        seg = Segmenter(str(out), backend="onnxruntime")
        assert (seg.metadata["decoder"], seg.precision) == ("upernet_lite", precision)
        labels = seg.segment(image).labels
        assert labels.shape == (SIZE, SIZE)
        if precision != "int8":  # int8 agreement: measured by the int8 bench, not asserted here
            assert np.mean(labels == reference) >= 0.99
