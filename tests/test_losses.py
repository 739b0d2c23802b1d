"""Tests for common/losses.py against values worked out by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from common.losses import (ArcMarginProduct, ContrastiveLoss, FocalLoss,
                           RelationalDistillationLoss, SourceContrastiveLoss, class_weights)


def _head_with_centres(angles_deg, **kwargs):
    """2-D ArcFace head whose class centres sit at the given angles (degrees)."""
    head = ArcMarginProduct(2, len(angles_deg), **kwargs)
    rad = [math.radians(a) for a in angles_deg]
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3 * math.cos(r), 3 * math.sin(r)] for r in rad]))
    return head, rad


def test_arcface_constants():
    head = ArcMarginProduct(4, 3, s=10.0, m=0.3)
    assert head.weight.shape == (3, 4)
    assert head.th == pytest.approx(math.cos(math.pi - 0.3))
    assert head.mm == pytest.approx(math.sin(math.pi - 0.3) * 0.3)


def test_arcface_hand_computed_logits_both_branches():
    s, m = 30.0, 0.5
    head, rad = _head_with_centres([30, 120, 170], s=s, m=m)
    emb = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])  # angle 0, any norm
    labels = torch.tensor([0, 1, 2])
    out = head(emb, labels)
    cos = [math.cos(r) for r in rad]
    # target at 30 deg and 120 deg: theta + m < pi, so phi = cos(theta + m)
    assert out[0, 0].item() == pytest.approx(s * math.cos(rad[0] + m), abs=1e-5)
    assert out[1, 1].item() == pytest.approx(s * math.cos(rad[1] + m), abs=1e-5)
    # target at 170 deg: cos < th = cos(pi - m), linear fallback cos - sin(pi - m) * m
    assert cos[2] < head.th
    assert out[2, 2].item() == pytest.approx(s * (cos[2] - math.sin(math.pi - m) * m), abs=1e-5)
    # non-target logits are the plain scaled cosine
    assert out[0, 1].item() == pytest.approx(s * cos[1], abs=1e-5)
    assert out[2, 0].item() == pytest.approx(s * cos[0], abs=1e-5)


def test_arcface_easy_margin_and_inference():
    s, m = 30.0, 0.5
    head, rad = _head_with_centres([30, 120], s=s, m=m, easy_margin=True)
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out = head(emb, torch.tensor([0, 1]))
    assert out[0, 0].item() == pytest.approx(s * math.cos(rad[0] + m), abs=1e-5)
    # cos(120 deg) = -0.5 <= 0: easy margin leaves it unchanged
    assert out[1, 1].item() == pytest.approx(s * -0.5, abs=1e-5)
    inference = head(emb[:1])
    assert torch.allclose(inference, torch.tensor([[s * math.cos(rad[0]), s * -0.5]]), atol=1e-4)


def test_arcface_gradients_flow_and_no_nan_at_cos_plus_minus_one():
    head, _ = _head_with_centres([0, 180])  # embedding [1, 0] gives cos = 1 and cos = -1
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    logits = head(emb, torch.tensor([0, 1]))
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()

    torch.manual_seed(0)
    head = ArcMarginProduct(8, 5)
    emb = torch.randn(6, 8, requires_grad=True)
    F.cross_entropy(head(emb, torch.arange(6) % 5), torch.arange(6) % 5).backward()
    for grad in (emb.grad, head.weight.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_arcface_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        ArcMarginProduct(4, 3)(torch.zeros(2, 5))


def test_focal_gamma2_hand_computed():
    # sample 1: p = (0.5, 0.5), target 0; sample 2: p = (3/4, 1/4), target 1
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    target = torch.tensor([0, 1])
    expected = [0.5 ** 2 * math.log(2), 0.75 ** 2 * math.log(4)]
    loss = FocalLoss(gamma=2.0)
    assert loss(logits, target).item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    per_sample = FocalLoss(gamma=2.0, reduction="none")(logits, target)
    assert per_sample.tolist() == pytest.approx(expected, abs=1e-6)
    assert FocalLoss(reduction="sum")(logits, target).item() == pytest.approx(sum(expected))


def test_focal_label_smoothing_hand_computed():
    # p = (3/4, 1/4), target 1, eps 0.2 -> q = (0.1, 0.9)
    logits = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.1 * 0.25 ** 2 * -math.log(0.75) + 0.9 * 0.75 ** 2 * math.log(4)
    loss = FocalLoss(gamma=2.0, label_smoothing=0.2)(logits, torch.tensor([1]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("alpha", [None, (0.5, 1.5, 1.0)])
def test_focal_gamma0_equals_cross_entropy(smoothing, alpha):
    torch.manual_seed(1)
    logits, target = torch.randn(7, 3), torch.tensor([0, 1, 2, 1, 1, 0, 2])
    weight = None if alpha is None else torch.tensor(alpha)
    ours = FocalLoss(gamma=0.0, alpha=weight, label_smoothing=smoothing)(logits, target)
    ref = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)


def test_focal_rejects_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="avg")


def test_contrastive_hand_computed():
    a = torch.zeros(3, 2)
    b = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.3, 0.4]])  # distances 5, 1, 0.5
    target = torch.tensor([1, 0, 0])
    # 5^2 (same) + max(0, 1 - 1)^2 + max(0, 1 - 0.5)^2 = 25 + 0 + 0.25
    assert ContrastiveLoss(margin=1.0)(a, b, target).item() == pytest.approx(25.25 / 3)
    assert ContrastiveLoss(margin=2.0)(a, b, target).item() == pytest.approx(
        (25 + 1 + 1.5 ** 2) / 3)


def test_contrastive_gradient_finite_for_identical_embeddings():
    a = torch.ones(2, 4, requires_grad=True)
    ContrastiveLoss()(a, a.detach().clone(), torch.tensor([0, 1])).backward()
    assert torch.isfinite(a.grad).all()


def test_class_weights_inverse_frequency_mean_one():
    w = class_weights([0, 0, 0, 1], 2)
    assert w.tolist() == pytest.approx([0.5, 1.5])
    w = class_weights(torch.tensor([0, 1, 1, 2, 2, 2]), 3)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[0] / w[2] == pytest.approx(3.0)


def test_class_weights_missing_class_raises():
    with pytest.raises(ValueError, match=r"\[1\]"):
        class_weights([0, 0, 2], 3)
    with pytest.raises(ValueError, match="labels must lie"):
        class_weights([0, 3], 3)


def test_source_contrastive_hand_computed():
    # Views a0=(1,0), b0=(.6,.8) of source 0 and a1=(0,1), b1=(.8,-.6) of source 1; T = 1.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    e = math.exp
    expected = [
        -math.log(e(0.6) / (e(0.6) + e(0.0) + e(0.8))),    # a0: positive b0; a1, b1 negatives
        -math.log(e(-0.6) / (e(-0.6) + e(0.0) + e(0.8))),  # a1: positive b1; a0, b0
        -math.log(e(0.6) / (e(0.6) + e(0.8) + e(0.0))),    # b0: positive a0; a1, b1
        -math.log(e(-0.6) / (e(-0.6) + e(0.8) + e(0.0))),  # b1: positive a1; a0, b0
    ]
    loss = SourceContrastiveLoss(temperature=1.0)(a, b, torch.tensor([0, 1]),
                                                  torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(sum(expected) / 4, rel=1e-6)


def test_source_contrastive_ignores_other_photos_of_the_same_identity():
    # Both sources belong to one identity: each view's only candidate is its positive -> loss 0.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    loss = SourceContrastiveLoss(temperature=0.1)(a, b, torch.tensor([0, 1]),
                                                  torch.tensor([7, 7]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_source_contrastive_gradient_pulls_views_together():
    torch.manual_seed(0)
    a = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, 8)
    criterion = SourceContrastiveLoss()
    sources, identities = torch.arange(6), torch.arange(6)
    before = F.cosine_similarity(a, b).mean().item()
    optimizer = torch.optim.SGD([a], lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        criterion(a, b, sources, identities).backward()
        optimizer.step()
    assert torch.isfinite(a).all()
    assert F.cosine_similarity(a, b).mean().item() > before + 0.5


def test_relational_distillation_hand_computed():
    # Three rows; T = 1. Teacher similarities (0, 1, 0) differ from the student's (.6, .8, 0).
    student = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])

    def softmax(values):
        exps = [math.exp(v) for v in values]
        return [e / sum(exps) for e in exps]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    rows_t = [softmax([1.0, 0.0]), softmax([1.0, 0.0]), softmax([0.0, 0.0])]
    rows_s = [softmax([0.6, 0.0]), softmax([0.6, 0.8]), softmax([0.0, 0.8])]
    expected = sum(kl(p, q) for p, q in zip(rows_t, rows_s)) / 3
    loss = RelationalDistillationLoss(temperature=1.0)(student, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_relational_distillation_is_zero_for_the_same_geometry_in_other_coordinates():
    torch.manual_seed(0)
    teacher = torch.randn(8, 4)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))
    student = torch.cat([teacher @ rotation, torch.zeros(8, 3)], dim=1)  # rotated, padded
    criterion = RelationalDistillationLoss(temperature=0.1)
    assert criterion(student, teacher).item() == pytest.approx(0.0, abs=1e-5)
    assert criterion(torch.randn(8, 7), teacher).item() > 0.1
