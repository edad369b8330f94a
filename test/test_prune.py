"""Structured pruning removes what each method says (shapes and parameter counts of a real
MobileViT-XXS UPerNet), pruned checkpoints reload and run through ONNX Runtime, and bad
requests fail before any work."""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lpcv_segmentation.model.checkpoint import load_checkpoint, save_checkpoint
from lpcv_segmentation.model.cost import count_params
from lpcv_segmentation.model.segmodel import build_model
from training.pruning.request import prune_and_finetune, prune_schedule_step
from training.pruning.settings import DEFAULT_IMPORTANCE, PruneError, PruneSettings, method_kinds
from training.pruning.structured import prune_by_ratio
from training.pruning.units import (attention_layers, calibration_images, count_units, describe,
                                    heads_per_layer, macs_of, mlp_layers, width_to_keep,
                                    widths_per_layer)
from training.pruning.unstructured import prune_unstructured

SIZE = 64  # smallest input the MobileViT encoder takes (output stride 32, patch 2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return build_model("mobilevit_xxs", input_size=SIZE).eval()


def _pruned(base, method, amount=0.5, **kwargs):
    kwargs.setdefault("importance", "l2")  # the structural tests need no calibration data
    model = copy.deepcopy(base)
    prune_by_ratio(model, method, amount, **kwargs)
    return model


def _convs(module):
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}


def _runs(model):
    with torch.no_grad():
        out = model(torch.randn(1, 3, SIZE, SIZE))
    assert out.shape == (1, 14, SIZE, SIZE)


def test_filter_shrinks_encoder_convolutions_only(base):
    model = _pruned(base, "filter")
    before, after = _convs(base.encoder), _convs(model.encoder)
    assert after["stem.conv"].out_channels == before["stem.conv"].out_channels // 2
    assert after["stem.conv"].in_channels == 3  # the image's channels are never cut
    inner = "stages_1.1.conv1_1x1.conv"  # an inverted-residual expansion
    assert after[inner].out_channels == before[inner].out_channels // 2
    mvit = "stages_2.1.conv_1x1"  # MobileViT block: sets the transformer width
    assert after[mvit].out_channels == before[mvit].out_channels // 2
    attn = model.encoder.stages_2[1].transformer[0].attn
    assert attn.qkv.in_features == after[mvit].out_channels  # coupled layers cut together
    for name, conv in _convs(model.decoder).items():  # decoder widths untouched ...
        assert conv.out_channels == _convs(base.decoder)[name].out_channels
    laterals = model.decoder.lateral_convs  # ... but they read fewer encoder channels
    assert laterals[0][0].in_channels < base.decoder.lateral_convs[0][0].in_channels
    b, a = count_units(base), count_units(model)
    assert (a["heads"], a["mlp_neurons"]) == (b["heads"], b["mlp_neurons"])
    assert a["encoder_filters"] == b["encoder_filters"] // 2
    assert count_params(model) < count_params(base)
    _runs(model)


def test_channel_shrinks_decoder_and_keeps_the_classes(base):
    model = _pruned(base, "channel")
    assert model.decoder.fuse[0].out_channels == 32
    assert all(c[0].out_channels == 32 for c in model.decoder.lateral_convs)
    assert model.classifier.in_channels == 32 and model.classifier.out_channels == 14
    assert [m.out_channels for m in _convs(model.encoder).values()] == \
        [m.out_channels for m in _convs(base.encoder).values()]
    assert macs_of(model) < macs_of(base)
    _runs(model)


def test_neuron_shrinks_mlp_rows_and_matching_columns(base):
    model = _pruned(base, "neuron")
    for name, mlp in mlp_layers(model).items():
        original = dict(base.named_modules())[name]
        assert mlp.fc1.out_features == original.fc1.out_features // 2
        assert mlp.fc2.in_features == mlp.fc1.out_features
        assert mlp.fc2.out_features == original.fc2.out_features  # transformer width kept
    b, a = count_units(base), count_units(model)
    assert a["heads"] == b["heads"] and a["encoder_filters"] == b["encoder_filters"]
    assert a["mlp_neurons"] == b["mlp_neurons"] // 2
    _runs(model)


