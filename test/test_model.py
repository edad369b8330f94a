"""Model builder, structure records and checkpoints, on real timm encoders at small sizes."""
import json
import os
import shlex

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from lpcv_segmentation.core.classes import CLASS_NAMES, NUM_CLASSES
from lpcv_segmentation.model.checkpoint import (CheckpointError, load_checkpoint, read_metadata,
                                                save_checkpoint)
from lpcv_segmentation.model.cost import count_macs, count_params
from lpcv_segmentation.model.segmodel import ARCHS, build_model
from lpcv_segmentation.model.structure import (apply_structure, capture_structure,
                                               sync_attention_attributes)

SIZE = 64  # smallest size every registered arch accepts (swinv2: grids 16, 8, 4, 2 <= window 8)
DECODER = 32


def _inputs(size: int = SIZE, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_arch_builds_runs_and_round_trips(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, decoder_channels=DECODER, input_size=SIZE).eval()
    x = _inputs(n=1)
    with torch.no_grad():
        full = model(x)
        quarter = model(x, full_res=False)
        feats = model.forward_features(x)
    assert full.shape == (1, NUM_CLASSES, SIZE, SIZE)
    assert quarter.shape == (1, NUM_CLASSES, SIZE // 4, SIZE // 4)
    assert set(feats) == {"encoder", "decoder", "logits"}
    # NCHW stages at strides 4, 8, 16, 32 with the channels the model reports
    assert [tuple(f.shape) for f in feats["encoder"]] == [
        (1, c, SIZE // s, SIZE // s) for c, s in zip(model.encoder_channels, (4, 8, 16, 32))]
    assert feats["decoder"].shape == (1, DECODER, SIZE // 4, SIZE // 4) and model.fused_channels == DECODER
    assert torch.equal(feats["logits"], quarter)
    assert model.arch == arch and model.input_size == SIZE and model.decoder_channels == DECODER
    assert capture_structure(model) == {}  # nothing differs from a fresh build

    path = str(tmp_path / ("%s.safetensors" % arch))
    save_checkpoint(path, model, {"training": {"epochs": 1}})
    loaded, meta = load_checkpoint(path)
    assert torch.equal(_outputs(loaded, x), full)
    assert not loaded.training
    assert meta["arch"] == arch and meta["params"] == count_params(model)
    assert meta["training"] == {"epochs": 1}
    assert [c["name"] for c in meta["classes"]] == list(CLASS_NAMES)
    assert read_metadata(path) == meta
    assert not [p for p in os.listdir(str(tmp_path)) if ".tmp" in p]  # atomic write left nothing


def test_round_trip_with_other_decoder_width_and_classes(tmp_path):
    torch.manual_seed(1)
    model = build_model("mobilevit_xs", num_classes=5, decoder_channels=48, input_size=96)
    x = _inputs(96)
    expected = _outputs(model, x)
    path = str(tmp_path / "wide.safetensors")
    save_checkpoint(path, model)
    loaded, meta = load_checkpoint(path)
    assert (meta["decoder_channels"], meta["num_classes"], meta["input_size"]) == (48, 5, 96)
    assert loaded.classifier.out_channels == 5 and loaded.fused_channels == 48
    assert torch.equal(_outputs(loaded, x), expected)


def test_pruned_mobilevit_round_trip_removes_heads_and_channels(tmp_path):
    """Prune for real with torch-pruning (channels and whole attention heads), then save,
    rebuild from the checkpoint alone and get the very same outputs."""
    import torch_pruning as tp
    torch.manual_seed(2)
    model = build_model("mobilevit_xxs", decoder_channels=DECODER, input_size=SIZE).eval()
    x = _inputs()
    params_before, macs_before = count_params(model), count_macs(model)
    attentions = [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "head_dim")]
    heads_before = [a.num_heads for a in attentions]
    pruner = tp.pruner.MagnitudePruner(
        model, x[:1], importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
        ignored_layers=[model.classifier], num_heads={a.qkv: a.num_heads for a in attentions},
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
    pruner.step()
    assert sync_attention_attributes(model, pruner.num_heads) == len(attentions)
    assert [a.num_heads for a in attentions] == [h // 2 for h in heads_before]
    expected = _outputs(model, x)  # the forward pass works with the synced attributes

    structure = capture_structure(model)
    kinds = {d["kind"] for d in structure.values()}
    assert {"conv2d", "batchnorm2d", "linear", "layernorm", "attention"} <= kinds
    assert any(name.startswith("decoder.") for name in structure)  # decoder channels pruned too
    assert count_params(model) < params_before / 2 and count_macs(model) < macs_before

    path = str(tmp_path / "pruned.safetensors")
    save_checkpoint(path, model)
    loaded, meta = load_checkpoint(path)
    assert meta["structure"] == json.loads(json.dumps(structure))
    assert [a.num_heads for a in loaded.modules() if hasattr(a, "head_dim")] == [h // 2 for h in heads_before]
    assert loaded.encoder_channels == model.encoder_channels != build_model("mobilevit_xxs").encoder_channels
    assert count_params(loaded) == count_params(model)
    assert torch.equal(_outputs(loaded, x), expected)


def test_head_dim_pruning_syncs_without_pruner_heads():
    """Pruning head dimensions keeps the head count; the helper derives head_dim from qkv."""
    import torch_pruning as tp
    model = build_model("mobilevit_xxs", decoder_channels=DECODER, input_size=SIZE).eval()
    attentions = [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "head_dim")]
    pruner = tp.pruner.MagnitudePruner(
        model, _inputs(n=1), importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.25,
        ignored_layers=[model.classifier], num_heads={a.qkv: a.num_heads for a in attentions})
    pruner.step()
    sync_attention_attributes(model)
    for a in attentions:
        assert a.num_heads * a.head_dim * 3 == a.qkv.out_features == 3 * a.attn_dim
        assert a.scale == a.head_dim ** -0.5
    assert _outputs(model, _inputs()).shape == (2, NUM_CLASSES, SIZE, SIZE)


def test_apply_structure_rejects_a_layer_the_model_lacks():
    model = build_model("resnet18", decoder_channels=DECODER, input_size=SIZE)
    with pytest.raises(ValueError, match="decoder.nope"):
        apply_structure(model, {"decoder.nope": {"kind": "conv2d", "in_channels": 1,
                                                 "out_channels": 1, "groups": 1}})
    with pytest.raises(ValueError, match="encoder.conv1"):
        apply_structure(model, {"encoder.conv1": {"kind": "linear", "in_features": 3, "out_features": 4}})


def test_unknown_arch_and_invalid_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture 'mobilevit_xxxl'.*mobilevit_xxs"):
        build_model("mobilevit_xxxl")
    with pytest.raises(ValueError, match="input_size 100 is not valid for mobilevit_xxs"):
        build_model("mobilevit_xxs", input_size=100)
    with pytest.raises(ValueError, match="input_size 288 is not valid for swinv2_tiny"):
        build_model("swinv2_tiny", input_size=288)


def test_swin_teacher_refuses_another_input_size():
    model = build_model("swinv2_tiny", decoder_channels=DECODER, input_size=SIZE)
    with pytest.raises(ValueError, match="built for 64x64 input, got 128x128"):
        model(_inputs(128, n=1))


def _saved(tmp_path, name="model.safetensors", **kwargs):
    model = build_model("mobilevit_xxs", decoder_channels=DECODER, input_size=SIZE, **kwargs)
    path = str(tmp_path / name)
    save_checkpoint(path, model)
    return model, path


def _header(meta, **changes):
    return {"lpcv_segmentation": json.dumps(dict(meta, **changes))}


def test_metadata_that_does_not_match_the_weights_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    state = load_file(path)
    meta = read_metadata(path)
    wrong_width = str(tmp_path / "wrong_width.safetensors")
    save_file(state, wrong_width, metadata=_header(meta, decoder_channels=48))
    with pytest.raises(CheckpointError,
                       match="wrong_width.safetensors.*tensor 'decoder.ppm.stages.0.0.weight'"):
        load_checkpoint(wrong_width)

    missing_tensor = str(tmp_path / "missing_tensor.safetensors")
    state.pop("classifier.bias")
    save_file(state, missing_tensor, metadata=_header(meta))
    with pytest.raises(CheckpointError, match="missing_tensor.safetensors.*'classifier.bias' is missing"):
        load_checkpoint(missing_tensor)

    unknown_arch = str(tmp_path / "unknown_arch.safetensors")
    save_file(load_file(path), unknown_arch, metadata=_header(meta, arch="vit_huge"))
    with pytest.raises(CheckpointError, match="unknown_arch.safetensors: unknown architecture 'vit_huge'"):
        read_metadata(unknown_arch)


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.safetensors does not exist"):
        load_checkpoint(str(tmp_path / "nowhere.safetensors"))
    plain = str(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, plain)  # a safetensors file, but not one of ours
    with pytest.raises(CheckpointError,
                       match="plain.safetensors is not an lpcv_segmentation checkpoint: no 'lpcv_"):
        load_checkpoint(plain)
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="text.safetensors is not a readable safetensors file"):
        read_metadata(str(text))
    other = tmp_path / "model.txt"
    other.write_text("x")
    with pytest.raises(CheckpointError, match="model.txt: unsupported checkpoint type"):
        load_checkpoint(str(other))


def test_pth_checkpoint_dict_is_accepted(tmp_path):
    model, path = _saved(tmp_path)
    pth = str(tmp_path / "model.pth")
    torch.save({"state_dict": model.state_dict(), "meta": read_metadata(path)}, pth)
    loaded, meta = load_checkpoint(pth)
    assert meta["arch"] == "mobilevit_xxs"
    x = _inputs()
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))


class _RunsCode:
    """A pickle payload: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    model, _ = _saved(tmp_path)
    marker = tmp_path / "payload_ran"
    evil = str(tmp_path / "evil.pth")
    payload = _RunsCode("touch " + shlex.quote(str(marker)))
    torch.save({"state_dict": model.state_dict(), "meta": payload}, evil)
    with pytest.raises(CheckpointError, match="refused to load .*evil.pth"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="refused to load .*evil.pth"):
        read_metadata(evil)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_encoder_weights_from_a_local_timm_file(tmp_path, suffix):
    source = timm.create_model("mobilevit_xxs", pretrained=False)  # full model with its classifier
    path = str(tmp_path / ("mobilevit_xxs" + suffix))
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    model = build_model("mobilevit_xxs", decoder_channels=DECODER, input_size=SIZE, encoder_weights=path)
    # timm's features wrapper renames stages.0 to stages_0; the weights must land anyway
    assert torch.equal(model.encoder.state_dict()["stages_2.1.transformer.0.attn.qkv.weight"],
                       source.state_dict()["stages.2.1.transformer.0.attn.qkv.weight"])
    assert torch.equal(model.encoder.state_dict()["final_conv.conv.weight"],
                       source.state_dict()["final_conv.conv.weight"])


def test_encoder_weights_that_match_nothing_or_do_not_exist(tmp_path):
    unrelated = str(tmp_path / "unrelated.safetensors")
    save_file({"something.else": torch.zeros(3)}, unrelated)
    with pytest.raises(CheckpointError, match="unrelated.safetensors: no tensor matches the encoder"):
        build_model("resnet18", input_size=SIZE, encoder_weights=unrelated)
    with pytest.raises(CheckpointError, match="absent.pth does not exist"):
        build_model("resnet18", input_size=SIZE, encoder_weights=str(tmp_path / "absent.pth"))


@pytest.mark.slow
def test_exports_to_onnx_where_pooling_bins_do_not_divide_the_grid(tmp_path):
    """96 px input: a 3x3 last stage pooled to 2x2 and 6x6 bins (the case TorchScript's exporter
    rejects). The dynamo exporter's graph must agree with PyTorch in ONNX Runtime."""
    import onnxruntime as ort
    import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    model = build_model("mobilevit_xxs", decoder_channels=DECODER, input_size=96).eval()
    x = _inputs(96, n=1)
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(model, (x,), path, dynamo=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == (1, NUM_CLASSES, 96, 96)
    assert abs(out - _outputs(model, x).numpy()).max() < 1e-4
