"""Losses: RLE against a direct evaluation of its formula, focal, L1/OKS, the criterion."""

import math

import pytest
import torch

from vpose_d2.modeling.criterion import PoseSetCriterion
from vpose_d2.modeling.losses import RealNVP2D, RLELoss, keypoint_oks, sigmoid_focal_loss
from vpose_d2.modeling.matcher import HungarianPoseMatcher


def _randomize(flow: RealNVP2D, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _log_q_by_hand(flow: RealNVP2D, x: torch.Tensor) -> torch.Tensor:
    """log q(x) of the flow, computed through its forward map and the Jacobian determinant.

    Inverts the flow by fixed-point-free algebra (each coupling layer inverted explicitly)
    and takes log|det| from torch.autograd's Jacobian, independent of the module's bookkeeping.
    """

    def forward_map(z):  # latent -> data, layer by layer
        for i in range(len(flow.masks)):
            m = flow.masks[i]
            zm = z * m
            s = flow.s_nets[i](zm) * (1 - m)
            t = flow.t_nets[i](zm) * (1 - m)
            z = zm + (1 - m) * (z * torch.exp(s) + t)
        return z

    def inverse_map(y):
        for i in reversed(range(len(flow.masks))):
            m = flow.masks[i]
            ym = y * m
            s = flow.s_nets[i](ym) * (1 - m)
            t = flow.t_nets[i](ym) * (1 - m)
            y = ym + (1 - m) * (y - t) * torch.exp(-s)
        return y

    out = []
    for point in x.reshape(-1, 2).double():
        z = inverse_map(point)
        assert torch.allclose(forward_map(z), point, atol=1e-9)
        jac = torch.autograd.functional.jacobian(forward_map, z)  # dx/dz
        log_prior = -0.5 * (z**2).sum() - math.log(2 * math.pi)
        out.append(log_prior - torch.log(torch.det(jac).abs()))
    return torch.stack(out).view(x.shape[:-1])


def test_rle_equals_its_formula():
    torch.manual_seed(0)
    loss_fn = RLELoss().double()
    _randomize(loss_fn.flow)
    p, k = 3, 4
    mu = torch.rand(p, k, 2, dtype=torch.float64)
    gt = torch.rand(p, k, 2, dtype=torch.float64)
    sigma = torch.rand(p, k, 2, dtype=torch.float64) * 0.5 + 0.05
    visible = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    got = loss_fn(mu, sigma, gt, visible)

    bar = (mu - gt) / sigma
    log_q = _log_q_by_hand(loss_fn.flow, bar)
    per_joint = (
        torch.log(sigma).sum(-1)
        - log_q
        + (
            torch.log(sigma * math.sqrt(2 * math.pi)) + (gt - mu).abs() / (math.sqrt(2) * sigma)
        ).sum(-1)
    )
    vis = visible.double()
    expected = (per_joint * vis).sum(-1) / vis.sum(-1).clamp(min=1)
    assert torch.allclose(got, expected, atol=1e-8)
    assert got[2].item() == 0.0  # no visible joints, no loss


def test_flow_is_a_density():
    flow = RealNVP2D()
    with torch.no_grad():
        for i, p in enumerate(flow.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.1)
    # Integrate q over a grid: a normalized density sums to ~1.
    xs = torch.linspace(-10, 10, 201)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (xs[1] - xs[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=0.03)


def test_rle_prefers_accurate_and_confident():
    loss_fn = RLELoss()
    gt = torch.full((1, 2, 2), 0.5)
    vis = torch.ones(1, 2, dtype=torch.bool)
    near = loss_fn(gt + 0.01, torch.full_like(gt, 0.02), gt, vis)
    far = loss_fn(gt + 0.2, torch.full_like(gt, 0.02), gt, vis)
    assert near.item() < far.item()


def test_focal_loss_values():
    logits = torch.tensor([0.0, 2.0, -2.0])
    targets = torch.tensor([1.0, 1.0, 0.0])
    got = sigmoid_focal_loss(logits, targets, 0.25, 2.0)
    p = logits.sigmoid()
    expected = torch.stack(
        [
            0.25 * (1 - p[0]) ** 2 * -torch.log(p[0]),
            0.25 * (1 - p[1]) ** 2 * -torch.log(p[1]),
            0.75 * p[2] ** 2 * -torch.log(1 - p[2]),
        ]
    )
    assert torch.allclose(got, expected, atol=1e-6)


def test_keypoint_oks_perfect_and_far():
    gt = torch.rand(2, 5, 2)
    vis = torch.ones(2, 5, dtype=torch.bool)
    areas = torch.tensor([1000.0, 2000.0])
    sig = torch.full((5,), 0.08)
    size = torch.tensor([[100.0, 100.0], [100.0, 100.0]])
    assert torch.allclose(keypoint_oks(gt, gt, vis, areas, sig, size), torch.ones(2))
    assert (keypoint_oks(gt + 0.5, gt, vis, areas, sig, size) < 0.01).all()


def _outputs(b=2, n=6, k=5, p=3, layers=2):
    g = torch.Generator().manual_seed(3)

    def stage():
        return {
            "logits": torch.randn(b, n, generator=g, requires_grad=True),
            "poses": torch.rand(b, n, k, 2, generator=g).requires_grad_(),
            "sigmas": (torch.rand(b, n, k, 2, generator=g) * 0.3 + 0.01).requires_grad_(),
        }

    out = {"proposals": stage(), "pose_layers": [stage() for _ in range(layers)]}
    out["proposals"]["valid"] = torch.ones(b, n, dtype=torch.bool)
    out["joint_layers"] = [
        {
            "joints": torch.rand(b, p, k, 2, generator=g).requires_grad_(),
            "sigmas": (torch.rand(b, p, k, 2, generator=g) * 0.3 + 0.01).requires_grad_(),
        }
    ]
    out["joint_targets"] = [
        (torch.tensor([0, 1]), torch.tensor([1, 0])),
        (torch.tensor([0]), torch.tensor([0])),
    ]
    targets = [
        {
            "keypoints": torch.rand(2, k, 2, generator=g),
            "visible": torch.ones(2, k, dtype=torch.bool),
            "areas": torch.tensor([800.0, 900.0]),
            "size_wh": torch.tensor([64.0, 48.0]),
        },
        {
            "keypoints": torch.rand(1, k, 2, generator=g),
            "visible": torch.ones(1, k, dtype=torch.bool),
            "areas": torch.tensor([700.0]),
            "size_wh": torch.tensor([64.0, 48.0]),
        },
    ]
    return out, targets


@pytest.mark.parametrize("kind", ["rle", "l1_oks"])
def test_criterion_terms_and_gradients(kind):
    crit = PoseSetCriterion(
        matcher=HungarianPoseMatcher(), oks_sigmas=[0.08] * 5, keypoint_loss=kind
    )
    outputs, targets = _outputs()
    losses = crit(outputs, targets)
    stages = ["enc", "dec0", "dec1"]
    terms = ["rle"] if kind == "rle" else ["l1", "oks"]
    expected = {f"loss_class_{s}" for s in stages}
    expected |= {f"loss_{t}_{s}" for s in stages + ["joint0"] for t in terms}
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert outputs["joint_layers"][0]["joints"].grad.abs().sum() > 0
    # The class loss over 3 persons, by hand for the last layer.
    stage = outputs["pose_layers"][-1]
    idx = crit.match({k: v.detach() for k, v in stage.items()}, targets)
    labels = torch.zeros(2, 6)
    for b, (src, _) in enumerate(idx):
        labels[b, src] = 1
    by_hand = sigmoid_focal_loss(stage["logits"].detach(), labels).sum() / 3 * 0.5
    assert losses["loss_class_dec1"].item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_criterion_without_persons_gives_zero_regression():
    crit = PoseSetCriterion(matcher=HungarianPoseMatcher(), oks_sigmas=[0.08] * 5)
    outputs, targets = _outputs()
    for t in targets:
        t["keypoints"] = t["keypoints"][:0]
        t["visible"] = t["visible"][:0]
        t["areas"] = t["areas"][:0]
    outputs["joint_targets"] = [(torch.zeros(0, dtype=torch.long),) * 2] * 2
    losses = crit(outputs, targets)
    assert losses["loss_rle_dec1"].item() == 0.0
    assert losses["loss_class_dec1"].item() > 0  # all queries are negatives


@pytest.mark.parametrize("joint_layers", [None, [], "keep"], ids=["absent", "zero", "one"])
def test_criterion_without_pose_layers(joint_layers):
    """A pose decoder without layers: the proposals are the last stage; the terms that do not
    read the pose layers are those of the full outputs."""
    crit = PoseSetCriterion(matcher=HungarianPoseMatcher(), oks_sigmas=[0.08] * 5)
    outputs, targets = _outputs()
    full = crit(outputs, targets)
    outputs["pose_layers"] = []
    if joint_layers is None:
        del outputs["joint_layers"], outputs["joint_targets"]
    elif joint_layers == []:
        outputs["joint_layers"] = []
    losses = crit(outputs, targets)
    expected = {"loss_class_enc", "loss_rle_enc"}
    if joint_layers == "keep":
        expected.add("loss_rle_joint0")
    assert set(losses) == expected
    for name, value in losses.items():
        torch.testing.assert_close(value, full[name])
    sum(losses.values()).backward()
    assert outputs["proposals"]["poses"].grad.abs().sum() > 0
    # Precomputed matching on the proposals is used as given.
    prop = outputs["proposals"]
    prop["indices"] = [
        (torch.tensor([5]), torch.tensor([0])),
        (torch.tensor([4]), torch.tensor([0])),
    ]
    again = crit(outputs, targets)
    assert again["loss_rle_enc"].item() != pytest.approx(losses["loss_rle_enc"].item())


def test_criterion_without_any_stage_names_the_problem():
    crit = PoseSetCriterion(matcher=HungarianPoseMatcher(), oks_sigmas=[0.08] * 5)
    _, targets = _outputs()
    with pytest.raises(ValueError, match="no proposals"):
        crit({"proposals": None, "pose_layers": []}, targets)
