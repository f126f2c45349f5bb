"""HungarianPoseMatcher: optimal assignment (vs brute force) and its cost terms."""

import itertools

import pytest
import torch

from vpose_d2.modeling.losses import focal_cost, pairwise_keypoint_l1, pairwise_oks
from vpose_d2.modeling.matcher import HungarianPoseMatcher

K = 5
SIGMAS = torch.full((K,), 0.08)


def _target(g: int, gen: torch.Generator) -> dict:
    visible = torch.rand(g, K, generator=gen) > 0.3
    visible[:, 0] = True  # every person has at least one joint
    return {
        "keypoints": torch.rand(g, K, 2, generator=gen),
        "visible": visible,
        "areas": torch.rand(g, generator=gen) * 5000 + 500,
        "size_wh": torch.tensor([160.0, 120.0]),
    }


def _brute_force(cost: torch.Tensor) -> float:
    q, g = cost.shape
    best = float("inf")
    if q >= g:
        for perm in itertools.permutations(range(q), g):
            best = min(best, sum(cost[perm[j], j].item() for j in range(g)))
    else:
        for perm in itertools.permutations(range(g), q):
            best = min(best, sum(cost[i, perm[i]].item() for i in range(q)))
    return best


@pytest.mark.parametrize("q,g", [(4, 3), (5, 5), (6, 2), (3, 5)])
def test_matcher_equals_brute_force(q, g):
    gen = torch.Generator().manual_seed(100 * q + g)
    matcher = HungarianPoseMatcher(cost_class=2.0, cost_keypoint=70.0, cost_oks=7.0)
    for trial in range(5):
        logits = torch.randn(2, q, generator=gen)
        poses = torch.rand(2, q, K, 2, generator=gen)
        targets = [_target(g, gen), _target(max(g - 1, 0), gen)]
        indices = matcher(logits, poses, targets, SIGMAS)
        for b, (src, tgt) in enumerate(indices):
            n_gt = targets[b]["keypoints"].shape[0]
            assert len(src) == len(tgt) == min(q, n_gt)
            assert len(set(src.tolist())) == len(src) and len(set(tgt.tolist())) == len(tgt)
            if n_gt == 0:
                continue
            cost = matcher.cost_matrix(logits[b], poses[b], targets[b], SIGMAS)
            total = cost[src, tgt].sum().item()
            assert total == pytest.approx(_brute_force(cost), abs=1e-4), f"trial {trial}"


def test_matcher_picks_the_obvious_pairs_and_respects_valid():
    gen = torch.Generator().manual_seed(0)
    target = _target(2, gen)
    poses = torch.rand(1, 4, K, 2, generator=gen)
    poses[0, 3] = target["keypoints"][0]
    poses[0, 1] = target["keypoints"][1]
    logits = torch.zeros(1, 4)
    matcher = HungarianPoseMatcher()
    ((src, tgt),) = matcher(logits, poses, [target], SIGMAS)
    assert dict(zip(src.tolist(), tgt.tolist())) == {1: 1, 3: 0}
    valid = torch.tensor([[True, True, True, False]])
    ((src, tgt),) = matcher(logits, poses, [target], SIGMAS, valid=valid)
    assert 3 not in src.tolist() and dict(zip(src.tolist(), tgt.tolist()))[1] == 1


def test_cost_terms_by_hand():
    gt = torch.tensor([[[0.5, 0.5], [0.2, 0.4]]])
    visible = torch.tensor([[True, False]])
    pred = torch.tensor([[[0.6, 0.3], [0.9, 0.9]]])
    # L1 over visible joints / (2 * #visible): (0.1 + 0.2) / 2
    assert pairwise_keypoint_l1(pred, gt, visible).item() == pytest.approx(0.15)
    size = torch.tensor([100.0, 200.0])
    sig = torch.tensor([0.1, 0.1])
    d2 = (0.1 * 100) ** 2 + (0.2 * 200) ** 2
    expected = torch.exp(torch.tensor(-d2 / (2 * 400.0 * (2 * 0.1) ** 2)))
    oks = pairwise_oks(pred, gt, visible, torch.tensor([400.0]), sig, size)
    assert oks.item() == pytest.approx(expected.item(), rel=1e-5)
    # A perfect prediction has OKS 1; the focal cost is lower for a confident query.
    assert pairwise_oks(gt, gt, visible, torch.tensor([400.0]), sig, size).item() == 1.0
    c = focal_cost(torch.tensor([3.0, -3.0]))
    assert c[0] < c[1]


def test_matcher_rejects_wrong_number_of_targets():
    with pytest.raises(ValueError, match="targets"):
        HungarianPoseMatcher()(torch.zeros(2, 3), torch.rand(2, 3, K, 2), [], SIGMAS)


def test_non_finite_cost_is_a_floating_point_error_naming_the_iteration():
    """A diverged model (NaN poses or logits) used to stop inside scipy with "matrix contains
    invalid numeric entries"; Detectron2's contract is a FloatingPointError naming the
    iteration."""
    from detectron2.utils.events import EventStorage

    gen = torch.Generator().manual_seed(1)
    targets = [_target(2, gen), _target(3, gen)]
    poses = torch.rand(2, 4, K, 2, generator=gen)
    logits = torch.zeros(2, 4)
    poses[1, 2, 0, 0] = float("nan")
    matcher = HungarianPoseMatcher()
    with EventStorage(start_iter=41) as storage:
        storage.iter = 41
        with pytest.raises(FloatingPointError, match=r"iteration 41.*image 1"):
            matcher(logits, poses, targets, SIGMAS)
    logits[0, 0] = float("inf")
    poses[1, 2, 0, 0] = 0.5
    with pytest.raises(FloatingPointError, match=r"image 0.*non-finite"):  # outside a trainer
        matcher(logits, poses, targets, SIGMAS)
