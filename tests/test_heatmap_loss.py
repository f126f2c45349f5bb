"""The auxiliary keypoint heatmap: targets on the padded token grid and the focal loss."""

import math

import pytest
import torch

from vpose_d2.modeling.losses.heatmap import (
    KeypointHeatmapHead,
    gaussian_heatmap_targets,
    heatmap_focal_loss,
)


def _targets(kpts, visible):
    return [
        {"keypoints": torch.tensor(kpts, dtype=torch.float32), "visible": torch.tensor(visible)}
    ]


def test_targets_peak_at_the_joint_cell_inside_the_valid_region():
    # 8x8 grid, the image covers the left 4 columns and all 8 rows (valid ratio w=0.5).
    # Joint 0 at x=0.6, y=0.3 of the image: cell x = 0.6*4 - 0.5 = 1.9 -> 2, y = 0.3*8 - 0.5
    # = 1.9 -> 2. Joint 1 is invisible.
    tgt = _targets([[[0.6, 0.3], [0.5, 0.5]]], [[True, False]])
    out = gaussian_heatmap_targets(tgt, torch.Size((1, 8, 8, 2)), torch.tensor([[0.5, 1.0]]), 1.0)
    assert out[0, 2, 2, 0] == 1.0
    assert int(out[..., 0].eq(1.0).sum()) == 1
    # A neighbour one cell away: exp(-1/2).
    assert out[0, 2, 3, 0].item() == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert out[..., 1].abs().sum() == 0  # invisible joint: no target


def test_targets_take_the_max_over_persons():
    tgt = _targets([[[0.1, 0.1]], [[0.9, 0.9]]], [[True], [True]])
    out = gaussian_heatmap_targets(tgt, torch.Size((1, 10, 10, 1)), torch.ones(1, 2), 1.5)
    assert int(out.eq(1.0).sum()) == 2  # both peaks survive


def test_focal_loss_by_hand_and_padding_ignored():
    # One positive cell with p = 0.5, one negative cell with target 0 and p = 0.5, one padded.
    logits = torch.zeros(1, 1, 3, 1)
    target = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 3, 1)
    valid = torch.tensor([[[True, True, False]]])
    # pos: -(1-0.5)^2 log 0.5; neg: -(1-0)^4 * 0.5^2 * log 0.5; divided by 1 positive.
    expected = -(0.25 * math.log(0.5)) - (0.25 * math.log(0.5))
    assert heatmap_focal_loss(logits, target, valid).item() == pytest.approx(expected, rel=1e-6)


def test_a_confident_correct_map_has_lower_loss_and_the_head_learns():
    torch.manual_seed(0)
    h = w = 6
    tgt = _targets([[[0.25, 0.75], [0.75, 0.25]]], [[True, True]])
    target = gaussian_heatmap_targets(tgt, torch.Size((1, h, w, 2)), torch.ones(1, 2), 1.0)
    valid = torch.ones(1, h, w, dtype=torch.bool)
    good = torch.where(target.eq(1.0), 8.0, -8.0)
    assert heatmap_focal_loss(good, target, valid) < 0.01 * heatmap_focal_loss(
        torch.zeros_like(good), target, valid
    )
    # The head on fixed random tokens fits the two peaks in a few hundred Adam steps.
    head = KeypointHeatmapHead(16, 2, sigma=1.0)
    memory = torch.randn(1, h * w + 9, 16)  # level 0 (6x6) then a 3x3 level
    shapes = torch.tensor([[h, w], [3, 3]])
    pad = torch.zeros(1, h * w + 9, dtype=torch.bool)
    ratios = torch.ones(1, 2, 2)
    opt = torch.optim.Adam(head.parameters(), 0.05)
    first = head.loss(memory, pad, shapes, ratios, tgt).item()
    for _ in range(300):
        opt.zero_grad()
        loss = head.loss(memory, pad, shapes, ratios, tgt)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    logits = head.proj(memory[:, : h * w]).view(1, h, w, 2)
    peak = logits[0, ..., 0].flatten().argmax()
    assert divmod(int(peak), w) == (4, 1)  # y = 0.75*6 - 0.5 = 4, x = 0.25*6 - 0.5 = 1
