"""fold_frozen_batchnorm: folded outputs equal the unfolded ones, the checkpoint is untouched,
training and later weight loads stay exact."""

import copy

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model, build_resnet_backbone

from vpose_d2.config import add_vpose_config
from vpose_d2.engine import merge_config_file
from vpose_d2.engine.predictor import VideoPosePredictor
from vpose_d2.modeling.backbone import (
    FoldedConv2d,
    fold_frozen_batchnorm,
    unfold_frozen_batchnorm,
)


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-identity frozen statistics, so a wrong fold cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
            m.bias.copy_(0.2 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def _resnet(depth: int = 50) -> torch.nn.Module:
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(0)
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    _randomise_norms(model, 1)
    return model


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_folded_resnet50_matches_and_keeps_its_state_dict():
    model = _resnet(50)
    x = torch.randn(2, 3, 64, 96)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(x)
        # stem 1 + 16 bottlenecks x 3 + 4 shortcuts
        assert fold_frozen_batchnorm(model) == 53
        assert fold_frozen_batchnorm(model) == 0  # idempotent
        out = model(x)
    for name in ref:
        assert _max_rel(out[name], ref[name]) < 1e-5, name
    # The fold computes with other weights: it did run (not the unfolded path again).
    assert all(type(m) is FoldedConv2d for m in model.modules() if isinstance(m, Conv2d))
    assert model.stem.conv1.folded_weight.shape == model.stem.conv1.weight.shape
    after = model.state_dict()
    assert list(after) == list(state)
    for k in state:
        assert torch.equal(after[k], state[k]), k

    assert unfold_frozen_batchnorm(model) == 53
    assert not any(isinstance(m, FoldedConv2d) for m in model.modules())
    assert list(model.state_dict()) == list(state)


def test_folded_path_differs_from_unfolded_in_rounding_only():
    """The folded forward really uses the folded weights: bitwise different, numerically equal."""
    conv = Conv2d(8, 16, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(16))
    _randomise_norms(conv, 2)
    conv.eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        ref = conv(x)
        fold_frozen_batchnorm(conv)
        out = conv(x)
    assert _max_rel(out, ref) < 1e-6
    # Make the norm non-invertible by the unfolded path: zeroing the folded weight must zero
    # the output's varying part, which only the folded path would show.
    with torch.no_grad():
        conv.folded_weight.zero_()
        assert torch.allclose(conv(x), conv.folded_bias.view(1, -1, 1, 1).expand_as(ref))


def test_weights_loaded_after_folding_are_used():
    model = _resnet(18)
    other = _resnet(18)
    _randomise_norms(other, 7)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = other(x)["res5"]
        fold_frozen_batchnorm(model)
        model(x)  # folded with the old weights
        model.load_state_dict(other.state_dict())
        out = model(x)["res5"]
    assert _max_rel(out, ref) < 1e-5


def test_training_and_gradients_use_the_unfolded_computation():
    model = _resnet(18)
    ref_model = copy.deepcopy(model)
    fold_frozen_batchnorm(model)
    for p in model.parameters():
        p.requires_grad_(True)
    x = torch.randn(1, 3, 64, 64)
    out = model(x)["res5"]
    ref = ref_model(x)["res5"]
    assert torch.equal(out, ref)  # grad enabled: bitwise the unfolded path
    out.sum().backward()
    assert model.stem.conv1.weight.grad is not None
    assert model.stem.conv1.weight.grad.abs().sum() > 0

    model.train()
    with torch.no_grad():
        assert torch.equal(model(x)["res5"], ref_model.train()(x)["res5"])


def test_group_norm_and_plain_convs_are_left_alone():
    conv_gn = Conv2d(8, 16, 3, norm=torch.nn.GroupNorm(4, 16))
    conv_plain = torch.nn.Conv2d(8, 16, 3)
    conv_none = Conv2d(8, 16, 3)
    assert fold_frozen_batchnorm(torch.nn.Sequential(conv_gn, conv_plain, conv_none)) == 0
    assert type(conv_gn) is Conv2d and type(conv_none) is Conv2d


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_batchnorm2d_in_eval_folds_too(norm):
    bn = torch.nn.BatchNorm2d(16) if norm == "BN" else FrozenBatchNorm2d(16)
    conv = Conv2d(8, 16, 3, padding=1, bias=True, norm=bn, activation=torch.relu).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(16))
        bn.running_var.copy_(0.5 + torch.rand(16))
        bn.weight.copy_(1 + 0.3 * torch.randn(16))
        bn.bias.copy_(torch.randn(16))
        x = torch.randn(2, 8, 10, 10)
        ref = conv(x)
        assert fold_frozen_batchnorm(conv) == 1
        assert _max_rel(conv(x), ref) < 1e-6


def _small_pave_r50_cfg():
    cfg = get_cfg()
    add_vpose_config(cfg)
    merge_config_file(cfg, "configs/pave_r50.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VPOSE.NUM_KEYPOINTS = 15
    # Small decoder/encoder: only the backbone's norms are under test.
    cfg.MODEL.VPOSE.ENC_LAYERS = 1
    cfg.MODEL.VPOSE.NUM_QUERIES = 10
    cfg.MODEL.VPOSE.NUM_JOINT_PERSONS_TEST = 5
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    return cfg


def test_pave_net_r50_outputs_unchanged_by_folding():
    """The real target: PAVE-Net R50 (FrozenBN backbone), eval outputs before and after."""
    cfg = _small_pave_r50_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _randomise_norms(model, 3)
    clip = {
        "image": torch.randint(0, 255, (3, 3, 64, 96), dtype=torch.uint8),
        "key_index": 1,
        "height": 64,
        "width": 96,
    }
    with torch.no_grad():
        ref = model([clip])[0]["instances"]
        assert fold_frozen_batchnorm(model) == 53
        out = model([clip])[0]["instances"]
    assert _max_rel(out.scores, ref.scores) < 1e-5
    assert _max_rel(out.pred_keypoints, ref.pred_keypoints) < 1e-5


def test_predictor_folds_the_model_it_builds_and_leaves_a_given_one(tmp_path):
    """VideoPosePredictor(cfg) folds after loading MODEL.WEIGHTS; results equal the unfolded
    model's, and a model passed in with ``model=`` is used as it is."""
    cfg = _small_pave_r50_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _randomise_norms(model, 4)
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, cfg.MODEL.WEIGHTS)

    folded = VideoPosePredictor(cfg, track=False)
    convs = [m for m in folded.model.modules() if isinstance(m, Conv2d)]
    assert sum(type(m) is FoldedConv2d for m in convs) == 53
    given = VideoPosePredictor(cfg, model=model, track=False)
    assert not any(isinstance(m, FoldedConv2d) for m in given.model.modules())

    rng = np.random.default_rng(0)
    video = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    for a, b in zip(folded(video), given(video)):
        assert a.index == b.index
        assert _max_rel(a.instances.scores, b.instances.scores) < 1e-5
        assert _max_rel(a.instances.pred_keypoints, b.instances.pred_keypoints) < 1e-5
