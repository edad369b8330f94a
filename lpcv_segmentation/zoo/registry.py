"""The model zoo's registry: named segmentation models with where they come from and what they are.

Each entry names one file by a URL pinned to a commit and its SHA-256, with its licence, its
input contract (what ``import_onnx`` needs to wrap it: input size, normalisation, stride of its
logits, class table), where it came from and the figures its authors published. Figures are
theirs, not measured by this project.

Runs on Python 3.8+; standard library only.
"""
from typing import Dict, NamedTuple, Optional, Tuple

__all__ = ["ZooModel", "MODELS", "ZOO_PREFIX"]

ZOO_PREFIX = "zoo:"  # how a zoo model is named wherever a model path is taken


class ZooModel(NamedTuple):
    name: str
    url: str
    sha256: str
    size_bytes: int
    licence: str
    input_size: int
    mean: Tuple[float, float, float]     # on the norm_scale range
    std: Tuple[float, float, float]
    norm_scale: float                    # 255: mean/std on 0-255 pixel values; 1: on [0, 1]
    output_stride: Optional[int]         # stride of the logits (None: read from the model)
    classes: str                         # class table the logits follow (onnx_import.CLASS_TABLES)
    trained_on: str
    provenance: str
    published: str                       # the authors' figures, with where they were measured

    @property
    def spec(self) -> str:
        """The name to give wherever a model path is taken (``zoo:NAME``)."""
        return ZOO_PREFIX + self.name

    def card(self) -> Dict[str, object]:
        """The entry as a dict (what ``zoo list --json`` prints and the metadata records)."""
        return dict(self._asdict(), spec=self.spec)


MODELS: Dict[str, ZooModel] = {m.name: m for m in [
    ZooModel(
        name="lpcv2023-topformer-tiny",
        url="https://raw.githubusercontent.com/midea-ai/LPCVC2023-AidgetRock/"
            "ff3d19c3b4e7d18b081f9d3e0b1fbb4c0dcce0f3/inference/tiny_288_8tp_3trans_dist-682.onnx",
        sha256="c1c4fc9984896f8d7a09ee0a55f35202216a33c7bbf7ae0061837c9baad4a5aa",
        size_bytes=3934142,
        licence="Apache-2.0",
        input_size=288,
        mean=(123.675, 116.28, 103.53),
        std=(58.395, 57.12, 57.375),
        norm_scale=255.0,
        output_stride=8,
        classes="lpcv",
        trained_on="the LPCV 2023 segmentation track's public labelled set: real UAV photographs "
                   "of disaster scenes (1,120 images of 512x512 with labels of the 14 classes)",
        provenance="LPCV 2023 segmentation track, 2nd place (team AidgetRock, Midea AI): "
                   "TopFormer-tiny modified (288 px input, 8 pyramid layers, 3 transformer "
                   "blocks), distilled from TopFormer-base with channel-wise KD; file "
                   "inference/tiny_288_8tp_3trans_dist-682.onnx of github.com/midea-ai/"
                   "LPCVC2023-AidgetRock at commit ff3d19c3b4e7d18b081f9d3e0b1fbb4c0dcce0f3",
        published="LPCV 2023 challenge test set (the organisers' scoring): accuracy (mean Dice) "
                  "55.4 %, 15 ms per image on a Jetson Nano 2GB with TensorRT, score 36.8",
    ),
]}
