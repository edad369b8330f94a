"""Training losses: supervised (OHEM cross-entropy, cross-entropy) and distillation
(logit MSE, logit KL with temperature, feature mimicking, masked feature generation).

Shapes: logits (N, C, H, W), labels (N, H, W) int64 with ``ignore_index`` for pixels without
a label. Every distillation loss is averaged over labelled pixels only, because the padding a
random crop adds carries no image content for the teacher to be right about.
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lpcv_segmentation.core.classes import IGNORE_INDEX

from training.config import KD_PIXELS


class OhemCrossEntropy(nn.Module):
    """Online hard example mining cross-entropy (as in HRNet/PIDNet and the paper's code):
    average the loss over the pixels whose probability of the true class is below
    ``thresh``, keeping at least the ``min_kept`` hardest labelled pixels of the batch."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 100000,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.thresh = float(thresh)
        self.min_kept = max(1, int(min_kept))
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pixel_loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index,
                                     reduction="none").flatten()
        valid = labels.flatten() != self.ignore_index
        losses = pixel_loss[valid]
        if losses.numel() == 0:
            return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) alive
        # probability of the true class = exp(-CE); "hard" = low probability = high loss
        with torch.no_grad():
            true_prob = torch.exp(-losses)
            k = min(self.min_kept, losses.numel())
            kth_prob = torch.kthvalue(true_prob, k).values
            threshold = torch.clamp(kth_prob, min=self.thresh)
            keep = true_prob <= threshold
        return losses[keep].mean()


class CrossEntropy(nn.Module):
    """Plain pixel-wise cross-entropy over labelled pixels."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not bool((labels != self.ignore_index).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)


def _ohem_from_config(config: Dict) -> nn.Module:
    return OhemCrossEntropy(config["ohem_thresh"], config["ohem_min_kept"])


def _ce_from_config(config: Dict) -> nn.Module:
    return CrossEntropy()


# config["loss"] -> builder
SUPERVISED_LOSSES: Dict[str, Callable[[Dict], nn.Module]] = {
    "ohem": _ohem_from_config,
    "ce": _ce_from_config,
}


def build_supervised_loss(config: Dict) -> nn.Module:
    name = config["loss"]
    if name not in SUPERVISED_LOSSES:
        raise ValueError("unknown loss %r; choose from %s" % (name, ", ".join(SUPERVISED_LOSSES)))
    return SUPERVISED_LOSSES[name](config)


def _masked_pixel_mean(per_pixel: torch.Tensor, labels: torch.Tensor,
                       ignore_index: int) -> torch.Tensor:
    """Mean of an (N, H, W) map over the labelled pixels."""
    valid = (labels != ignore_index).to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1.0)


def standardize(logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each pixel's logits minus their mean over classes, divided by their standard deviation:
    the class ranking and relative margins without the scale (logit standardisation,
    Sun et al., CVPR 2024)."""
    centred = logits - logits.mean(dim=1, keepdim=True)
    # eps inside the root: the gradient stays finite where a pixel's logits are all equal
    return centred / (centred.pow(2).mean(dim=1, keepdim=True) + eps).sqrt()


def _check_pixels(pixels: str) -> str:
    if pixels not in KD_PIXELS:
        raise ValueError("kd_pixels must be one of %s, got %r" % (", ".join(KD_PIXELS), pixels))
    return pixels


def taught_pixels(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                  pixels: str, ignore_index: int = IGNORE_INDEX) -> Optional[torch.Tensor]:
    """Where the teacher teaches, as an (N, H, W) bool map, or None for every labelled pixel
    (``all``): ``teacher_correct``, where the teacher predicts the label; ``teacher_better``,
    where it does and gives the label a higher probability than the student does, so a
    teacher no better than the student falls silent as the student passes it."""
    if pixels == "all":
        return None
    taught = teacher.argmax(dim=1) == labels
    if pixels == "teacher_better":
        # ignored pixels are left out by the mean after this; any valid index gathers there
        safe = torch.where(labels == ignore_index, torch.zeros_like(labels),
                           labels).unsqueeze(1)  # N,1,H,W
        with torch.no_grad():
            p_teacher = F.softmax(teacher, dim=1).gather(1, safe).squeeze(1)  # N,H,W
            p_student = F.softmax(student, dim=1).gather(1, safe).squeeze(1)
        taught = taught & (p_teacher > p_student)
    return taught


def _taught_mean(per_pixel: torch.Tensor, taught: Optional[torch.Tensor], labels: torch.Tensor,
                 ignore_index: int) -> torch.Tensor:
    """The term's mean over every labelled pixel, zero where the teacher does not teach: a
    teacher right on few pixels adds little, rather than weighting those few up."""
    if taught is not None:
        per_pixel = per_pixel * taught.to(per_pixel.dtype)
    return _masked_pixel_mean(per_pixel, labels, ignore_index)


