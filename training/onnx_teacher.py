"""A frozen distillation teacher run through ONNX Runtime.

``--teacher MODEL.onnx`` (this project's export, or a model brought in with ``import-onnx``)
distils the teacher's logits into the student on any machine ONNX Runtime runs on, CPU-only
included: the batch the student sees is brought to the teacher's own normalisation and input
size, run one image at a time when the file's batch dimension is fixed, and its logits are
resized to the student's output size. An ONNX file exposes logits only, so feature
distillation (``fm_weight``/``fg_weight``) with it is refused by the training loop.
"""
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lpcv_segmentation.core.classes import NUM_CLASSES, check_class_table
from lpcv_segmentation.runtime.segmenter import OnnxRuntimeBackend, RuntimeConfigError

__all__ = ["OnnxTeacher", "is_onnx_path"]


def is_onnx_path(path: Optional[str]) -> bool:
    return bool(path) and str(path).lower().endswith(".onnx")


class OnnxTeacher:
    """Logits of an ONNX segmentation model for a normalised training batch (no gradients)."""

    # what teacher_forward and the feature-distillation check read from a teacher
    fixed_input_size = True
    encoder_channels = None

    def __init__(self, path: str, device: torch.device,
                 train_mean: Sequence[float], train_std: Sequence[float]) -> None:
        backend_device = "cuda" if device.type == "cuda" else "cpu"
        try:
            self.backend = OnnxRuntimeBackend(path, device=backend_device)
        except RuntimeConfigError:
            if backend_device == "cpu":
                raise
            self.backend = OnnxRuntimeBackend(path, device="cpu")  # no GPU provider installed
        meta = self.backend.metadata
        if int(meta["num_classes"]) != NUM_CLASSES:
            raise RuntimeConfigError("%s predicts %s classes, the student %d"
                                     % (path, meta["num_classes"], NUM_CLASSES))
        check_class_table(meta.get("classes") or [])
        self.path = path
        self.arch = str(meta.get("arch", "onnx"))
        self.input_size = int(meta["input_size"])
        batch_dim = self.backend.session.get_inputs()[0].shape[0]
        self.batched = not isinstance(batch_dim, int)
        self.dtype = np.float16 if "float16" in self.backend.session.get_inputs()[0].type \
            else np.float32
        # x_teacher = (x_train * std_train + mean_train - mean_teacher) / std_teacher
        t_mean = np.asarray(meta["mean"], np.float32)
        t_std = np.asarray(meta["std"], np.float32)
        self.scale = torch.from_numpy(np.asarray(train_std, np.float32) / t_std).view(1, 3, 1, 1)
        self.shift = torch.from_numpy((np.asarray(train_mean, np.float32) - t_mean)
                                      / t_std).view(1, 3, 1, 1)

    def eval(self) -> "OnnxTeacher":
        return self

    @torch.no_grad()
    def logits(self, images: torch.Tensor, out_hw: Sequence[int]) -> torch.Tensor:
        """(N, C, out_h, out_w) float32 teacher logits on ``images``' device."""
        x = images.detach().float().cpu() * self.scale + self.shift
        size = self.input_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.numpy().astype(self.dtype)
        if self.batched:
            out = self.backend.run(np.ascontiguousarray(x))
        else:
            out = np.concatenate([self.backend.run(np.ascontiguousarray(x[i:i + 1]))
                                  for i in range(x.shape[0])])
        logits = torch.from_numpy(np.asarray(out, np.float32))
        logits = F.interpolate(logits, size=tuple(out_hw), mode="bilinear", align_corners=False)
        return logits.to(images.device)

    def forward_features(self, images: torch.Tensor) -> Dict[str, Any]:
        """The SegModel-like view validation and teacher_forward use: logits, no features."""
        return {"logits": self.logits(images, images.shape[-2:]), "encoder": None}

    def __call__(self, images: torch.Tensor, full_res: bool = True) -> torch.Tensor:
        return self.logits(images, images.shape[-2:])
