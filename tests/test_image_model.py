"""ImagePoseTransformer and its parts on CPU with tiny inputs."""

import copy
from pathlib import Path

import pytest

import vpose_d2  # noqa: F401  isort: skip
import torch
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances

from vpose_d2.config import get_vpose_cfg
from vpose_d2.modeling.backbone import TimmBackbone
from vpose_d2.modeling.clip_memory import ClipMemory, level_start_index
from vpose_d2.modeling.meta_arch import resolve_keypoint_meta
from vpose_d2.modeling.transformer import JointDecoder, PoseDecoder

K = 15
REPO = Path(__file__).resolve().parents[1]


def _tiny_cfg():
    cfg = get_vpose_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "quick" / "petr_synthetic.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VPOSE.NUM_KEYPOINTS = K
    cfg.MODEL.VPOSE.HIDDEN_DIM = 32
    cfg.MODEL.VPOSE.NECK_NUM_GROUPS = 8
    cfg.MODEL.VPOSE.DIM_FEEDFORWARD = 64
    cfg.MODEL.VPOSE.ENC_LAYERS = 1
    cfg.MODEL.VPOSE.NUM_QUERIES = 8
    cfg.MODEL.VPOSE.NUM_JOINT_PERSONS_TEST = 3
    cfg.MODEL.VPOSE.REFINE_HIDDEN_DIM = 32
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    return cfg


def _frame_instances(n: int, h: int, w: int, gen: torch.Generator) -> Instances:
    inst = Instances((h, w))
    kpts = torch.rand(n, K, 3, generator=gen) * torch.tensor([w, h, 1.0])
    kpts[..., 2] = 1.0
    kpts[:, :2, 2] = 0.0  # some joints not annotated
    inst.gt_keypoints = kpts
    inst.gt_boxes = Boxes(torch.cat([kpts[..., :2].amin(1), kpts[..., :2].amax(1)], -1))
    inst.gt_classes = torch.zeros(n, dtype=torch.int64)
    inst.gt_track_ids = torch.arange(n)
    inst.gt_areas = Boxes(inst.gt_boxes.tensor).area()
    return inst


def _clip(t: int, n: int, h=70, w=90, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 255, (t, 3, h, w), dtype=torch.uint8, generator=gen)
    d = {
        "image": image if t > 1 else image[0],
        "key_index": t // 2,
        "instances": [_frame_instances(n, h, w, gen) for _ in range(t)],
        "height": 2 * h,
        "width": 2 * w,
        "video_id": "v",
        "key_frame_id": 0,
    }
    if t == 1:
        d["instances"] = d["instances"][0]
    return d


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(_tiny_cfg())


def test_forward_backward_image_and_clip(tiny_model):
    model = tiny_model
    model.train()
    model.zero_grad()
    # A T=1 image with 2 persons, a T=3 clip (key frame used) with 3, an image without persons.
    batch = [_clip(1, 2), _clip(3, 3, seed=1), _clip(1, 0, h=64, w=64, seed=2)]
    losses = model(batch)
    assert all(k.startswith("loss_") for k in losses)
    for stage in ("enc", "dec0", "dec1"):
        assert f"loss_class_{stage}" in losses and f"loss_rle_{stage}" in losses
    assert "loss_rle_joint0" in losses and "loss_rle_joint1" in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for prefix in (
        "backbone.bottom_up",
        "backbone.input_proj",
        "encoder",
        "proposal_head",
        "pose_decoder",
        "joint_decoder",
        "criterion.rle",
    ):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), prefix

    model.eval()
    with torch.no_grad():
        out = model([_clip(1, 1), _clip(3, 2, seed=3)])
    assert len(out) == 2
    for r in out:
        inst = r["instances"]
        assert inst.image_size == (140, 180)  # original height / width
        assert inst.pred_keypoints.shape == (5, K, 3)
        assert inst.scores.shape == (5,) and (inst.scores[:-1] >= inst.scores[1:]).all()
        assert (inst.pred_classes == 0).all()
        xy = inst.pred_keypoints[..., :2]
        assert (xy[..., 0] >= 0).all() and (xy[..., 0] <= 180).all()
        assert (xy[..., 1] >= 0).all() and (xy[..., 1] <= 140).all()
        boxes = inst.pred_boxes.tensor
        assert torch.allclose(boxes[:, :2], xy.amin(1)) and torch.allclose(boxes[:, 2:], xy.amax(1))
        # joint score = pose score x 0.7 (1 - e^-0.2/sx)(1 - e^-0.2/sy) <= 0.7 x pose score
        assert (inst.pred_keypoints[..., 2] <= 0.7 * inst.scores[:, None] + 1e-6).all()


