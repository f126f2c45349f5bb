"""PAVENet: forward/backward for T = 3 and 5, the joint softmax over T*L*K samples, cached
sliding windows == recomputation, T = 1 == the image model, every ablation switch, configs."""

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List
from unittest import mock

import pytest
import torch

import vpose_d2  # noqa: F401  isort: skip  (compat shims before Detectron2's structures)
from common import H, K, W, build, clip, frames, instances, perturb, tiny_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from vpose_d2.config import get_vpose_cfg
from vpose_d2.engine import merge_config_file
from vpose_d2.modeling.backbone.neck import MultiScalePoseBackbone
from vpose_d2.modeling.clip_memory import ClipMemory
from vpose_d2.modeling.meta_arch import ImagePoseTransformer, PAVENet
from vpose_d2.modeling.transformer import frame_attention

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@contextmanager
def _record_attention_weights(store: List):
    """Wrap the frame attentions' call of the op (not the encoder's); record
    (spatial_shapes, attention_weights)."""
    base = frame_attention._FrameDeformableAttentionBase
    original = base.attend

    def spy(self, value, spatial_shapes, level_start_index, locations, weights):
        store.append((spatial_shapes.clone(), weights.detach().clone()))
        return original(self, value, spatial_shapes, level_start_index, locations, weights)

    with mock.patch.object(base, "attend", spy):
        yield


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offsets", [(-1, 1), (-2, -1, 1, 2)], ids=["T3", "T5"])
def test_forward_backward(offsets):
    cfg = tiny_cfg(offsets)
    # Off the zero init (output projections start at zero, which blocks gradients into the
    # attention at step 0).
    model = perturb(build(cfg))
    t = 1 + len(offsets)
    assert model.num_frames == t and model.key_index == t // 2
    assert model.pose_decoder.num_frames == t and model.joint_decoder.num_frames == t
    model.train()
    losses = model([clip(t, t // 2, 0), clip(t, t // 2, 10)])
    assert {"loss_class_enc", "loss_rle_enc"} <= set(losses)
    assert {f"loss_rle_dec{i}" for i in range(2)} <= set(losses)
    assert {f"loss_rle_joint{i}" for i in range(2)} <= set(losses)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    # The per-frame slices of the sampling offsets of every frame receive gradient:
    # neighbours are read, although only the key frame is supervised.
    grad = model.pose_decoder.layers[0].cross_attn.sampling_offsets.weight.grad
    assert grad is not None
    per_frame = grad.view(t, -1, grad.shape[-1]).abs().sum((1, 2))
    assert (per_frame > 0).all(), per_frame
    assert model.backbone.bottom_up.stem.weight.grad.abs().sum() > 0
    # Neighbour refinement MLPs learn through the next layer's (and the joint decoder's)
    # sampling locations, though only the key frame is supervised.
    for layer in model.pose_decoder.refine:
        for f in range(t):
            assert layer[f].layers[-1].weight.grad.abs().sum() > 0, f

    model.eval()
    with torch.no_grad():
        out = model([clip(t, t // 2, 0), clip(t, t // 2, 1, h=40, w=56)])
    assert len(out) == 2
    inst = out[1]["instances"]
    assert inst.image_size == (80, 112)
    assert inst.pred_keypoints.shape == (4, K, 3)
    assert inst.scores.shape == (4,) and (inst.pred_classes == 0).all()
    assert len(inst.pred_boxes) == 4
    # Batch size > 1 at test time gives what each clip gives alone.
    with torch.no_grad():
        alone = model([clip(t, t // 2, 0)])[0]["instances"]
    torch.testing.assert_close(alone.pred_keypoints, out[0]["instances"].pred_keypoints)


def test_neighbour_references_detached_on_request():
    cfg = tiny_cfg((-1, 1), NEIGHBOUR_REFERENCE_GRAD=False)
    model = perturb(build(cfg)).train()
    sum(model([clip(3, 1, 0)]).values()).backward()
    refine = model.pose_decoder.refine
    assert refine[0][1].layers[-1].weight.grad.abs().sum() > 0  # the key frame
    grad = refine[0][0].layers[-1].weight.grad  # a neighbour: no path to any loss
    assert grad is None or not grad.any()


def test_one_softmax_over_all_frames_levels_and_points():
    cfg = tiny_cfg((-2, -1, 1, 2))
    model = perturb(build(cfg)).eval()
    t, l = 5, cfg.MODEL.VPOSE.NUM_FEATURE_LEVELS
    calls: List = []
    with _record_attention_weights(calls), torch.no_grad():
        model([clip(t, 2, 3)])
    # 2 pose-decoder layers and 2 joint-decoder layers, each one op call over T*L levels.
    assert len(calls) == 4
    for shapes, weights in calls:
        b, q, m, levels, p = weights.shape
        assert levels == t * l and shapes.shape == (t * l, 2)
        # The L shapes of one frame repeat for every frame.
        assert torch.equal(shapes, shapes[:l].repeat(t, 1))
        total = weights.sum((-1, -2))
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
        # ...and not frame by frame: a frame's share varies between queries.
        per_frame = weights.view(b, q, m, t, l * p).sum(-1)
        assert (per_frame - 1.0).abs().max() > 1e-3
        assert per_frame.std() > 1e-4
    assert calls[0][1].shape[-1] == K  # pose-aware: K points, one per joint


def test_softmax_is_stable_for_large_logits():
    model = build(tiny_cfg()).eval()
    attn = model.pose_decoder.layers[0].cross_attn
    with torch.no_grad():
        attn.attention_weights.bias.fill_(1e4)
        attn.attention_weights.bias[0] = 3e4
    calls: List = []
    with _record_attention_weights(calls), torch.no_grad():
        out = model([clip(3, 1, 4)])
    assert torch.isfinite(calls[0][1]).all()
    assert torch.isfinite(out[0]["instances"].pred_keypoints).all()


def _count_value_projections(model: PAVENet, calls: List) -> None:
    """Record every call of the decoders' value projections (not the encoder's)."""
    for decoder in (model.pose_decoder, model.joint_decoder):
        for layer in decoder.layers if decoder is not None else ():
            layer.cross_attn.value_proj.register_forward_hook(lambda *_: calls.append(1))


@pytest.mark.parametrize("cache_values", [True, False], ids=["values", "no_values"])
@pytest.mark.parametrize(
    "switches",
    [
        {},
        dict(SPATIOTEMPORAL_ENCODER=True),
        dict(USE_STJD=False),
        dict(USE_STPD=False),
        dict(USE_STPD=False, USE_STJD=False),
    ],
    ids=["SE", "STE", "stpd_only", "stjd_only", "image_only"],
)
def test_cached_sliding_window_equals_recomputation(switches, cache_values):
    cfg = tiny_cfg((-1, 1), **switches)
    ste = cfg.MODEL.PAVE.SPATIOTEMPORAL_ENCODER
    model = perturb(build(cfg)).eval()
    video = frames(5, 7)
    items = [{"image": f, "height": 2 * H, "width": 2 * W} for f in video]
    backbone_calls = []
    model.backbone.register_forward_hook(lambda mod, inp, out: backbone_calls.append(inp[0].shape))
    with torch.no_grad():
        memories = model.encode_frames(items, cache_values=cache_values)
    # Every frame encoded once, in one batched call.
    assert len(memories) == 5 and len(backbone_calls) == 1 and backbone_calls[0][0] == 5
    assert all(isinstance(m, ClipMemory) and (m.pos is None) != ste for m in memories)
    # Projections are cached for the decoders the model has, and only where a frame's memory
    # does not depend on its window (not with the spatiotemporal encoder).
    num_layers = tuple(0 if d is None else 2 for d in (model.pose_decoder, model.joint_decoder))
    if ste or not cache_values or num_layers == (0, 0):
        assert all(not m.values for m in memories)
    else:
        for m in memories:
            names = ("pose_decoder", "joint_decoder")
            assert tuple(len(m.values.get(n, ())) for n in names) == num_layers
            s = m.memory.shape[2]
            assert all(v.shape == (1, 1, s, 2, 8) for vs in m.values.values() for v in vs)
    windows, expected = [], []
    for key in range(5):
        idx = [min(max(key + o, 0), 4) for o in (-1, 0, 1)]
        windows.append([memories[i] for i in idx])
        clip = {"image": video[idx], "key_index": 1, "height": 2 * H, "width": 2 * W}
        with torch.no_grad():
            expected.append(model([clip])[0]["instances"])
    projections: List = []
    _count_value_projections(model, projections)
    with torch.no_grad():
        got = [model.decode([w], [(2 * H, 2 * W)])[0] for w in windows]
        batched = model.decode(windows, [(2 * H, 2 * W)] * 5)
    # With the values cached, decode projects nothing; otherwise every layer once per call.
    cached = bool(memories[0].values)
    assert len(projections) == (0 if cached else 6 * sum(num_layers))
    for e, g, bt in zip(expected, got, batched):
        assert g.image_size == e.image_size == (2 * H, 2 * W)
        torch.testing.assert_close(g.pred_keypoints, e.pred_keypoints, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g.scores, e.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bt.pred_keypoints, e.pred_keypoints, atol=1e-5, rtol=1e-5)


def test_decode_with_cached_values_equals_projecting_the_window():
    """T = 3, frames of two sizes (so some are padded): the cached per-frame projections give
    what projecting each window's memory gives, and decode uses them."""
    model = perturb(build(tiny_cfg((-1, 1)))).eval()
    items = [{"image": f} for f in frames(2, 20)]
    items += [{"image": f} for f in frames(2, 21, h=40, w=56)]
    with torch.no_grad():
        cached = model.encode_frames(items)
        plain = model.encode_frames(items, cache_values=False)
    assert all(m.values for m in cached) and all(not m.values for m in plain)
    assert cached[3].padding_mask.any()  # the padded tokens' projections must be zero
    for vs in cached[3].values.values():
        for v in vs:
            assert not v[cached[3].padding_mask].any()
    windows = [[0, 2, 1], [3, 1, 2], [2, 2, 0]]
    projections: List = []
    _count_value_projections(model, projections)
    with torch.no_grad():
        with_values = model.decode([[cached[i] for i in w] for w in windows])
        assert not projections
        without = model.decode([[plain[i] for i in w] for w in windows])
        assert len(projections) == 4  # 2 + 2 decoder layers, once for the batch of windows
        # One frame without its projections: the whole batch projects as before.
        mixed = model.decode([[cached[0], plain[2], cached[1]], [cached[i] for i in windows[1]]])
    assert len(projections) == 8
    for a, b in zip(with_values, without):
        assert torch.allclose(a.pred_keypoints, b.pred_keypoints, atol=1e-5)
        assert torch.allclose(a.scores, b.scores, atol=1e-5)
    assert torch.allclose(mixed[0].pred_keypoints, with_values[0].pred_keypoints, atol=1e-5)
    # Projections of another model (other layer counts) are refused, not misread.
    other = perturb(build(tiny_cfg((-1, 1), USE_STPD=False))).eval()
    with torch.no_grad():
        foreign = other.encode_frames(items[:1])
    with pytest.raises(ValueError, match="another model"):
        model.decode([foreign * 3])


@pytest.mark.parametrize("part", ["pose_decoder", "joint_decoder"])
def test_per_frame_projections_concatenate_to_the_window_projection(part):
    """A decoder's projections of the T frames one at a time, concatenated along the tokens,
    are the projection of the T frames' memory; handed to the decoder as ``values`` they give
    what it computes from the memory, outputs and gradients."""
    model = perturb(build(tiny_cfg((-1, 1))))
    decoder = getattr(model, part)
    t, b, c, l = 3, 2, 16, 4
    shapes = torch.tensor([[3, 4], [2, 2], [1, 2], [1, 1]]).repeat(t, 1)
    s = int(shapes[:l].prod(1).sum())
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(b, t * s, c, generator=g)
    mask = torch.rand(b, t * s, generator=g) < 0.3
    whole = decoder.project_values(memory, mask)
    frames = [decoder.project_values(memory[:, i * s : (i + 1) * s], mask[:, i * s : (i + 1) * s])
              for i in range(t)]  # fmt: skip
    assert len(whole) == decoder.num_layers == 2
    for j, w in enumerate(whole):
        assert w.shape == (b, t * s, 2, c // 2)
        assert torch.allclose(torch.cat([f[j] for f in frames], 1), w, atol=1e-6)
        assert not w[mask].any()

    ratios = 0.5 + 0.5 * torch.rand(b, t * l, 2, generator=g)
    clip_memory = ClipMemory(
        memory=memory.view(b, t, s, c),
        padding_mask=mask.view(b, t, s),
        spatial_shapes=shapes[:l],
        level_start_index=torch.cat((shapes.new_zeros(1), shapes[:l].prod(1).cumsum(0)[:-1])),
        valid_ratios=ratios.view(b, t, l, 2),
        image_sizes=[(1, 1)] * b,
    )
    if part == "pose_decoder":
        refs = 0.2 + 0.6 * torch.rand(b, t, 4, K, 2, generator=g)
        tgt = torch.randn(b, 4, c, generator=g)

        def run(values):
            return decoder(tgt, refs, clip_memory, 1, values=values)

        outputs = "poses"
    else:
        refs = 0.2 + 0.6 * torch.rand(b, t, 3, K, 2, generator=g)

        def run(values):
            return decoder(refs, clip_memory, 1, values=values)

        outputs = "joints"
    plain = run(None)
    plain[-1][outputs].sum().backward()
    grads = {n: p.grad.clone() for n, p in decoder.named_parameters() if p.grad is not None}
    decoder.zero_grad()
    cached = run([torch.cat([f[j] for f in frames], 1) for j in range(decoder.num_layers)])
    cached[-1][outputs].sum().backward()
    for a, b_ in zip(plain, cached):
        assert torch.allclose(a[outputs], b_[outputs], atol=1e-5)
    value_proj = "layers.0.cross_attn.value_proj.weight"
    assert grads[value_proj].abs().sum() > 0  # through the given projections as well
    for name, param in decoder.named_parameters():
        if name in grads:
            assert torch.allclose(param.grad, grads[name], atol=1e-5), name
    with pytest.raises(ValueError, match="projected values for 2 layers"):
        run(list(whole[:1]))
    with pytest.raises(ValueError, match="projected values must be"):
        run([v[:, :-1] for v in whole])


def test_video_model_with_one_frame_is_the_image_model():
    cfg = tiny_cfg(())
    cfg.MODEL.VPOSE.LOSS.HEATMAP_WEIGHT = 2.0  # the auxiliary heatmap must match too
    image_model = perturb(build(cfg, ImagePoseTransformer, seed=3)).eval()
    video_model = build(cfg, PAVENet, seed=4).eval()
    # Same parameter names by design: the state_dict loads strictly.
    assert set(image_model.state_dict()) == set(video_model.state_dict())
    video_model.load_state_dict(image_model.state_dict(), strict=True)
    assert video_model.num_frames == 1
    inputs = [clip(1, 0, 5), clip(1, 0, 6, h=40, w=56)]
    with torch.no_grad():
        a = image_model(inputs)
        b = video_model(inputs)
    for ra, rb in zip(a, b):
        torch.testing.assert_close(
            rb["instances"].pred_keypoints, ra["instances"].pred_keypoints, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            rb["instances"].scores, ra["instances"].scores, atol=1e-5, rtol=1e-5
        )
    image_model.train()
    video_model.train()
    la, lb = image_model(inputs), video_model(inputs)
    assert set(la) == set(lb) and "loss_heatmap" in la
    for key in la:
        torch.testing.assert_close(lb[key], la[key], atol=1e-5, rtol=1e-5)


def test_heatmap_loss_is_training_only_and_reaches_the_backbone():
    plain = perturb(build(tiny_cfg(), seed=7)).eval()
    cfg = tiny_cfg()
    cfg.MODEL.VPOSE.LOSS.HEATMAP_WEIGHT = 2.0
    cfg.MODEL.VPOSE.LOSS.HEATMAP_SIGMA = 1.5
    model = build(cfg, seed=7)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("heatmap_head.") for k in missing) and missing
    model.eval()
    inputs = [clip(3, 1, 11), clip(3, 1, 12)]
    with torch.no_grad():
        a, b = plain(inputs), model(inputs)
    for ra, rb in zip(a, b):  # inference never calls the head
        torch.testing.assert_close(rb["instances"].pred_keypoints, ra["instances"].pred_keypoints)
    model.train()
    losses = model(inputs)
    assert model.heatmap_head.sigma == 1.5
    assert torch.isfinite(losses["loss_heatmap"]) and losses["loss_heatmap"] > 0
    losses["loss_heatmap"].backward()
    stem = model.backbone.bottom_up.stem.weight.grad
    assert stem is not None and stem.abs().sum() > 0


@pytest.mark.parametrize(
    "switches, present, absent",
    [
        (
            dict(USE_STPD=False, USE_STJD=False),
            {"loss_rle_enc"},
            {"loss_rle_dec0", "loss_rle_joint0"},
        ),
        (dict(USE_STPD=True, USE_STJD=False), {"loss_rle_dec1"}, {"loss_rle_joint0"}),
        (dict(USE_STPD=False, USE_STJD=True), {"loss_rle_joint1"}, {"loss_rle_dec0"}),
        (dict(REFERENCE="random"), {"loss_rle_dec1", "loss_rle_joint1"}, {"loss_rle_enc"}),
        (dict(SPATIOTEMPORAL_ENCODER=True), {"loss_rle_enc", "loss_rle_joint1"}, set()),
    ],
    ids=["image_only", "stpd_only", "stjd_only", "random_reference", "spatiotemporal_encoder"],
)
def test_ablation_switches_build_and_run(switches, present, absent):
    cfg = tiny_cfg((-1, 1), **switches)
    model = build(cfg)
    assert (model.pose_decoder is not None) == cfg.MODEL.PAVE.USE_STPD
    assert (model.joint_decoder is not None) == cfg.MODEL.PAVE.USE_STJD
    if cfg.MODEL.PAVE.SPATIOTEMPORAL_ENCODER:
        assert (
            model.encoder.layers[0].self_attn.num_levels == 3 * cfg.MODEL.VPOSE.NUM_FEATURE_LEVELS
        )
    model.train()
    losses = model([clip(3, 1, 0), clip(3, 1, 1)])
    assert present <= set(losses) and not (absent & set(losses))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([clip(3, 1, 2)])
    assert out[0]["instances"].pred_keypoints.shape == (4, K, 3)
    assert torch.isfinite(out[0]["instances"].pred_keypoints).all()


def test_zero_decoder_layers_is_the_ablation_without_the_decoder():
    """MODEL.VPOSE.DEC_LAYERS=0 builds no pose decoder and trains one step, exactly as
    MODEL.PAVE.USE_STPD=False (the criterion takes the proposals as the last stage)."""
    cfg = tiny_cfg((-1, 1))
    cfg.MODEL.VPOSE.DEC_LAYERS = 0
    model = perturb(build(cfg)).train()
    ablation = perturb(build(tiny_cfg((-1, 1), USE_STPD=False))).train()
    assert model.pose_decoder is None and model.joint_decoder is not None
    model.load_state_dict(ablation.state_dict(), strict=True)
    inputs = [clip(3, 1, 0), clip(3, 1, 1)]
    losses = model(inputs)
    assert {"loss_class_enc", "loss_rle_enc", "loss_rle_joint1"} <= set(losses)
    assert not any("dec" in name for name in losses)
    expected = ablation(inputs)
    assert set(losses) == set(expected)
    for name in losses:
        torch.testing.assert_close(losses[name], expected[name])
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    sum(losses.values()).backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    assert all(torch.isfinite(p).all() for p in params)


def test_bad_inputs_name_the_problem():
    model = build(tiny_cfg((-1, 1))).eval()
    with pytest.raises(ValueError, match="T=3"):
        model([clip(5, 2, 0)])
    with pytest.raises(ValueError, match="video0.*key_index 0"):
        model([clip(3, 0, 0)])
    with pytest.raises(ValueError, match="REFERENCE"):
        build(tiny_cfg((-1, 1), USE_STPD=False, REFERENCE="random"))
    with pytest.raises(ValueError, match="not one of"):
        build(tiny_cfg((-1, 1), REFERENCE="learned"))
    memories = model.encode_frames([{"image": f} for f in frames(2, 0)])
    with pytest.raises(ValueError, match="T=3"):
        model.decode([memories])
    with pytest.raises(ValueError, match="frame 1"):
        model.encode_frames([{"image": frames(1, 0)[0]}, {"image": None}])
    # A still image is a clip that does not move.
    still = {"image": frames(1, 0)[0], "height": H, "width": W}
    moving = {"image": frames(1, 0).expand(3, -1, -1, -1), "key_index": 1, "height": H, "width": W}
    with torch.no_grad():
        a, b = model([still])[0]["instances"], model([moving])[0]["instances"]
    torch.testing.assert_close(a.pred_keypoints, b.pred_keypoints)


@pytest.mark.parametrize(
    "name, frames, key",
    [
        ("pave_r50.yaml", 3, 1),
        ("pave_r50_t5.yaml", 5, 2),
        ("pave_hrnet_w48.yaml", 3, 1),
        ("pave_swinl.yaml", 3, 1),
        ("quick/pave_synthetic.yaml", 3, 1),
    ],
)
def test_configs_schedule_and_clip(name, frames, key):
    from vpose_d2.data.clip import clip_offsets

    cfg = get_vpose_cfg()
    merge_config_file(cfg, str(CONFIG_DIR / name))
    assert cfg.MODEL.META_ARCHITECTURE == "PAVENet"
    offsets, key_index = clip_offsets(cfg.INPUT.CLIP.OFFSETS)
    assert (len(offsets), key_index) == (frames, key)
    if name.startswith("quick/"):
        petr = get_vpose_cfg()
        merge_config_file(petr, str(CONFIG_DIR / "quick" / "petr_synthetic.yaml"))
        # Same budget, backbone and input sizes as the image model's quick run.
        for key_ in (
            "SOLVER.MAX_ITER",
            "SOLVER.IMS_PER_BATCH",
            "SOLVER.BASE_LR",
            "MODEL.RESNETS.DEPTH",
            "MODEL.VPOSE.HIDDEN_DIM",
            "INPUT.MIN_SIZE_TRAIN",
            "INPUT.MAX_SIZE_TRAIN",
            "INPUT.MIN_SIZE_TEST",
            "DATASETS.TRAIN",
        ):
            a, b = cfg, petr
            for part in key_.split("."):
                a, b = a[part], b[part]
            assert a == b, key_
        return
    s = cfg.SOLVER
    assert s.OPTIMIZER == "ADAMW" and s.BASE_LR == pytest.approx(2e-5)
    assert s.BASE_LR * s.BACKBONE_MULTIPLIER == pytest.approx(2e-6)
    assert s.IMS_PER_BATCH == 16
    epoch = s.MAX_ITER / 30
    assert [round(x / epoch) for x in s.STEPS] == [20, 25]
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN)[0] == 480 and max(cfg.INPUT.MIN_SIZE_TRAIN) == 800
    assert cfg.INPUT.MAX_SIZE_TRAIN == 1333 and cfg.INPUT.MIN_SIZE_TEST == 800
    assert cfg.MODEL.VPOSE.DEC_LAYERS == 3 and cfg.MODEL.VPOSE.JOINT_DEC_LAYERS == 3


def test_video_predictor_streams_pave_net():
    """The engine's sliding-window predictor: cached memories == windowed recomputation."""
    import numpy as np

    from vpose_d2.engine.predictor import VideoPosePredictor

    cfg = tiny_cfg((-1, 1))
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = H, W
    model = perturb(build(cfg)).eval()
    video = [f.permute(1, 2, 0).numpy() for f in frames(3, 8)]
    streaming = VideoPosePredictor(cfg, model=model)
    assert streaming.streaming and streaming.window_size == 3
    got = streaming.predict_video(video)
    expected = VideoPosePredictor(cfg, cache=False, model=model).predict_video(video)
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected):
        assert g.image_size == (H, W)
        np.testing.assert_allclose(g.pred_keypoints.numpy(), e.pred_keypoints.numpy(), atol=1e-5)
