"""VEPE: forward/backward for T = 3 and 5, every Table 2 row, the baseline == the image model, a
PETR checkpoint in the spatial phase, one softmax over T*L*K in STDME, STPE's instance mask,
pose query selection, eq. 5 by hand, streaming == windowed recomputation, the frozen spatial
phase, the configs and a short overfitting run."""

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List
from unittest import mock

import numpy as np
import pytest
import torch

import vpose_d2  # noqa: F401  isort: skip  (compat shims before Detectron2's structures)
from common import H, K, W, build, clip, frames, perturb, tiny_cfg

from vpose_d2.config import get_vpose_cfg
from vpose_d2.engine import merge_config_file
from vpose_d2.engine.predictor import VideoPosePredictor
from vpose_d2.engine.trainer import StrictShapeCheckpointer
from vpose_d2.modeling.losses import instance_consistency_loss
from vpose_d2.modeling.meta_arch import VEPE, ImagePoseTransformer
from vpose_d2.modeling.transformer import InstanceQueries, PoseQuerySelection, instance_mask

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
E = 8  # instance embedding size of the tiny model
TEMPORAL = ("instance_queries", "stpe", "stdme", "temporal_pose_decoder")
ROWS = {
    "baseline": dict(USE_STPE=False, USE_ICM=False, USE_STDME=False, USE_STPD=False),
    "stpe": dict(USE_STPE=True, USE_ICM=False, USE_STDME=False, USE_STPD=False),
    "icm": dict(USE_STPE=True, USE_ICM=True, USE_STDME=False, USE_STPD=False),
    "stdme": dict(USE_STPE=True, USE_ICM=True, USE_STDME=True, USE_STPD=False),
    "stpd": dict(USE_STPE=True, USE_ICM=True, USE_STDME=True, USE_STPD=True),
}


def vepe_cfg(offsets=(-1, 1), threshold: float = 0.0, **vepe):
    """The tiny model as VEPE; threshold 0 by default so that a random model selects queries."""
    cfg = tiny_cfg(offsets)
    cfg.MODEL.META_ARCHITECTURE = "VEPE"
    e = cfg.MODEL.VEPE
    e.INSTANCE_EMBED_DIM = E
    e.PQS_THRESHOLD = threshold
    for key, value in vepe.items():
        setattr(e, key, value)
    return cfg


@contextmanager
def record_calls(module, method: str, store: List):
    """Record the arguments of ``module.method`` calls (an instance attribute shadows it)."""
    original = getattr(module, method)

    def spy(*args, **kwargs):
        store.append(args)
        return original(*args, **kwargs)

    with mock.patch.object(module, method, spy):
        yield


