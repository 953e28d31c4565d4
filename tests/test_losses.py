import math

import torch
import torch.nn.functional as F

from lvseg.models.losses import DiceBCELoss, class_balanced_bce_with_logits


def test_class_balanced_bce_weighs_positive_and_negative_halves_equally():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten()
    expected = 0.5 * per_pixel[0] + 0.5 * per_pixel[1:].mean()
    assert torch.allclose(class_balanced_bce_with_logits(logits, target), expected)


def test_class_balanced_bce_without_positive_pixels_is_finite():
    logits = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    value = class_balanced_bce_with_logits(logits, target)
    assert math.isclose(value.item(), math.log(2), rel_tol=1e-5)


def test_dice_term_matches_the_papers_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.6).float()
    p = torch.sigmoid(logits)
    eps = 1e-5
    dice_per_image = 1 - (2 * (p * target).sum((1, 2, 3)) + eps) / (
        (p**2).sum((1, 2, 3)) + (target**2).sum((1, 2, 3)) + eps
    )
    expected = 0.5 * dice_per_image.mean() + 0.5 * class_balanced_bce_with_logits(logits, target)
    assert torch.allclose(DiceBCELoss()(logits, target), expected, atol=1e-6)


def test_loss_is_near_zero_for_a_confident_correct_prediction_and_large_otherwise():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:5, 2:5] = 1
    right = (target * 2 - 1) * 20
    loss = DiceBCELoss()
    assert loss(right, target).item() < 1e-3
    assert loss(-right, target).item() > 1.0


def test_per_image_weights_can_switch_an_image_off():
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, :4] = 1
    target[1, :, 4:] = 1
    logits = torch.stack([(target[0] * 2 - 1) * 20, -(target[1] * 2 - 1) * 20])
    loss = DiceBCELoss()
    only_good = loss(logits, target, weight=torch.tensor([1.0, 0.0]))
    assert only_good.item() < 1e-3
    assert loss(logits, target).item() > only_good.item() + 0.5