def test_head_removes_whole_heads_chosen_by_importance(base):
    start = copy.deepcopy(base)
    attn = start.encoder.stages_2[1].transformer[0].attn
    heads, dim, width = attn.num_heads, attn.head_dim, attn.qkv.in_features
    # make head 3 the most important of this layer: its q, k, v rows and proj columns x10
    with torch.no_grad():
        for part in range(3):
            rows = slice(part * heads * dim + 3 * dim, part * heads * dim + 4 * dim)
            attn.qkv.weight[rows] *= 10
        attn.proj.weight[:, 3 * dim:4 * dim] *= 10
    q_head3 = attn.qkv.weight[3 * dim:4 * dim].clone()
    model = _pruned(start, "head", 0.5)
    for name, a in attention_layers(model).items():
        assert a.num_heads == 2 and a.head_dim == dim if name.startswith("encoder.stages_2") \
            else a.num_heads == 2
        assert a.qkv.out_features == 3 * a.num_heads * a.head_dim
        assert a.proj.in_features == a.num_heads * a.head_dim
    pruned = model.encoder.stages_2[1].transformer[0].attn
    assert pruned.qkv.in_features == width  # the transformer width is not touched
    kept_q = pruned.qkv.weight[:2 * dim]  # the q rows of the two heads left
    assert any(torch.equal(kept_q[i * dim:(i + 1) * dim], q_head3) for i in range(2))
    assert count_units(model)["mlp_neurons"] == count_units(base)["mlp_neurons"]
    _runs(model)


def test_head_rounding_keeps_at_least_one_head(base):
    model = _pruned(base, "head", 0.9)
    assert all(a.num_heads == 1 for a in attention_layers(model).values())
    _runs(model)


def test_kinds_joined_by_plus_prune_each_named_kind_only(base):
    model = _pruned(base, "filter+head", 0.5)
    units, before = count_units(model), count_units(base)
    assert units["encoder_filters"] == before["encoder_filters"] // 2
    assert units["heads"] == before["heads"] // 2
    assert units["decoder_channels"] == before["decoder_channels"]
    assert units["mlp_neurons"] == before["mlp_neurons"]
    assert method_kinds("filter+head") == method_kinds("head+filter") == ("head", "filter")
    _runs(model)


@pytest.mark.parametrize("method", ["filter+bogus", "filter+filter", "filter+", "all+head",
                                    "unstructured+filter", "bogus"])
def test_unknown_method_is_refused_with_the_choices(method):
    with pytest.raises(PruneError, match="--method .*filter\\+head"):
        PruneSettings(method=method, amount=0.5).validate()


def test_all_with_macs_target_reaches_it(base):
    model = copy.deepcopy(base)
    gmacs = macs_of(model)
    settings = PruneSettings(method="all", amount=0.4, target="macs", importance="l2")
    record = prune_schedule_step(model, settings, original=describe(model))
    assert record["gmacs"] <= 0.6 * gmacs + 1e-9
    assert record["gmacs"] > 0.45 * gmacs  # bisection: not far past the target
    _runs(model)


@pytest.mark.parametrize("importance,allocation", [("l1", "global"), ("lamp", "global"),
                                                   ("taylor", "local")])
def test_importances_and_allocations(base, importance, allocation):
    calib = (torch.randn(2, 3, SIZE, SIZE), torch.randint(0, 14, (2, SIZE, SIZE)))
    model = _pruned(base, "all", 0.3, importance=importance, allocation=allocation, calib=calib)
    assert count_params(model) < 0.85 * count_params(base)
    assert all(p.grad is None for p in model.parameters())  # Taylor's gradients are dropped
    _runs(model)


def test_iterative_steps_reach_the_amount(base):
    model = copy.deepcopy(base)
    settings = PruneSettings(method="all", amount=0.5, iterative=2, round_to=1, importance="l1")
    original = describe(model)
    first = prune_schedule_step(model, settings, step=0, original=original)
    second = prune_schedule_step(model, settings, step=1, done=first["amount"], original=original)
    assert first["params"] > second["params"]
    assert count_units(model)["encoder_filters"] == count_units(base)["encoder_filters"] // 2
    assert count_units(model)["heads"] == count_units(base)["heads"] // 2


