"""tools/two_stage_peer.py: the benchmark's two-stage top-down peer (tiny sizes, random weights)."""

import numpy as np
import pytest
import torch
from script_loader import load_script


@pytest.fixture(scope="module")
def peer_mod():
    return load_script("tools/two_stage_peer.py")


@pytest.fixture(scope="module")
def tiny_peer(peer_mod):
    torch.manual_seed(0)
    return peer_mod.TwoStagePeer((64, 96), depth=18, crop_size=(64, 64))


def test_detector_config_is_the_zoo_faster_rcnn_at_the_input_size(peer_mod):
    cfg = peer_mod.detector_config((480, 800), "cpu")
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    assert list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == ["p2", "p3", "p4", "p5"]
    assert list(cfg.MODEL.RPN.IN_FEATURES) == ["p2", "p3", "p4", "p5", "p6"]
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 1000
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert not cfg.MODEL.MASK_ON
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (480, 800)


def test_crop_windows_have_the_crop_aspect_and_padding(peer_mod):
    boxes = torch.tensor([[10.0, 20.0, 40.0, 120.0], [0.0, 0.0, 90.0, 30.0]])
    win = peer_mod.crop_boxes(boxes, aspect=0.75, padding=1.25)
    w, h = win[:, 2] - win[:, 0], win[:, 3] - win[:, 1]
    torch.testing.assert_close(w / h, torch.full((2,), 0.75))
    # Tall box: height kept (x1.25), width widened; wide box: width kept (x1.25).
    torch.testing.assert_close(h[0], torch.tensor(125.0))
    torch.testing.assert_close(w[1], torch.tensor(112.5))
    torch.testing.assert_close((win[:, :2] + win[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)


def test_cut_crops_samples_each_window_from_each_frame(peer_mod):
    # Frame t holds x + 1000 * t in every channel, so a crop shows where and from which frame.
    t, h, w = 3, 40, 60
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(t, 3, h, w)
    frames = xs + 1000 * torch.arange(t, dtype=torch.float32).view(t, 1, 1, 1)
    windows = torch.tensor([[10.0, 0.0, 30.0, 40.0], [20.0, 5.0, 52.0, 37.0]])
    crops = peer_mod.cut_crops(frames, windows, (8, 8))
    assert crops.shape == (6, 3, 8, 8)
    for p in range(2):
        x0, x1 = windows[p, 0], windows[p, 2]
        centres = x0 - 0.5 + (torch.arange(8) + 0.5) * (x1 - x0) / 8  # aligned=True
        for f in range(t):
            torch.testing.assert_close(crops[p * t + f, 0, 3], centres + 1000 * f)


def test_decode_heatmaps_argmax_quarter_shift_and_window(peer_mod):
    hm = torch.zeros(1, 2, 16, 12)
    hm[0, 0, 5, 7] = 1.0
    hm[0, 0, 5, 8] = 0.5  # right neighbour higher: +0.25 in x
    hm[0, 1, 0, 0] = 2.0  # on the border: no shift
    hm[0, 1, 1, 0] = 1.0
    window = torch.tensor([[100.0, 200.0, 148.0, 264.0]])  # 4 px per heatmap cell
    kp = peer_mod.decode_heatmaps(hm, window)
    torch.testing.assert_close(kp[0, 0], torch.tensor([100 + 4 * 7.75, 200 + 4 * 5.5, 1.0]))
    torch.testing.assert_close(kp[0, 1], torch.tensor([100 + 4 * 0.5, 200 + 4 * 0.5, 2.0]))


def test_oks_nms_drops_duplicates_keeps_distinct_poses(peer_mod):
    k = 15
    sigmas = [0.05] * k
    g = torch.Generator().manual_seed(0)
    a = torch.rand(k, 2, generator=g) * 50
    b = a + 200  # far away
    poses = torch.stack([a, a + 0.1, b])
    keypoints = torch.cat([poses, torch.ones(3, k, 1)], -1)
    scores = torch.tensor([0.5, 0.9, 0.7])
    areas = torch.full((3,), 2500.0)
    keep = peer_mod.oks_nms(keypoints, scores, areas, sigmas, threshold=0.9)
    assert keep.tolist() == [1, 2]  # the near-copy of 1 (index 0) suppressed; by score
    assert peer_mod.oks_nms(keypoints[:0], scores[:0], areas[:0], sigmas).numel() == 0


def test_folded_pose_network_matches(peer_mod):
    torch.manual_seed(0)
    net = peer_mod.SimpleBaselinePose(15, depth=18, deconv_channels=32).eval()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
    folded = peer_mod.fold_pose_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert out.shape == (2, 15, 16, 16)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_peer_runs_the_given_persons_on_every_frame(tiny_peer):
    frames = [np.random.default_rng(i).integers(0, 255, (64, 96, 3), np.uint8) for i in range(4)]
    boxes = [np.array([[10.0, 5.0, 40.0, 60.0], [50.0, 10.0, 90.0, 60.0]])] * 4
    calls = []
    model = tiny_peer.detector.model
    handle = model.register_forward_hook(lambda mod, inp, out: calls.append(inp[0][0]["image"]))
    try:
        results = list(tiny_peer(frames, boxes))
    finally:
        handle.remove()
    assert [i for i, _ in results] == [0, 1, 2, 3]
    assert len(calls) == 4  # the detector ran on every (full) key frame
    assert all(c.shape[-2:] == (64, 96) for c in calls)
    assert tiny_peer.last_num_crops == 2 * 3  # P persons x T frames, one batch
    for _, inst in results:
        # Two far-apart boxes: OKS-NMS keeps both; joints fall in their crop windows.
        assert len(inst) == 2
        assert inst.pred_keypoints.shape == (2, 15, 3)
        assert torch.isfinite(inst.pred_keypoints).all()
        win = inst.pred_boxes.tensor
        kp = inst.pred_keypoints
        cx = (win[:, 0] + win[:, 2]) / 2
        assert ((kp[..., 0] - cx[:, None]).abs() <= 60).all()


def test_peer_without_boxes_uses_the_detector_and_bad_boxes_are_named(tiny_peer):
    frames = [np.random.default_rng(5).integers(0, 255, (64, 96, 3), np.uint8)] * 2
    detections = tiny_peer.detector(frames[-1])["instances"]
    assert (detections.scores > tiny_peer.score_threshold).sum() > 3
    tiny_peer.max_persons = 3  # the top 3 detections, to keep the pose stage small
    try:
        results = list(tiny_peer(frames))
    finally:
        tiny_peer.max_persons = None
    assert len(results) == 2
    assert tiny_peer.last_num_crops == 3 * 3
    assert 1 <= len(results[-1][1]) <= 3  # after OKS-NMS
    assert set(results[-1][1].pred_boxes.tensor.flatten().tolist()) <= set(
        detections.pred_boxes.tensor[:3].flatten().tolist()
    )
    with pytest.raises(ValueError, match=r"person_boxes\[0\]"):
        list(tiny_peer(frames, [np.zeros((2, 5))] * 2))
    with pytest.raises(ValueError, match="Frame 1"):
        list(tiny_peer([frames[0], np.zeros((64, 96), np.uint8)], [np.zeros((0, 4))] * 2))
    with pytest.raises(ValueError, match="person_boxes has 1 frames"):
        list(tiny_peer(frames, [np.zeros((0, 4))]))