def grad_sum(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offsets", [(-1, 1), (-2, -1, 1, 2)], ids=["T3", "T5"])
def test_forward_backward(offsets):
    model = perturb(build(vepe_cfg(offsets)))
    t, key = 1 + len(offsets), len(offsets) // 2
    assert isinstance(model, VEPE) and model.num_frames == t and model.key_index == key
    assert model.stpe.num_frames == t and model.stdme.num_frames == t
    assert len(model.temporal_pose_decoder.layers) == 3  # STPD: 3 layers (paper)
    model.train()
    backbone_calls = []
    model.backbone.register_forward_hook(lambda m, i, o: backbone_calls.append(i[0].shape[0]))
    losses = model([clip(t, key, 0), clip(t, key, 10)])
    assert backbone_calls == [2 * t]  # every frame of both clips in one batched call
    spatial = {"loss_class_enc", "loss_rle_enc", "loss_rle_dec1", "loss_rle_joint1"}
    temporal = {f"loss_rle_temporal_dec{i}" for i in range(3)} | {"loss_rle_temporal_joint1"}
    assert spatial | temporal | {"loss_class_temporal_dec2", "loss_instance"} <= set(losses)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in (
        model.backbone.bottom_up,
        model.instance_queries,
        model.stpe.layers[0].cross_attn,
        model.stdme.layers[0].temporal_attn,
        model.temporal_pose_decoder,
    ):
        assert grad_sum(part) > 0, type(part).__name__
    # The temporal attention reads every frame: each frame's slice of its offsets learns.
    grad = model.stdme.layers[0].temporal_attn.sampling_offsets.weight.grad
    per_frame = grad.view(2, t, -1, grad.shape[-1]).abs().sum((0, 2, 3))  # heads, frames, ...
    assert (per_frame > 0).all(), per_frame

    model.eval()
    with torch.no_grad():
        out = model([clip(t, key, 0), clip(t, key, 1, h=40, w=56)])
        alone = model([clip(t, key, 0)])[0]["instances"]
    inst = out[1]["instances"]
    assert inst.image_size == (80, 112)
    assert inst.pred_keypoints.shape == (4, K, 3) and inst.scores.shape == (4,)
    assert inst.pred_instance_embeds.shape == (4, E)
    torch.testing.assert_close(inst.pred_instance_embeds.norm(dim=-1), torch.ones(4))
    # Batch size > 1 at test time gives what each clip gives alone.
    first = out[0]["instances"]
    torch.testing.assert_close(alone.pred_keypoints, first.pred_keypoints, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.pred_instance_embeds, first.pred_instance_embeds)


@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
def test_table2_rows_build_train_and_infer(row):
    switches = ROWS[row]
    model = perturb(build(vepe_cfg(**switches)))
    present = {n for n in TEMPORAL if getattr(model, n) is not None}
    expected = {n for n, s in zip(TEMPORAL, ("USE_ICM", "USE_STPE", "USE_STDME", "USE_STPD"))
                if switches[s]}  # fmt: skip
    assert present == expected
    assert model.temporal == (row != "baseline")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    losses = model([clip(3, 1, 0), clip(3, 1, 1)])
    names = set(losses)
    assert {"loss_rle_dec1", "loss_rle_joint1"} <= names
    assert ("loss_rle_temporal_dec0" in names) == (row != "baseline")
    # Without STPD the spatial decoder decodes the temporal inputs (its 2 layers, not 3).
    assert ("loss_rle_temporal_dec2" in names) == (row == "stpd")
    assert ("loss_instance" in names) == switches["USE_ICM"]
    assert all(torch.isfinite(v) for v in losses.values())
    optimizer = torch.optim.SGD(params, lr=0.1)
    sum(losses.values()).backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    for name in present:  # every temporal part is trained
        assert grad_sum(getattr(model, name)) > 0, name
    model.eval()
    with torch.no_grad():
        inst = model([clip(3, 1, 2)])[0]["instances"]
    assert inst.pred_keypoints.shape == (4, K, 3) and torch.isfinite(inst.pred_keypoints).all()
    assert inst.has("pred_instance_embeds") == switches["USE_ICM"]


def test_baseline_row_is_the_image_model():
    """Every temporal part off: the image model's parameters and outputs for the same weights
    (on the key frame of a clip), and at T = 1 its training losses too."""
    image = perturb(build(tiny_cfg(()), ImagePoseTransformer, seed=3)).eval()
    for offsets in ((-1, 1), ()):
        baseline = build(vepe_cfg(offsets, **ROWS["baseline"]), seed=4)
        assert set(baseline.state_dict()) == set(image.state_dict())
        baseline.load_state_dict(image.state_dict(), strict=True)
        baseline.eval()
        t = 1 + len(offsets)
        inputs = [clip(t, t // 2, 5), clip(t, t // 2, 6, h=40, w=56)]
        with torch.no_grad():
            a, b = image(inputs), baseline(inputs)
        for ra, rb in zip(a, b):
            for field in ("pred_keypoints", "scores"):
                torch.testing.assert_close(
                    rb["instances"].get(field), ra["instances"].get(field), atol=1e-5, rtol=1e-5
                )
    # T = 1: the only labeled frame is the key frame, so the losses are the image model's.
    image.train()
    baseline.train()
    la, lb = image(inputs), baseline(inputs)
    assert set(la) == set(lb)
    for name in la:
        torch.testing.assert_close(lb[name], la[name], atol=1e-5, rtol=1e-5)


def test_image_checkpoint_loads_into_the_spatial_phase(tmp_path):
    """An ImagePoseTransformer checkpoint fills VEPE's spatial phase with no conversion: every
    key fits, the missing ones are the temporal modules'; the spatial stage then gives the image
    model's poses on every frame."""
    image = perturb(build(tiny_cfg(()), ImagePoseTransformer, seed=3)).eval()
    model = build(vepe_cfg(), seed=4)
    missing, unexpected = model.load_state_dict(image.state_dict(), strict=False)
    assert not unexpected and missing
    assert {m.split(".")[0] for m in missing} == set(TEMPORAL)
    # Through the checkpointer MODEL.WEIGHTS uses (shapes checked strictly).
    torch.save({"model": image.state_dict()}, tmp_path / "petr.pth")
    fresh = build(vepe_cfg(), seed=5)
    StrictShapeCheckpointer(fresh, strict_shapes=True).load(str(tmp_path / "petr.pth"))
    for name, value in image.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    fresh.eval()
    video = clip(3, 1, 7)
    with torch.no_grad():
        images, masks, sizes = fresh.preprocess([video])
        encoded = fresh.encode(images, masks, sizes)
        for t in range(3):
            frame = dict(video, image=video["image"][t], instances=video["instances"][t])
            expected = image.predict(image.encode(*image.preprocess([frame])))["final"]
            got = encoded.extras["spatial/dec1/poses"][:, t]
            torch.testing.assert_close(got, expected["poses"], atol=1e-5, rtol=1e-5)


def test_stdme_one_softmax_over_all_frames_levels_and_points():
    model = perturb(build(vepe_cfg((-2, -1, 1, 2)))).eval()
    t, l = 5, model.num_feature_levels
    attn = model.stdme.layers[0].temporal_attn
    calls: List = []
    with record_calls(attn, "attend", calls), torch.no_grad():
        model([clip(t, 2, 3)])
    assert len(calls) == 1  # all T*L maps in one call of the op
    value, shapes, _, locations, weights = calls[0]
    b, q, m, levels, p = weights.shape
    assert levels == t * l and shapes.shape == (t * l, 2) and p == 4
    assert torch.equal(shapes, shapes[:l].repeat(t, 1))  # one frame's L shapes, T times
    assert value.shape[1] == t * int(shapes[:l].prod(1).sum())  # the T frames' tokens
    total = weights.sum((-1, -2))
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    per_frame = weights.view(b, q, m, t, l * p).sum(-1)
    assert (per_frame - 1.0).abs().max() > 1e-3  # not one softmax per frame
    assert q == int(shapes[:l].prod(1).sum())  # every key-frame token is a query
    # STDME's positions are the tokens' own (rebuilt from the padding mask).
    with torch.no_grad():
        images, masks, sizes = model.preprocess([clip(t, 2, 3, h=40, w=56)])
        embedded = model.embed_clips(images, masks, sizes)
        encoded = model.encode_frame_tokens(embedded)
    torch.testing.assert_close(model.frame_pos(encoded.frame(2)), embedded.pos[:, 2])


def test_stpe_masked_out_queries_get_exactly_zero_weight():
    model = perturb(build(vepe_cfg(PQS_NUM_QUERIES=5))).eval()
    inputs = [clip(3, 1, 4), clip(3, 1, 9)]
    with torch.no_grad():
        images, masks, sizes = model.preprocess(inputs)
        scores = model.encode(images, masks, sizes).extras["pqs/logits"].sigmoid()
    # A threshold between the scores, so that both frames and key queries have padding slots.
    model.pqs.threshold = float(scores.flatten().median())
    weights: Dict[str, torch.Tensor] = {}
    layer = model.stpe.layers[0]
    layer.self_attn.register_forward_hook(lambda m, i, o: weights.update(self=o[1]))
    layer.cross_attn.register_forward_hook(lambda m, i, o: weights.update(cross=o[1]))
    with torch.no_grad():
        clip_memory = model.encode(images, masks, sizes)
        model.predict(clip_memory)
    valid = clip_memory.extras["pqs/valid"]  # (B, T, M)
    embeds = clip_memory.extras["pqs/embeds"]
    assert (~valid).any() and valid.any()
    b, t, m = valid.shape
    allowed = instance_mask(embeds[:, 1], embeds[:, [0, 2]], valid[:, [0, 2]], topk=1)
    allowed = allowed.reshape(b, m, -1)
    # With top-1, a key query sees at most one instance per other frame.
    assert (allowed.sum(-1) <= t - 1).all() and allowed.any()
    assert not allowed.all(-1).any()  # the mask does hide queries
    cross = weights["cross"]  # (B, heads, M, (T - 1) * M)
    hidden = ~allowed[:, None].expand_as(cross)
    assert torch.count_nonzero(cross[hidden]) == 0  # exactly zero, not merely small
    sums = cross.sum(-1)
    has = allowed.any(-1)[:, None].expand_as(sums)
    torch.testing.assert_close(sums[has], torch.ones_like(sums[has]))
    assert torch.count_nonzero(sums[~has]) == 0
    # Self-attention never reads the key frame's padding slots.
    self_weights = weights["self"]
    hidden = ~valid[:, 1][:, None, None].expand_as(self_weights)
    assert torch.count_nonzero(self_weights[hidden]) == 0


def test_pose_query_selection():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=g)
    queries = torch.randn(3, 7, 4, generator=g)
    poses = torch.rand(3, 7, K, 2, generator=g)
    sel = PoseQuerySelection(threshold=0.0)(logits, {"queries": queries, "poses": poses})
    # Threshold 0 keeps every query (best first).
    assert sel["valid"].all() and sel["index"].shape == (3, 7)
    assert torch.equal(sel["index"].sort(1).values, torch.arange(7).expand(3, 7))
    for b in range(3):
        torch.testing.assert_close(sel["queries"][b], queries[b, sel["index"][b]])
        torch.testing.assert_close(sel["poses"][b], poses[b, sel["index"][b]])
    scores = logits.sigmoid()
    capped = PoseQuerySelection(threshold=0.5, num_queries=4)(logits, {"poses": poses})
    assert capped["index"].shape == (3, 4)
    expected = scores.topk(4, 1).values >= 0.5
    assert torch.equal(capped["valid"], expected)
    assert torch.equal(capped["valid"].sum(1), (scores >= 0.5).sum(1).clamp(max=4))
    # Through the model: threshold 0 selects every one of the N queries of every frame.
    model = build(vepe_cfg(threshold=0.0)).eval()
    with torch.no_grad():
        encoded = model.encode(*model.preprocess([clip(3, 1, 0)]))
    assert encoded.extras["pqs/valid"].shape == (1, 3, 6) and encoded.extras["pqs/valid"].all()


def test_instance_consistency_loss_is_eq5_by_hand():
    # Two clips; clip 0: persons 7 and 8 in frames 0 and 1, person 9 in frame 1 only (no
    # positive: not an anchor, but a negative of the others); clip 1: person 7 (another
    # video's 7) in frames 0 and 2.
    g = torch.Generator().manual_seed(3)
    embeds = torch.randn(7, 4, generator=g, dtype=torch.float64)
    track_ids = torch.tensor([7, 8, 7, 8, 9, 7, 7])
    frames = torch.tensor([0, 0, 1, 1, 1, 0, 2])
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    margin = 0.4
    unit = [e / e.norm() for e in embeds]

    def d(i, j):
        return 1.0 - float(unit[i] @ unit[j])

    pos = {i: [j for j in range(7) if groups[j] == groups[i] and track_ids[j] == track_ids[i]
               and frames[j] != frames[i]] for i in range(7)}  # fmt: skip
    neg = {i: [j for j in range(7) if groups[j] == groups[i] and track_ids[j] != track_ids[i]]
           for i in range(7)}  # fmt: skip
    anchors = [i for i in range(7) if pos[i] and neg[i]]
    assert anchors == [0, 1, 2, 3]  # person 9 and clip 1 (no negative) give no anchor
    hard = [max(0.0, max(d(a, p) for p in pos[a]) - min(d(a, n) for n in neg[a]) + margin)
            for a in anchors]  # fmt: skip
    every = [max(0.0, d(a, p) - d(a, n) + margin) for a in anchors for p in pos[a] for n in neg[a]]
    args = (embeds, track_ids, frames, groups, margin)
    for mining, terms in (("hard", hard), ("all", every)):
        total = instance_consistency_loss(*args, mining=mining, reduction="sum")
        assert total.item() == pytest.approx(sum(terms), abs=1e-9)
        mean = instance_consistency_loss(*args, mining=mining)
        assert mean.item() == pytest.approx(sum(terms) / len(terms), abs=1e-9)
    assert sum(hard) > 0  # the case is not trivially satisfied
    # No triplet: zero, with a gradient path.
    alone = embeds[:2].clone().requires_grad_()
    zero = instance_consistency_loss(alone, track_ids[:2], frames[:2], groups[:2], margin)
    assert zero.item() == 0.0 and zero.requires_grad
    # No matched prediction at all (a batch whose queries were all under the threshold).
    none = torch.zeros(0, 4, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    zero = instance_consistency_loss(none, empty, empty, empty, margin)
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="mining"):
        instance_consistency_loss(*args, mining="semi")


@pytest.mark.parametrize("row", ["stpd", "icm"], ids=["full", "no_stdme_no_stpd"])
def test_streaming_equals_windowed_recomputation(row):
    cfg = vepe_cfg(**ROWS[row])
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = H, W
    model = perturb(build(cfg)).eval()
    pixels = frames(5, 8)
    # A threshold between the random model's scores: selections differ from frame to frame.
    with torch.no_grad():
        scores = model.encode_frames([{"image": f} for f in pixels])
    scores = torch.cat([m.extras["pqs/logits"] for m in scores]).sigmoid()
    model.pqs.threshold = float(scores.flatten().median())
    video = [f.permute(1, 2, 0).numpy() for f in pixels]
    calls = []
    model.proposal_head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    streaming = VideoPosePredictor(cfg, model=model)
    got = streaming.predict_video(video)
    assert sum(calls) == 5  # each frame's spatial phase once
    calls.clear()
    expected = VideoPosePredictor(cfg, cache=False, model=model).predict_video(video)
    assert sum(calls) == 15  # windowed: T frames per output frame
    assert len(got) == len(expected) == 5
    for g, e in zip(got, expected):
        assert g.image_size == (H, W)
        for field in ("pred_keypoints", "scores", "pred_instance_embeds"):
            np.testing.assert_allclose(g.get(field), e.get(field), atol=1e-5, rtol=1e-5)


def test_frozen_spatial_phase():
    image = perturb(build(tiny_cfg(()), ImagePoseTransformer, seed=3))
    model = build(vepe_cfg(FREEZE_SPATIAL=True), seed=4)
    model.load_state_dict(image.state_dict(), strict=False)
    perturb(model.stpe, seed=5)
    spatial = [model.backbone, model.encoder, model.proposal_head, model.pose_decoder]
    assert all(not p.requires_grad for m in spatial for p in m.parameters())
    assert not model.level_embed.requires_grad
    model.train()
    assert all(not m.training for m in spatial) and model.stpe.training
    losses = model([clip(3, 1, 0)])
    assert losses and all(k.startswith(("loss_class_temporal", "loss_rle_temporal"))
                          or k == "loss_instance" for k in losses)  # fmt: skip
    sum(losses.values()).backward()
    assert grad_sum(model.stpe) > 0 and grad_sum(model.joint_decoder) > 0
    with pytest.raises(ValueError, match="nothing to train"):
        build(vepe_cfg(FREEZE_SPATIAL=True, **ROWS["baseline"]))


def test_bad_settings_and_inputs_name_the_problem():
    with pytest.raises(ValueError, match="USE_ICM needs"):
        build(vepe_cfg(USE_STPE=False, USE_ICM=True))
    with pytest.raises(ValueError, match="ICL_MINING"):
        build(vepe_cfg(ICL_MINING="semi"))
    with pytest.raises(ValueError, match="PQS_THRESHOLD"):
        build(vepe_cfg(threshold=1.5))
    model = build(vepe_cfg()).eval()
    with pytest.raises(ValueError, match="T=3"):
        model([clip(5, 2, 0)])
    bad = clip(3, 1, 0)
    bad["labeled"] = [True, True]
    with pytest.raises(ValueError, match="labeled"):
        model.train()(([bad]))
    model.eval()
    # Frames another model encoded (no spatial stage in their extras) are refused.
    pave = build(tiny_cfg((-1, 1))).eval()
    with torch.no_grad():
        foreign = pave.encode_frames([{"image": f} for f in frames(3, 0)])
    with pytest.raises(ValueError, match="another model"):
        model.decode([foreign])


@pytest.mark.parametrize(
    "name, backbone", [("vepe_hrnet_w48.yaml", "build_timm_pose_backbone"),
                       ("vepe_r50.yaml", "build_resnet_pose_backbone")]  # fmt: skip
)
def test_paper_configs(name, backbone):
    from vpose_d2.data.clip import clip_offsets

    cfg = get_vpose_cfg()
    merge_config_file(cfg, str(CONFIG_DIR / name))
    assert cfg.MODEL.META_ARCHITECTURE == "VEPE" and cfg.MODEL.BACKBONE.NAME == backbone
    offsets, key = clip_offsets(cfg.INPUT.CLIP.OFFSETS)
    assert (len(offsets), key) == (3, 1)
    s = cfg.SOLVER
    assert s.OPTIMIZER == "ADAMW" and s.BASE_LR == pytest.approx(2e-4)
    assert s.WEIGHT_DECAY == pytest.approx(1e-4) and s.IMS_PER_BATCH == 8
    # 20 epochs of PoseTrack2017 train (~7,500 labeled key frames) at batch 8.
    assert round(s.MAX_ITER / (7500 / 8)) == 20
    assert cfg.MODEL.VPOSE.NUM_QUERIES == 100
    assert cfg.INPUT.MIN_SIZE_TEST == 800 and cfg.INPUT.MAX_SIZE_TEST == 1333
    e = cfg.MODEL.VEPE
    assert e.FREEZE_SPATIAL and e.PQS_THRESHOLD == pytest.approx(0.3) and e.STPD_LAYERS == 3
    assert all((e.USE_STPE, e.USE_ICM, e.USE_STDME, e.USE_STPD))
    pave = get_vpose_cfg()
    merge_config_file(pave, str(CONFIG_DIR / name.replace("vepe", "pave")))
    # The same data, clip, input scales and backbone as PAVE-Net's config of that backbone.
    for key_ in ("DATASETS.TRAIN", "DATASETS.TEST", "INPUT.CLIP.OFFSETS", "INPUT.MIN_SIZE_TRAIN",
                 "INPUT.MAX_SIZE_TRAIN", "MODEL.BACKBONE.NAME", "MODEL.RESNETS.DEPTH",
                 "MODEL.TIMM.NAME", "MODEL.TIMM.OUT_INDICES"):  # fmt: skip
        a, b = cfg, pave
        for part in key_.split("."):
            a, b = a[part], b[part]
        assert a == b, key_


def test_quick_config_matches_the_other_quick_models():
    cfg = get_vpose_cfg()
    merge_config_file(cfg, str(CONFIG_DIR / "quick" / "vepe_synthetic.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "VEPE" and not cfg.MODEL.VEPE.FREEZE_SPATIAL
    for other in ("petr_synthetic.yaml", "pave_synthetic.yaml"):
        ref = get_vpose_cfg()
        merge_config_file(ref, str(CONFIG_DIR / "quick" / other))
        for key_ in ("SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR",
                     "SOLVER.STEPS", "MODEL.RESNETS.DEPTH", "MODEL.VPOSE.HIDDEN_DIM",
                     "MODEL.VPOSE.NUM_QUERIES", "MODEL.VPOSE.DEC_LAYERS", "INPUT.MIN_SIZE_TRAIN",
                     "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "DATASETS.TRAIN",
                     "DATASETS.TEST"):  # fmt: skip
            a, b = cfg, ref
            for part in key_.split("."):
                a, b = a[part], b[part]
            assert a == b, (other, key_)
    assert list(cfg.INPUT.CLIP.OFFSETS) == [-1, 1]


@pytest.fixture
def one_thread():
    # One intra-op thread: on a shared 2-core machine two threads spin against each other.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_overfits_a_clip(one_thread):
    """20 steps on one fixed clip: the total loss and the temporal decoder's fall clearly (a
    cheaper model: no joint decoder, 2 STPD layers; threshold 0, so that the temporal stage has
    queries from the first step)."""
    cfg = vepe_cfg(STPD_LAYERS=2)
    cfg.MODEL.VPOSE.JOINT_DEC_LAYERS = 0
    model = build(cfg, seed=0).train()
    inputs = [clip(3, 1, 0)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    total, temporal = [], []
    for _ in range(20):
        losses = model(inputs)
        loss = sum(losses.values())
        total.append(loss.item())
        temporal.append(losses["loss_rle_temporal_dec1"].item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    # Means of the first and last three steps (a step can jump when the matching changes).
    assert np.mean(total[-3:]) < 0.4 * np.mean(total[:3]), total
    assert np.mean(temporal[-3:]) < np.mean(temporal[:3]) - 1.0, temporal


def test_instance_head_norm_keeps_nearly_equal_queries_apart():
    """The BatchNorm head (MODEL.VEPE.INSTANCE_HEAD_NORM "BN") standardises each channel over
    the valid slots: head outputs that share one dominant component (the collapse the quick
    runs fell into without it: cosine 0.999 between all embeddings) come out spread, padding
    slots neither enter the statistics nor get an embedding, and eval mode is per row."""
    torch.manual_seed(0)
    kw = dict(num_queries=6, num_keypoints=K, embed_dim=16, out_dim=E, num_levels=2)
    with_bn = InstanceQueries(**kw, head_norm="BN").train()
    without = InstanceQueries(**kw, head_norm="")
    common = torch.randn(E) * 10
    z = common + 0.01 * torch.randn(2, 6, E)  # (B, M, E): one direction dominates every row
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False

    def mean_cos(x):
        x = torch.nn.functional.normalize(x[valid], dim=-1)
        s = x @ x.t()
        return s[~torch.eye(len(x), dtype=torch.bool)].mean().item()

    assert mean_cos(without._normalize_head(z, valid)) > 0.99
    out = with_bn._normalize_head(z, valid)
    assert abs(mean_cos(out)) < 0.3
    assert torch.all(out[~valid] == 0)
    # Padding rows do not enter the statistics: changing them changes nothing.
    z2 = z.clone()
    z2[1, 4:] = 1e3
    torch.testing.assert_close(with_bn._normalize_head(z2, valid), out)
    # Eval: running statistics, so a row's embedding does not depend on the other rows.
    with_bn.eval()
    one = with_bn._normalize_head(z[:1, :1], valid[:1, :1])
    torch.testing.assert_close(one[0, 0], with_bn._normalize_head(z, valid)[0, 0])
    with pytest.raises(ValueError, match="INSTANCE_HEAD_NORM"):
        InstanceQueries(**kw, head_norm="LN")