def test_iterative_head_counts_follow_the_original_count(base):
    """0.6 of 4 heads in 3 steps leaves 4 - round(4 x 0.6) = 2 heads, as one step does;
    rounding a ratio of the current count at each step would leave 1."""
    model = copy.deepcopy(base)
    original = describe(model)
    settings = PruneSettings(method="head", amount=0.6, iterative=3, importance="l1")
    done = 0.0
    kept = []
    for step in range(3):
        done = prune_schedule_step(model, settings, step=step, done=done,
                                   original=original)["amount"]
        kept.append(set(heads_per_layer(model).values()))
    assert set(original["heads"].values()) == {4}
    assert kept == [{3}, {2}, {2}]  # round(0.8), round(1.6), round(2.4) heads removed
    _runs(model)


@pytest.mark.parametrize("width,amount,round_to,kept", [
    (64, 0.6, 8, 24),    # 25.6 -> the nearest multiple of 8
    (64, 0.6, 16, 32),   # 25.6 -> the nearest multiple of 16
    (24, 0.5, 16, 16),   # never below round_to ...
    (64, 0.95, 8, 8),
    (8, 0.9, 16, 8),     # ... and a layer no wider than it keeps its width
    (22, 0.01, 8, 22),   # nearest multiple (24) above the width: nothing is removed
    (30, 0.5, 1, 15),
])
def test_width_to_keep(width, amount, round_to, kept):
    assert width_to_keep(width, amount, round_to) == kept


@pytest.mark.parametrize("round_to", [8, 16])
def test_iterative_widths_end_where_one_step_does(base, round_to):
    """Each step aims at the widths the cumulative amount leaves of the original ones: 0.6 in
    3 steps leaves what one step leaves. A ratio of the current widths, floored to round_to at
    every step, removed 75 % of a 64-channel layer (64 -> 48 -> 32 -> 16)."""
    ends = []
    for steps in (1, 3):
        settings = PruneSettings(method="filter", amount=0.6, round_to=round_to,
                                 importance="l1", iterative=steps)
        model = copy.deepcopy(base)
        original = describe(model)
        done = 0.0
        for step in range(steps):
            done = prune_schedule_step(model, settings, step=step, done=done,
                                       original=original)["amount"]
        ends.append(widths_per_layer(model))
    assert ends[0] == ends[1]
    convs = _convs(base.encoder)
    for name, conv in convs.items():
        expected = width_to_keep(conv.out_channels, 0.6, round_to)
        assert ends[1]["encoder." + name] == expected, name
    assert ends[1]["encoder.stages_3.0.conv3_1x1.conv"] == {8: 24, 16: 32}[round_to]  # of 64
    _runs(model)


def test_round_to_leaves_widths_in_multiples_of_eight(base):
    model = copy.deepcopy(base)
    calib = (torch.randn(2, 3, SIZE, SIZE), torch.randint(0, 14, (2, SIZE, SIZE)))
    prune_schedule_step(model, PruneSettings(method="all", amount=0.3), calib,  # taylor, round_to 8
                        original=describe(model))
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)
              and m is not model.classifier and m.groups == 1]
    widths += [m.fc1.out_features for m in mlp_layers(model).values()]
    assert all(w % 8 == 0 for w in widths), widths
    assert count_params(model) < 0.8 * count_params(base)
    _runs(model)


