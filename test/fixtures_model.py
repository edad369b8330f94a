"""Fixtures: a tiny trained-shape checkpoint and its ONNX export (session-scoped).

``tiny_checkpoint``: UPerNet-MobileViT-XXS, 32-channel decoder, 128 px input, random weights
(seeded) whose BatchNorm statistics are re-estimated on a few synthetic scenes, so that its
logits vary like a trained model's (with the default statistics nearly every pixel gets the
same two or three classes). Saved with ``save_checkpoint``.
``tiny_onnx``: its fp32 ONNX export by ``training.export.export_onnx`` (checked against
PyTorch on one synthetic scene, as the export always does).
``tiny_strided_onnx``: the same export with the logits left at the decoder's stride
(``--output-stride native``: 1x14x32x32 logits, metadata ``output_stride`` 4).
"""
from pathlib import Path

import pytest

TINY_ARCH = "mobilevit_xxs"
TINY_DECODER_CHANNELS = 32
TINY_INPUT_SIZE = 128
TINY_SEED = 0
TINY_BN_SCENES = 8


def build_tiny_model():
    """The fixture model, in eval mode on the CPU (deterministic for TINY_SEED)."""
    import numpy as np
    import torch

    from lpcv_segmentation.model.segmodel import build_model
    from lpcv_segmentation.runtime.segmenter import preprocess
    from training.synth import render_scene

    torch.manual_seed(TINY_SEED)
    model = build_model(TINY_ARCH, decoder_channels=TINY_DECODER_CHANNELS,
                        input_size=TINY_INPUT_SIZE)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = np.concatenate([preprocess(render_scene(1000 + i, TINY_INPUT_SIZE)[0],
                                       TINY_INPUT_SIZE, mean, std)
                            for i in range(TINY_BN_SCENES)])
    for module in model.modules():  # cumulative average over this one batch
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path of the tiny model's .safetensors checkpoint."""
    from lpcv_segmentation.model.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("tiny_model") / "tiny.safetensors"
    save_checkpoint(str(path), build_tiny_model(),
                    {"training": {"note": "test fixture: random weights, BatchNorm statistics "
                                          "from %d synthetic scenes" % TINY_BN_SCENES}})
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    """Path of the tiny model's fp32 ONNX export (1x3x128x128 in, 1x14x128x128 logits out)."""
    from training.export import export_onnx

    path = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_onnx(str(tiny_checkpoint), str(path), verify_images=1)
    return path


@pytest.fixture(scope="session")
def tiny_strided_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model exported by the command with ``--output-stride native``."""
    from training.__main__ import main as training_main

    path = tmp_path_factory.mktemp("tiny_strided") / "tiny_strided.onnx"
    assert training_main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(path),
                          "--output-stride", "native", "--verify-images", "1"]) == 0
    return path
