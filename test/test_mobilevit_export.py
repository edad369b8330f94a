"""training.mobilevit_export: the export-friendly MobileViT blocks compute what timm's do (random
inputs, MobileViT-XXS and -S, a pruned model), are swapped in only for the export, and give a
graph with fewer data-moving nodes whose ONNX Runtime outputs equal PyTorch's."""
import collections
import copy

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from timm.models.mobilevit import MobileVitBlock

from lpcv_segmentation.model.segmodel import build_model
from training.export import model_to_onnx
from training.mobilevit_export import ExportMobileVitBlock, export_friendly


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so that folding them is tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=gen))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(0.2 * torch.randn(m.num_features, generator=gen))
    return model.eval()


def _blocks(model):
    """The MobileViT blocks the model runs (an ExportMobileVitBlock keeps timm's as ``.block``)."""
    return [m for n, m in model.named_modules() if not n.endswith(".block")
            and isinstance(m, (MobileVitBlock, ExportMobileVitBlock))]


@pytest.mark.parametrize("arch", ["mobilevit_xxs", "mobilevit_s"])
def test_outputs_equal_timm_on_random_inputs(arch, one_torch_thread):
    torch.manual_seed(0)
    encoder = timm.create_model(arch, pretrained=False, features_only=True,
                                out_indices=(1, 2, 3, 4))
    _randomise_batchnorm(encoder)
    x = torch.randn(2, 3, 96, 128)  # batch 2, not square: every reshape is exercised
    with torch.no_grad():
        expected = encoder(x)
        with export_friendly(encoder) as fast:
            assert [type(b) for b in _blocks(fast)] == [ExportMobileVitBlock] * 3
            got = fast(x)
        after = encoder(x)
    assert [type(b) for b in _blocks(encoder)] == [MobileVitBlock] * 3  # restored
    for e, g, a in zip(expected, got, after):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-5), (g - e).abs().max()
        assert torch.equal(a, e)


def test_pruned_model_heads_and_widths(one_torch_thread):
    """After head and width pruning (3 heads, narrower MLPs and convs) the rewrite reads the
    shapes the pruner left: the whole segmentation model still matches."""
    from training.pruning.structured import prune_by_ratio
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model("mobilevit_xxs", input_size=64))
    prune_by_ratio(model, "all", 0.3, importance="l2")
    heads = {m.num_heads for m in model.modules() if hasattr(m, "qkv")}
    assert heads == {3}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        with export_friendly(model) as fast:
            got = fast(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (got - expected).abs().max()


def test_blocks_it_does_not_know_keep_timms_forward():
    encoder = timm.create_model("mobilevit_xxs", pretrained=False, features_only=True,
                                out_indices=(1, 2, 3, 4)).eval()
    block = _blocks(encoder)[0]
    assert ExportMobileVitBlock.supports(block)
    changed = copy.deepcopy(block)
    width = changed.transformer[0].norm1.normalized_shape[0]
    changed.transformer[0].ls1 = timm.layers.LayerScale(width)
    assert not ExportMobileVitBlock.supports(changed)
    # A feature map that is not a whole number of 2x2 patches goes through timm's own path.
    x = torch.randn(1, block.conv_kxk.conv.in_channels, 7, 9)
    with torch.no_grad():
        assert torch.equal(ExportMobileVitBlock(block)(x), block(x))


def test_export_moves_less_data_and_matches_pytorch(tmp_path, one_torch_thread):
    """Counted in the graph ONNX Runtime runs (its optimisations applied, saved with
    optimized_model_filepath): timm's path exports 3-D Linears that ONNX Runtime wraps in
    reshapes and a stacked q/k/v that it splits; the rewrite has neither."""
    import onnx
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model("mobilevit_xxs", decoder_channels=16, input_size=64))
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    ops = {}
    for name, timm_graph in (("timm", True), ("rewrite", False)):
        path = tmp_path / ("%s.onnx" % name)
        path.write_bytes(model_to_onnx(model, 64, timm_mobilevit=timm_graph).SerializeToString())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / ("%s_ort.onnx" % name))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"input": x})[0], expected,
                                   rtol=1e-4, atol=1e-4)
        graph = onnx.load(options.optimized_model_filepath).graph
        ops[name] = collections.Counter(n.op_type for n in graph.node)
    moving = ("Transpose", "Reshape", "Gather", "Slice", "Split", "Squeeze")
    assert sum(ops["rewrite"][k] for k in moving) < 0.7 * sum(ops["timm"][k] for k in moving)
    assert ops["timm"]["Split"] - ops["rewrite"]["Split"] == 9  # one q/k/v split per attention
    assert ops["rewrite"]["Transpose"] < ops["timm"]["Transpose"]
    # the model itself is untouched by the export
    assert [type(b) for b in _blocks(model)] == [MobileVitBlock] * 3
