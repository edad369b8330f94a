"""training.losses: supervised and distillation losses against direct computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from lpcv_segmentation.core.classes import IGNORE_INDEX
from training.losses import (CrossEntropy, FeatureDistillation, FeatureGeneration,
                             FeatureMimicking, LogitKL, LogitMSE, OhemCrossEntropy,
                             build_supervised_loss, standardize)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _batch(seed=0, n=2, c=5, h=6, w=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * 2
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[0, :2] = IGNORE_INDEX
    return logits, labels


def test_cross_entropy_ignores_unlabelled_pixels():
    logits, labels = _batch()
    valid = labels != IGNORE_INDEX
    per_pixel = -F.log_softmax(logits, 1).gather(1, labels.clamp(max=4)[:, None])[:, 0]
    assert CrossEntropy()(logits, labels).item() == pytest.approx(per_pixel[valid].mean().item(),
                                                                  rel=1e-5)


def test_ohem_keeps_hard_pixels_only():
    logits, labels = _batch(1)
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    valid = labels != IGNORE_INDEX
    losses = per_pixel[valid]
    prob = torch.exp(-losses)
    # threshold dominates: min_kept small
    expected = losses[prob <= 0.7].mean()
    got = OhemCrossEntropy(thresh=0.7, min_kept=1)(logits, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # min_kept dominates: at least the 20 hardest pixels even if they are "easy"
    k = 20
    kth = torch.sort(prob).values[k - 1]
    expected_k = losses[prob <= max(kth.item(), 0.0)].mean()
    got_k = OhemCrossEntropy(thresh=0.0, min_kept=k)(logits, labels)
    assert got_k.item() == pytest.approx(expected_k.item(), rel=1e-5)
    assert got_k.item() > F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX).item()


def test_ohem_with_everything_kept_equals_cross_entropy():
    logits, labels = _batch(2)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    assert OhemCrossEntropy(thresh=1.0, min_kept=1)(logits, labels).item() == pytest.approx(
        ce.item(), rel=1e-5)
    assert OhemCrossEntropy(thresh=0.0, min_kept=10 ** 9)(logits, labels).item() == pytest.approx(
        ce.item(), rel=1e-5)


def test_supervised_losses_survive_an_all_ignored_batch_with_a_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), IGNORE_INDEX, dtype=torch.long)
    for loss in (OhemCrossEntropy(), CrossEntropy()):
        value = loss(logits, labels)
        value.backward()
        assert value.item() == 0.0 and logits.grad is not None


def test_build_supervised_loss_registry():
    assert isinstance(build_supervised_loss({"loss": "ce"}), CrossEntropy)
    ohem = build_supervised_loss({"loss": "ohem", "ohem_thresh": 0.6, "ohem_min_kept": 7})
    assert isinstance(ohem, OhemCrossEntropy) and ohem.thresh == 0.6 and ohem.min_kept == 7


def test_logit_mse_is_the_mean_squared_difference_over_labelled_pixels():
    student, labels = _batch(3)
    teacher = torch.randn_like(student)
    valid = (labels != IGNORE_INDEX)[:, None].expand_as(student)
    expected = ((student - teacher) ** 2)[valid].mean()
    assert LogitMSE()(student, teacher, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert LogitMSE()(student, student, labels).item() == 0.0
    # what the teacher says about unlabelled pixels does not matter
    moved = teacher.clone()
    moved[0, :, :2] += 100.0
    assert LogitMSE()(student, moved, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_logit_kl_matches_torch_kl_div_times_t_squared():
    student, labels = _batch(4)
    labels[:] = 0  # all labelled: compare with the plain formula
    teacher = torch.randn_like(student)
    t = 3.0
    expected = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                        reduction="none", log_target=True).sum(1).mean() * t * t
    got = LogitKL(temperature=t)(student, teacher, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert LogitKL(2.0)(student, student, labels).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="kd_temperature must be positive, got 0.0"):
        LogitKL(0.0)


def test_feature_mimicking_projects_channels_and_matches_sizes():
    fm = FeatureMimicking(student_channels=8, teacher_channels=12)
    student = torch.randn(2, 8, 10, 10)
    teacher = torch.randn(2, 12, 20, 20)  # teacher ran at a larger input
    loss = fm(student, teacher)
    expected = F.mse_loss(fm.project(student), F.interpolate(teacher, size=(10, 10),
                                                             mode="bilinear", align_corners=False))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert fm.project.weight.grad is not None


def test_feature_generation_masks_the_student_and_learns_to_reconstruct():
    torch.manual_seed(0)
    fg = FeatureGeneration(student_channels=6, teacher_channels=4, mask_ratio=0.25)
    student = torch.randn(4, 6, 8, 8)
    # the teacher's features: a fixed function of the student's, which the generator can learn
    teacher = torch.einsum("oc,nchw->nohw", torch.randn(4, 6), student) + 1.0
    # masks are random: same RNG state -> same loss, different state -> different loss
    torch.manual_seed(1)
    a = fg(student, teacher).item()
    torch.manual_seed(1)
    assert fg(student, teacher).item() == a
    assert fg(student, teacher).item() != a
    optimizer = torch.optim.Adam(fg.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        loss = fg(student, teacher)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    with pytest.raises(ValueError, match=r"fg_mask_ratio must be in \[0, 1\), got 1.0"):
        FeatureGeneration(4, 4, mask_ratio=1.0)


def test_feature_distillation_heads_per_stage():
    heads = FeatureDistillation([8, 16, 24, 32], [12, 20, 28, 36], fm_stages=[0, 1],
                                fg_stages=[3], fg_mask_ratio=0.25)
    assert sorted(heads.fm) == ["0", "1"] and sorted(heads.fg) == ["3"]
    assert heads.fm["1"].project.in_channels == 16 and heads.fm["1"].project.out_channels == 20
    student = [torch.randn(1, c, s, s) for c, s in zip([8, 16, 24, 32], [16, 8, 4, 2])]
    teacher = [torch.randn(1, c, s, s) for c, s in zip([12, 20, 28, 36], [32, 16, 8, 4])]
    losses = heads(student, teacher)
    assert set(losses) == {"fm", "fg"} and all(math.isfinite(v.item()) for v in losses.values())
    with pytest.raises(ValueError, match="out of range"):
        FeatureDistillation([8, 16], [8, 16], fm_stages=[2])
    with pytest.raises(ValueError, match="stages"):
        FeatureDistillation([8, 16, 24], [8, 16], fm_stages=[0])


def test_normalised_logit_mse_ignores_scale_and_teacher_errors():
    torch.manual_seed(0)
    student = torch.randn(2, 14, 8, 8)
    teacher = torch.randn(2, 14, 8, 8)
    labels = teacher.argmax(dim=1)
    plain, scaled = LogitMSE(), LogitMSE(normalize=True)
    # the paper's MSE grows with the teacher's scale; the standardised one does not
    assert plain(student, 10 * teacher, labels) > 20 * plain(student, teacher, labels)
    assert torch.allclose(scaled(student, 10 * teacher, labels), scaled(student, teacher, labels))
    assert 0 < float(scaled(student, teacher, labels)) <= 4
    assert float(scaled(3 * teacher + 1, teacher, labels)) < 1e-6  # same ranking and margins
    # teacher_correct: pixels where the teacher is wrong do not count, and do not weigh the
    # others up (the mean is over every labelled pixel)
    gated = LogitMSE(normalize=True, pixels="teacher_correct")
    wrong = (labels + 1) % 14
    assert float(gated(student, teacher, wrong)) == 0.0
    half = labels.clone()
    half[:, :4] = wrong[:, :4]
    per_pixel = (standardize(student) - standardize(teacher)).pow(2).mean(dim=1)
    assert torch.isclose(gated(student, teacher, half), per_pixel[:, 4:].sum() / labels.numel())
    half[:, 4:6] = IGNORE_INDEX  # ignored pixels count nowhere
    assert torch.isclose(gated(student, teacher, half),
                         per_pixel[:, 6:].sum() / (labels.numel() - 2 * 2 * 8))


@pytest.mark.parametrize("term", [lambda pixels: LogitMSE(normalize=True, pixels=pixels),
                                  lambda pixels: LogitKL(temperature=1.0, pixels=pixels)],
                         ids=["mse", "kl"])
def test_teacher_better_kd_is_silent_where_the_student_is_surer(term):
    torch.manual_seed(1)
    teacher = torch.randn(1, 14, 6, 6)
    labels = teacher.argmax(dim=1)  # the teacher is right everywhere
    better = term("teacher_better")
    sure = torch.full_like(teacher, -10.0).scatter(1, labels.unsqueeze(1), 10.0)
    # a student surer of every label than the teacher learns nothing from it...
    assert float(better(sure, teacher, labels)) == 0.0
    assert float(term("all")(sure, teacher, labels)) > 0.0
    # ...one less sure everywhere is taught everywhere, as teacher_correct would
    unsure = torch.zeros_like(teacher)
    everywhere = term("teacher_correct")
    assert torch.isclose(better(unsure, teacher, labels), everywhere(unsure, teacher, labels))
    # and the gate itself carries no gradient: only the matched logits do
    student = unsure.clone().requires_grad_(True)
    better(student, teacher, labels).backward()
    assert student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="kd_pixels must be one of all, teacher_correct, "
                                         "teacher_better, got 'some'"):
        term("some")