def test_inference_uses_only_the_key_frame(tiny_model):
    model = tiny_model.eval()
    clip = _clip(3, 1)
    other = copy.deepcopy(clip)
    other["image"][0] = 0  # change a neighbour frame only
    with torch.no_grad():
        a = model([clip])[0]["instances"].pred_keypoints
        b = model([other])[0]["instances"].pred_keypoints
    assert torch.allclose(a, b)


def test_bad_inputs_are_named(tiny_model):
    model = tiny_model
    model.train()
    bad = _clip(1, 1)
    bad["image"] = bad["image"][0]
    with pytest.raises(ValueError, match="image"):
        model([bad])
    four = _clip(1, 1)
    four["image"] = torch.zeros(4, 70, 90, dtype=torch.uint8)
    with pytest.raises(ValueError, match="channels"):
        model([four])
    missing = _clip(1, 1)
    del missing["instances"]
    with pytest.raises(ValueError, match="instances"):
        model([missing])
    wrong_k = _clip(1, 1)
    wrong_k["instances"].gt_keypoints = torch.zeros(1, 17, 3)
    with pytest.raises(ValueError, match="gt_keypoints"):
        model([wrong_k])


def test_zero_decoder_layers_are_refused_with_the_alternative():
    # The image model's poses are the last pose-decoder layer's; without layers it has
    # none (PAVENet's USE_STPD=False is the model that regresses from the proposals).
    cfg = _tiny_cfg()
    cfg.MODEL.VPOSE.DEC_LAYERS = 0
    with pytest.raises(ValueError, match="USE_STPD"):
        build_model(cfg)


def test_num_keypoints_from_metadata():
    cfg = _tiny_cfg()
    cfg.MODEL.VPOSE.NUM_KEYPOINTS = 0
    name = "_test_image_model_meta"
    MetadataCatalog.get(name).set(
        keypoint_names=[f"j{i}" for i in range(4)], keypoint_oks_sigmas=[0.1, 0.2, 0.3, 0.4]
    )
    cfg.DATASETS.TRAIN = (name,)
    assert resolve_keypoint_meta(cfg) == (4, [0.1, 0.2, 0.3, 0.4])
    cfg.DATASETS.TRAIN = ("_test_image_model_unknown",)
    with pytest.raises(ValueError, match="NUM_KEYPOINTS"):
        resolve_keypoint_meta(cfg)


def _memory(b, t, c, shapes, gen):
    shapes_t = torch.tensor(shapes * t, dtype=torch.long)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), shapes_t.prod(1).cumsum(0)[:-1]])
    s = int(shapes_t.prod(1).sum())
    mem = torch.randn(b, s, c, generator=gen)
    ratios = torch.ones(b, t * len(shapes), 2)
    return mem, shapes_t, starts, ratios


def _as_clip(mem, t, shapes):
    """(B, T * S, C) frame-major tokens of T frames with per-frame ``shapes`` -> ClipMemory."""
    shapes1 = torch.tensor(shapes, dtype=torch.long)
    b, _, c = mem.shape
    s = int(shapes1.prod(1).sum())
    return ClipMemory(
        memory=mem.view(b, t, s, c),
        padding_mask=torch.zeros(b, t, s, dtype=torch.bool),
        spatial_shapes=shapes1,
        level_start_index=level_start_index(shapes1),
        valid_ratios=torch.ones(b, t, len(shapes), 2),
        image_sizes=[(1, 1)] * b,
    )


def _spread_frames(single, multi, t):
    """Load a T=1 module's weights into a T-frame one, every frame a copy."""
    state = single.state_dict()
    new = {}
    for k, v in multi.state_dict().items():
        parts = k.split(".")
        if parts[0] == "refine":  # refine.{layer}.{frame}.*: every frame gets frame 0's MLP
            parts[2] = "0"
        src = state[".".join(parts)]
        if src.shape != v.shape:
            assert "sampling_offsets" in k or "attention_weights" in k, k
            src = src.repeat(t, *([1] * (src.dim() - 1)))
        new[k] = src
    multi.load_state_dict(new)