def test_pruning_a_channel_removes_exactly_its_contribution(base):
    """Index bookkeeping across concatenations, residual adds and the FPN: zeroing a channel's
    batch-norm scale and shift (so the channel carries 0 after its ReLU) and then pruning that
    channel must leave the output unchanged, for every convolution group of the model."""
    import torch_pruning as tp
    x = torch.randn(1, 3, SIZE, SIZE)
    graph = tp.DependencyGraph().build_dependency(copy.deepcopy(base), example_inputs=x)
    names = []
    for group in graph.get_all_groups(root_module_types=[nn.Conv2d]):
        targets = [dep.target.module for dep, _ in group]
        if any(isinstance(t, nn.LayerNorm) for t in targets) or \
                not any(isinstance(t, nn.BatchNorm2d) for t in targets) or \
                any(getattr(t, "out_channels", None) == 14 for t in targets):
            continue  # LayerNorm statistics see every channel; no zero-equivalent there
        names.append(graph._module2name[group[0].dep.target.module])
    assert any(n.startswith("decoder.") for n in names)
    assert any(n.startswith("encoder.") for n in names)
    checked = 0
    for name in names[::3]:  # a third of the groups keeps the test quick
        model = copy.deepcopy(base)
        modules = dict(model.named_modules())
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        root = modules[name]
        prune_out = graph.get_pruner_of_module(root).prune_out_channels
        group = graph.get_pruning_group(root, prune_out, [1])
        with torch.no_grad():
            for dep, idxs in group:
                if isinstance(dep.target.module, nn.BatchNorm2d):
                    dep.target.module.weight[idxs] = 0
                    dep.target.module.bias[idxs] = 0
            expected = model(x)
        group.prune()
        with torch.no_grad():
            assert torch.allclose(model(x), expected, atol=1e-4), name
        checked += 1
    assert checked >= 5


def test_unstructured_zeroes_weights_without_changing_shapes(base):
    model = copy.deepcopy(base)
    sparsity = prune_unstructured(model, 0.6)
    assert abs(sparsity - 0.6) < 0.01
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert shapes == {n: p.shape for n, p in base.named_parameters()}
    assert macs_of(model) == pytest.approx(macs_of(base))  # no fewer MACs: no speed-up
    assert not any(isinstance(m, torch.nn.utils.prune.BasePruningMethod)
                   for h in model.modules() for m in h._forward_pre_hooks.values())


def test_pruned_checkpoint_reloads_with_same_outputs(base, tmp_path):
    model = _pruned(base, "all", 0.5)
    path = str(tmp_path / "pruned.safetensors")
    heads = heads_per_layer(model)
    save_checkpoint(path, model, {"training": {"pruning": {"heads_after": heads}}})
    reloaded, meta = load_checkpoint(path)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(model(x), reloaded(x), atol=1e-5)
    assert heads_per_layer(reloaded) == heads_per_layer(model)
    assert meta["params"] == count_params(model) < count_params(base)


# ---------------------------------------------------------------------------------------------
# Bad requests: one clear error, nothing written
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amount", [0.0, 1.0, 1.5, -0.2])
def test_amount_outside_open_interval_is_refused(amount):
    with pytest.raises(PruneError, match="amount"):
        PruneSettings(amount=amount).validate()


def test_amount_refused_by_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training", "prune", "--checkpoint", "x.safetensors", "--data",
         str(tmp_path), "--out", str(tmp_path / "run"), "--amount", "1.2"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "outside (0, 1)" in result.stderr
    assert not (tmp_path / "run").exists()


