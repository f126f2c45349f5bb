"""vpose_d2.tracking: the assignment, track ages and scores, the pose and embedding trackers,
a crossing, the registry and the config."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import numpy as np
import pytest
import torch
from detectron2.structures import Instances

from vpose_d2.config import get_vpose_cfg
from vpose_d2.tracking import (
    TRACKER_REGISTRY,
    AutoTracker,
    EmbeddingTracker,
    PoseTracker,
    build_tracker,
    match_tracks,
)

# A standing person 100 px tall, feet at y = 0, in the PoseTrack joint order: nose, head
# bottom, head top, shoulders, elbows, wrists, hips, knees, ankles (left, right).
# fmt: off
_TEMPLATE = np.array([
    [0, -88], [0, -80], [0, -100], [-12, -78], [12, -78], [-16, -60], [16, -60],
    [-18, -44], [18, -44], [-8, -48], [8, -48], [-9, -24], [9, -24], [-10, 0], [10, 0],
], dtype=np.float64)
# fmt: on


def _pose(x: float, y: float = 150.0) -> np.ndarray:
    """(15, 3) the template at (x, y), every joint scored 0.9."""
    kp = np.ones((15, 3)) * 0.9
    kp[:, :2] = _TEMPLATE + (x, y)
    return kp


def _frame(poses, scores=None, embeds=None) -> Instances:
    inst = Instances((256, 256))
    n = len(poses)
    inst.pred_keypoints = torch.tensor(np.asarray(poses, np.float32).reshape(n, 15, 3))
    inst.scores = torch.tensor(np.full(n, 0.9) if scores is None else scores, dtype=torch.float32)
    if embeds is not None:
        inst.pred_instance_embeds = torch.tensor(np.asarray(embeds, np.float32).reshape(n, -1))
    return inst


def _ids(tracker, *args, **kwargs):
    return tracker(_frame(*args, **kwargs)).pred_track_ids.tolist()


def test_match_tracks_most_matches_first_then_similarity():
    sim = np.array([[0.9, 0.8], [0.85, 0.1]])
    # Greedy (0.9 first) would leave track 1 without an allowed partner; two matches win.
    rows, cols = match_tracks(sim, 0.5)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    rows, cols = match_tracks(sim, 0.86)
    assert rows.tolist() == [0] and cols.tolist() == [0]
    rows, cols = match_tracks(np.array([[0.2, np.nan]]), 0.5)
    assert rows.size == 0 and cols.size == 0
    rows, cols = match_tracks(np.zeros((0, 3)), 0.5)
    assert rows.size == 0


def test_ids_scores_ages_and_reset():
    tracker = PoseTracker(min_score=0.5, max_age=2)
    # A low-score person is never tracked, not even where a track is free for it.
    assert _ids(tracker, [_pose(50), _pose(150)], scores=[0.9, 0.2]) == [0, -1]
    assert _ids(tracker, [_pose(152), _pose(52)], scores=[0.9, 0.3]) == [1, -1]
    assert _ids(tracker, [_pose(54), _pose(154)]) == [0, 1]
    # Person 0 is missed for max_age frames: its track waits ...
    for _ in range(2):
        assert _ids(tracker, [_pose(156)]) == [1]
    assert _ids(tracker, [_pose(56), _pose(156)]) == [0, 1]
    # ... one frame more, and it has ended: the person gets a new id (ids are never reused).
    for _ in range(3):
        assert _ids(tracker, [_pose(156)]) == [1]
    assert _ids(tracker, [_pose(56), _pose(156)]) == [2, 1]
    # An empty frame ages every track; the field is there (and empty).
    out = tracker(_frame(np.zeros((0, 15, 3))))
    assert out.pred_track_ids.shape == (0,) and out.pred_track_ids.dtype == torch.int64
    tracker.reset()
    assert tracker.num_live_tracks == 0
    assert _ids(tracker, [_pose(156)]) == [0]


def test_pose_tracker_threshold_and_absent_joints():
    tracker = PoseTracker(min_score=0.0, oks_thresh=0.5)
    assert _ids(tracker, [_pose(50)]) == [0]
    # Far beyond the threshold: a new track, not the free old one.
    assert _ids(tracker, [_pose(200)]) == [1]
    tracker = PoseTracker(min_score=0.0)
    far = _pose(120)
    far[:8] = (np.nan, np.nan, 0.0)  # head and arms not predicted (or outside the image)
    assert _ids(tracker, [_pose(50), _pose(120)]) == [0, 1]
    assert _ids(tracker, [far, _pose(52)]) == [1, 0]
    with pytest.raises(ValueError, match="17 joints but 15 OKS sigmas"):
        PoseTracker(oks_sigmas=[0.08] * 15)(_frame_17())


def _frame_17() -> Instances:
    inst = Instances((64, 64))
    inst.pred_keypoints = torch.rand(2, 17, 3) * 60
    inst.scores = torch.ones(2)
    return inst


def _crossing(kind: str):
    """Two people of the same size and pose who cross: (frames of (A's pose, B's pose) or None
    where occluded, the frames in which each is detected)."""
    if kind == "straight":
        # They cross between two processed frames at constant speed: afterwards each is
        # nearer to where the other was.
        xs = [(85 + 12 * t, 115 - 12 * t) for t in range(5)]
    else:
        # They cross behind an occluder (two frames without detections) and come out faster
        # than they went in: where each was and where it was heading are both nearer the
        # other.
        xs = [(40, 120), (50, 110), None, None, (97, 63), (107, 53), (117, 43)]
    return xs


@pytest.mark.parametrize(
    "kind, pose_tracker",
    [
        ("straight", PoseTracker(min_score=0.0, motion=False)),
        ("occluded", PoseTracker(min_score=0.0)),
    ],
)
def test_embedding_tracker_keeps_ids_through_a_crossing_where_the_pose_tracker_swaps(
    kind, pose_tracker
):
    rng = np.random.default_rng(0)
    identity = rng.standard_normal((2, 32))  # A's and B's appearance
    emb_tracker = EmbeddingTracker(min_score=0.0)
    pose_ids, emb_ids = [], []  # per processed frame: (id of A, id of B)
    for t, xs in enumerate(_crossing(kind)):
        if xs is None:  # nobody detected
            for tracker in (pose_tracker, emb_tracker):
                tracker(_frame(np.zeros((0, 15, 3))))
            continue
        order = [1, 0] if t % 2 else [0, 1]  # the model's output order means nothing
        poses = [_pose(xs[i]) for i in order]
        embeds = [identity[i] + 0.5 * rng.standard_normal(32) for i in order]
        back = np.argsort(order)  # position of A, then B, in the frame
        p = np.asarray(_ids(pose_tracker, poses))[back]
        e = np.asarray(_ids(emb_tracker, poses, embeds=embeds))[back]
        pose_ids.append(tuple(p.tolist()))
        emb_ids.append(tuple(e.tolist()))
    assert len(set(emb_ids)) == 1 and -1 not in emb_ids[0], emb_ids
    # The pose tracker keeps both people tracked, but with their ids exchanged.
    assert pose_ids[0] == (0, 1) and pose_ids[-1] == (1, 0), pose_ids


def test_embedding_tracker_moving_average_threshold_and_errors():
    e1, e2 = np.eye(4)[0], np.eye(4)[1]
    last = EmbeddingTracker(min_score=0.0, momentum=0.0, sim_thresh=0.6)
    ema = EmbeddingTracker(min_score=0.0, momentum=0.5, sim_thresh=0.6)
    for tracker in (last, ema):
        assert _ids(tracker, [_pose(50)], embeds=[e1]) == [0]
        assert _ids(tracker, [_pose(50)], embeds=[(e1 + e2) / 2]) == [0]  # cos 0.71
    # The last embedding is (e1 + e2) / 2: e2 is close (cos 0.71) to it; the average of e1
    # and (e1 + e2) / 2 is further from e2 (cos 0.38), so that track ends and e2 starts one.
    assert _ids(last, [_pose(50)], embeds=[e2]) == [0]
    assert _ids(ema, [_pose(50)], embeds=[e2]) == [1]
    with pytest.raises(KeyError, match="pred_instance_embeds.*PoseTracker"):
        EmbeddingTracker()(_frame([_pose(50)]))
    with pytest.raises(ValueError, match="momentum"):
        EmbeddingTracker(momentum=1.0)
    tracker = EmbeddingTracker(min_score=0.0)
    tracker(_frame([_pose(50)], embeds=[np.ones(4)]))
    with pytest.raises(ValueError, match="embeddings of size 8, but the video's earlier"):
        tracker(_frame([_pose(50)], embeds=[np.ones(8)]))


def test_auto_tracker_picks_by_the_outputs_per_video():
    tracker = AutoTracker(
        pose_tracker=PoseTracker(min_score=0.0), embedding_tracker=EmbeddingTracker(min_score=0.0)
    )
    assert _ids(tracker, []) == [] and tracker.active is None  # no person yet: no choice
    assert _ids(tracker, [_pose(50)], embeds=[np.ones(4)]) == [0]
    assert tracker.active is tracker.embedding_tracker
    tracker.reset()
    assert _ids(tracker, [_pose(50)]) == [0]
    assert tracker.active is tracker.pose_tracker


def test_build_tracker_from_config():
    cfg = get_vpose_cfg()
    assert set(cfg.MODEL.TRACKER) == {
        "NAME", "MIN_SCORE", "MAX_AGE", "OKS_THRESH", "POSE_MOTION", "EMBED_SIM_THRESH",
        "EMBED_MOMENTUM",
    }  # fmt: skip
    cfg.MODEL.VPOSE.NUM_KEYPOINTS = 15
    cfg.MODEL.TRACKER.MIN_SCORE = 0.4
    cfg.MODEL.TRACKER.EMBED_MOMENTUM = 0.25
    auto = build_tracker(cfg)
    assert isinstance(auto, AutoTracker) and auto.min_score == 0.4
    assert auto.embedding_tracker.momentum == 0.25
    assert len(auto.pose_tracker._sigmas) == 15
    for name, cls in (("PoseTracker", PoseTracker), ("EmbeddingTracker", EmbeddingTracker)):
        cfg.MODEL.TRACKER.NAME = name
        assert type(build_tracker(cfg)) is cls
    cfg.MODEL.TRACKER.NAME = "none"
    assert build_tracker(cfg) is None
    cfg.MODEL.TRACKER.NAME = "OKSTracker"
    with pytest.raises(KeyError, match="'OKSTracker': no such tracker; known: 'auto', 'none'"):
        build_tracker(cfg)
    assert "PoseTracker" in TRACKER_REGISTRY