def test_pose_decoder_frames_share_one_softmax():
    """T identical frames with identical per-frame weights reproduce the T=1 decoder: the
    weights of all T*L*K samples are normalized together and frames stay in order."""
    gen = torch.Generator().manual_seed(0)
    b, n, c, t = 2, 4, 32, 3
    kw = dict(
        num_layers=2,
        embed_dim=c,
        num_heads=4,
        dim_feedforward=64,
        dropout=0.0,
        num_levels=2,
        num_keypoints=K,
        refine_hidden_dim=32,
        refine_num_layers=3,
    )
    single = PoseDecoder(num_frames=1, **kw).eval()
    for p in single.parameters():  # non-zero everything so offsets / weights matter
        p.data.normal_(0, 0.2, generator=gen)
    multi = PoseDecoder(num_frames=t, **kw).eval()
    _spread_frames(single, multi, t)
    mem1, shapes1, starts1, ratios1 = _memory(b, 1, c, [(6, 8), (3, 4)], gen)
    tgt = torch.randn(b, n, c, generator=gen)
    refs = torch.rand(b, 1, n, K, 2, generator=gen) * 0.5 + 0.25
    lv = [(6, 8), (3, 4)]
    out1 = single(tgt, refs, _as_clip(mem1, 1, lv), key_index=0)
    mem3 = mem1.repeat(1, t, 1)
    out3 = multi(tgt, refs.expand(-1, t, -1, -1, -1), _as_clip(mem3, t, lv), key_index=1)
    assert out3[-1]["poses"].shape == (b, t, n, K, 2)
    for o1, o3 in zip(out1, out3):
        assert torch.allclose(o1["queries"], o3["queries"], atol=1e-5)
        for f in range(t):
            assert torch.allclose(o1["poses"][:, 0], o3["poses"][:, f], atol=1e-5)
    # A neighbour frame matters: change frame 2's memory, the queries change.
    mem3b = mem3.clone()
    s = mem1.shape[1]
    mem3b[:, 2 * s :] = torch.randn(b, s, c, generator=gen)
    out3b = multi(tgt, refs.expand(-1, t, -1, -1, -1), _as_clip(mem3b, t, lv), key_index=1)
    assert not torch.allclose(out3b[0]["queries"], out3[0]["queries"], atol=1e-4)


def test_joint_decoder_frames():
    gen = torch.Generator().manual_seed(1)
    b, p, c, t = 2, 3, 32, 3
    kw = dict(
        num_layers=2,
        embed_dim=c,
        num_heads=4,
        dim_feedforward=64,
        dropout=0.0,
        num_levels=2,
        num_points=4,
        num_keypoints=K,
    )
    single = JointDecoder(num_frames=1, **kw).eval()
    for prm in single.parameters():
        prm.data.normal_(0, 0.2, generator=gen)
    multi = JointDecoder(num_frames=t, **kw).eval()
    _spread_frames(single, multi, t)
    mem1, shapes1, starts1, ratios1 = _memory(b, 1, c, [(6, 8), (3, 4)], gen)
    refs = torch.rand(b, 1, p, K, 2, generator=gen)
    lv = [(6, 8), (3, 4)]
    out1 = single(refs, _as_clip(mem1, 1, lv), key_index=0)
    out3 = multi(refs.expand(-1, t, -1, -1, -1), _as_clip(mem1.repeat(1, t, 1), t, lv), key_index=2)
    assert out3[-1]["joints"].shape == (b, t, p, K, 2)
    assert out3[-1]["sigmas"].shape == (b, p, K, 2)
    for o1, o3 in zip(out1, out3):
        assert torch.allclose(o1["joints"][:, 0], o3["joints"][:, 2], atol=1e-5)
    with pytest.raises(ValueError, match="T=3"):
        multi(refs, _as_clip(mem1, 1, lv))


def test_resnet_pose_backbone_levels():
    cfg = _tiny_cfg()
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    shapes = backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64]
    assert {s.channels for s in shapes.values()} == {32}
    feats = backbone(torch.randn(1, 3, 128, 64))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 8), (8, 4), (4, 2), (2, 1)]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS"):
        build_backbone(cfg, ShapeSpec(channels=3))


def test_timm_backbone_channels_first():
    pytest.importorskip("timm")
    # A small Swin: timm returns its maps channels-last; ours must be NCHW at strides 8-32.
    bb = TimmBackbone(
        name="swin_tiny_patch4_window7_224",
        out_indices=[1, 2, 3],
        model_kwargs={"embed_dim": 32, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8)},
    )
    feats = bb(torch.randn(1, 3, 96, 128))
    shapes = bb.output_shape()
    for name, f in feats.items():
        assert f.shape[1] == shapes[name].channels
        assert f.shape[-2:] == (96 // shapes[name].stride, 128 // shapes[name].stride)