def test_sweep_refuses_a_missing_test_set_before_any_point(tiny_checkpoint, synth_dataset,
                                                           tmp_path):
    missing = tmp_path / "no_test_set"
    result = subprocess.run(
        [sys.executable, "-m", "training", "sweep", "--checkpoint", str(tiny_checkpoint),
         "--data", str(synth_dataset), "--out", str(tmp_path / "sweep"), "--methods", "filter",
         "--amounts", "0.5", "--eval-data", str(missing)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and str(missing) in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "sweep").exists()


def _write_synthetic_pairs(root, count=2, size=64):
    import cv2
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, "IMG", split), exist_ok=True)
        os.makedirs(os.path.join(root, "GT", split), exist_ok=True)
        for i in range(count):
            name = "%s_%04d.png" % (split, i)
            cv2.imwrite(os.path.join(root, "IMG", split, name),
                        rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            cv2.imwrite(os.path.join(root, "GT", split, name),
                        rng.integers(0, 14, (size, size), dtype=np.uint8))
    return str(root)


def test_head_pruning_refused_on_resnet18(tmp_path):
    path = str(tmp_path / "resnet18.safetensors")
    save_checkpoint(path, build_model("resnet18", input_size=SIZE))
    data = _write_synthetic_pairs(tmp_path / "data")
    out = tmp_path / "run"
    for method in ("head", "neuron", "filter+head"):
        with pytest.raises(PruneError, match="does not apply to resnet18"):
            prune_and_finetune(path, data, str(out), PruneSettings(method=method, amount=0.5))
    assert not out.exists()


def test_checkpoint_without_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file
    path = str(tmp_path / "bare.safetensors")
    save_file({"w": torch.zeros(2)}, path)
    out = tmp_path / "run"
    with pytest.raises(PruneError, match="bare.safetensors.*metadata"):
        prune_and_finetune(path, str(tmp_path), str(out), PruneSettings(amount=0.5))
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# The command end to end: prune + fine-tune, reload, ONNX Runtime
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_prune_command_finetunes_and_runs_in_onnxruntime(tiny_checkpoint, synth_dataset,
                                                         tmp_path):
    from lpcv_segmentation.runtime.segmenter import Segmenter
    from training.export import export_onnx
    from training.synth import render_scene

    out = tmp_path / "pruned"
    result = subprocess.run(
        [sys.executable, "-m", "training", "prune", "--checkpoint", str(tiny_checkpoint),
         "--data", str(synth_dataset), "--out", str(out), "--method", "all", "--target",
         "sparsity", "--amount", "0.5", "--finetune-iters", "2", "crop_size=64", "batch_size=2",
         "workers=0", "max_eval_images=2"],
        cwd=REPO, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parameters" in result.stdout
    for name in ("best.safetensors", "last.safetensors", "pruned.safetensors", "prune.json"):
        assert (out / name).is_file(), name

    original, _ = load_checkpoint(str(tiny_checkpoint))
    model, meta = load_checkpoint(str(out / "best.safetensors"))
    record = meta["training"]["pruning"]
    assert record["method"] == "all" and record["amount"] == 0.5
    assert meta["params"] == record["params_after"] < 0.5 * count_params(original)
    assert record["heads_after"] == heads_per_layer(model)
    assert set(record["heads_after"].values()) == {2}  # 4 heads per layer before
    assert meta["training"]["iteration"] == 2  # the training loop fine-tuned it
    # distilling from the unpruned checkpoint by default, its score reported first
    assert meta["training"]["teacher"] == str(tiny_checkpoint)
    assert set(meta["training"]["before_distilling"]) == {"teacher_miou", "student_miou"}

    onnx_path = str(tmp_path / "pruned.onnx")
    report = export_onnx(str(out / "best.safetensors"), onnx_path, verify_images=1)
    assert report["check"]["passed"] and report["params"] == meta["params"]
    rgb = render_scene(7, 128)[0]
    onnx_labels = Segmenter(onnx_path, backend="onnxruntime").segment(rgb).labels
    torch_labels = Segmenter(str(out / "best.safetensors"), backend="pytorch").segment(rgb).labels
    assert onnx_labels.shape == (128, 128)
    assert (onnx_labels == torch_labels).mean() > 0.99


def test_prune_by_ratio_defaults_to_the_modules_importance(base):
    # the default is gradient-based (DEFAULT_IMPORTANCE), so without calibration data it refuses
    assert DEFAULT_IMPORTANCE == "taylor"
    with pytest.raises(PruneError, match="needs a labelled calibration batch"):
        prune_by_ratio(copy.deepcopy(base), "filter", 0.5)


def test_calibration_images_cover_every_class_present(tmp_path):
    import cv2
    paths = []
    for i in range(20):  # class 3 only in image 17, class 9 only in image 2, 0 everywhere
        label = np.zeros((8, 8), np.uint8)
        label[0, 0] = {17: 3, 2: 9}.get(i, 0)
        label[1, 1] = 12 if i % 2 else 0
        label[2, 2] = 255  # ignored pixels are not a class
        paths.append(tmp_path / ("%02d.png" % i))
        cv2.imwrite(str(paths[-1]), label)
    chosen = calibration_images(paths, count=4)
    assert 2 in chosen and 17 in chosen and len(chosen) == 4 == len(set(chosen))
    classes = set()
    for i in chosen:
        classes |= set(np.unique(cv2.imread(str(paths[i]), cv2.IMREAD_UNCHANGED)).tolist())
    assert classes - {255} == {0, 3, 9, 12}
    # more classes than count: the batch grows to hold them all
    assert {2, 17} <= set(calibration_images(paths, count=1))