class LogitMSE(nn.Module):
    """MSE between student and teacher logits at full resolution (the paper's KD).

    ``normalize``: compare standardised logits (per pixel, over classes), so the term no
    longer grows with the teacher's logit scale (the paper's plain MSE started at 2.6x the
    supervised loss on real imagery) and stays in [0, 4]. ``pixels``: where the teacher
    teaches (``taught_pixels``; ``all`` is the paper's)."""

    def __init__(self, normalize: bool = False, pixels: str = "all",
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.normalize = normalize
        self.pixels = _check_pixels(pixels)
        self.ignore_index = ignore_index

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        taught = taught_pixels(student, teacher, labels, self.pixels, self.ignore_index)
        if self.normalize:
            student, teacher = standardize(student), standardize(teacher)
        per_pixel = (student - teacher).pow(2).mean(dim=1)
        return _taught_mean(per_pixel, taught, labels, self.ignore_index)


class LogitKL(nn.Module):
    """KL(teacher || student) of temperature-softened class distributions, times T^2 so the
    gradient scale does not depend on the temperature (Hinton et al., 2015), at the pixels
    ``pixels`` names (``taught_pixels``)."""

    def __init__(self, temperature: float = 4.0, pixels: str = "all",
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("kd_temperature must be positive, got %r" % temperature)
        self.temperature = float(temperature)
        self.pixels = _check_pixels(pixels)
        self.ignore_index = ignore_index

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        taught = taught_pixels(student, teacher, labels, self.pixels, self.ignore_index)
        t = self.temperature
        log_p_student = F.log_softmax(student / t, dim=1)
        log_p_teacher = F.log_softmax(teacher / t, dim=1)
        per_pixel = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
        return _taught_mean(per_pixel, taught, labels, self.ignore_index) * (t * t)


def match_size(feature: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``feature`` to the spatial size of ``like`` (no-op when equal)."""
    if feature.shape[-2:] == like.shape[-2:]:
        return feature
    return F.interpolate(feature, size=like.shape[-2:], mode="bilinear", align_corners=False)


class FeatureMimicking(nn.Module):
    """Early-stage feature distillation: project the student's stage features to the
    teacher's width with a 1x1 convolution and regress the teacher's features (MSE)."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        projected = self.project(student)
        return F.mse_loss(projected, match_size(teacher, projected))


class FeatureGeneration(nn.Module):
    """Late-stage feature distillation in the manner of Masked Generative Distillation
    (Yang et al., 2022): randomly mask the student's stage features and make a small
    generator reconstruct the teacher's full features from what is left, which teaches the
    student features from which the teacher's can be *generated*, not merely copied."""

    def __init__(self, student_channels: int, teacher_channels: int,
                 mask_ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError("fg_mask_ratio must be in [0, 1), got %r" % mask_ratio)
        self.mask_ratio = float(mask_ratio)
        self.align = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        self.generator = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
        )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        aligned = self.align(student)
        n, _, h, w = aligned.shape
        # one keep/drop decision per position, shared by all channels; uses the global RNG
        # so that a resumed run (which restores it) draws the same masks
        keep = (torch.rand((n, 1, h, w), device=aligned.device) >= self.mask_ratio)
        generated = self.generator(aligned * keep.to(aligned.dtype))
        return F.mse_loss(generated, match_size(teacher, generated))


class FeatureDistillation(nn.Module):
    """The trainable heads of feature distillation, one per distilled encoder stage:
    ``fm.<stage>`` (mimicking) and ``fg.<stage>`` (generation). Trained with the student
    and dropped after training: they are not part of the deployed model."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int],
                 fm_stages: Sequence[int] = (), fg_stages: Sequence[int] = (),
                 fg_mask_ratio: float = 0.5) -> None:
        super().__init__()
        stages = len(student_channels)
        if len(teacher_channels) != stages:
            raise ValueError("student has %d encoder stages but teacher has %d; feature "
                             "distillation pairs stages one to one"
                             % (stages, len(teacher_channels)))
        for name, chosen in (("fm_stages", fm_stages), ("fg_stages", fg_stages)):
            bad = [i for i in chosen if not 0 <= i < stages]
            if bad:
                raise ValueError("%s %s out of range: the encoders have stages 0..%d"
                                 % (name, bad, stages - 1))
        self.fm = nn.ModuleDict({str(i): FeatureMimicking(student_channels[i], teacher_channels[i])
                                 for i in fm_stages})
        self.fg = nn.ModuleDict({str(i): FeatureGeneration(student_channels[i],
                                                           teacher_channels[i], fg_mask_ratio)
                                 for i in fg_stages})

    def forward(self, student: List[torch.Tensor],
                teacher: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Mean loss over the configured stages for each kind: ``{"fm": ..., "fg": ...}``."""
        losses: Dict[str, torch.Tensor] = {}
        for kind, heads in (("fm", self.fm), ("fg", self.fg)):
            if len(heads):
                terms = [heads[key](student[int(key)], teacher[int(key)]) for key in heads]
                losses[kind] = torch.stack(terms).mean()
        return losses
