"""ClipDatasetMapper: output contract, one augmentation draw per clip, flip, edges, errors."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Instances

from vpose_d2.config import get_vpose_cfg
from vpose_d2.data import ClipDatasetMapper, clip_samples
from vpose_d2.data.build import build_clip_test_loader, build_clip_train_loader
from vpose_d2.data.clip_mapper import PhotometricTransform
from vpose_d2.data.datasets import make_synthetic_posetrack, register_coco_keypoints
from vpose_d2.data.datasets.synthetic import DEFAULT_SYNTHETIC_ROOT, register_synthetic_posetrack
from vpose_d2.data.keypoints import POSETRACK, flip_indices

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 96


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = make_synthetic_posetrack(
        tmp_path_factory.mktemp("syn") / "s", seed=1, num_train_videos=2, num_val_videos=1,
        frames_per_video=6, size=SIZE, min_persons=2, max_persons=3, min_person_height=40,
        max_person_height=80,
    )  # fmt: skip
    register_synthetic_posetrack(root, name_prefix="mapper_syn")
    return root


def _cfg(**clip):
    cfg = get_vpose_cfg()
    cfg.DATASETS.TRAIN = ("mapper_syn_train",)
    cfg.DATASETS.TEST = ("mapper_syn_val",)
    cfg.INPUT.MIN_SIZE_TRAIN = (SIZE,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 4 * SIZE
    cfg.INPUT.MIN_SIZE_TEST = 2 * SIZE
    cfg.INPUT.MAX_SIZE_TEST = 4 * SIZE
    cfg.INPUT.CLIP.FLIP_PROB = 0.0
    cfg.DATALOADER.NUM_WORKERS = 0
    for k, v in clip.items():
        cfg.INPUT.CLIP[k] = v
    return cfg


def _check_clip(clip, T, K=15):
    img = clip["image"]
    assert img.dtype == torch.uint8 and img.ndim == 4 and img.shape[:2] == (T, 3)
    H, W = img.shape[2:]
    assert len(clip["instances"]) == T == len(clip["labeled"]) == len(clip["frame_ids"])
    assert len(clip["file_names"]) == T and 0 <= clip["key_index"] < T
    assert clip["key_frame_id"] == clip["frame_ids"][clip["key_index"]]
    for inst in clip["instances"]:
        assert isinstance(inst, Instances) and inst.image_size == (H, W)
        n = len(inst)
        assert inst.gt_keypoints.shape == (n, K, 3) and inst.gt_keypoints.dtype == torch.float32
        assert inst.gt_boxes.tensor.shape == (n, 4) and inst.gt_classes.dtype == torch.int64
        assert inst.gt_track_ids.dtype == torch.int64 and inst.gt_areas.shape == (n,)
        assert (inst.gt_classes == 0).all()


def test_contract_edges_and_offsets(synth):
    videos = DatasetCatalog.get("mapper_syn_train")
    mapper = ClipDatasetMapper(_cfg(), True)
    samples = clip_samples(videos)
    assert len(samples) == 12 and samples[0]["video"] is samples[1]["video"]
    first = mapper(samples[0])
    _check_clip(first, 3)
    assert first["frame_ids"] == [0, 0, 1] and first["key_index"] == 1
    assert torch.equal(first["image"][0], first["image"][1])  # edge frame repeated
    assert first["labeled"] == [True] * 3 and first["video_id"] == videos[0]["video_id"]
    assert (first["height"], first["width"]) == (SIZE, SIZE)
    last = mapper(samples[5])
    assert last["frame_ids"] == [4, 5, 5]
    ids = [int(t) for t in first["instances"][1].gt_track_ids]
    assert ids == sorted(set(ids)) and len(ids) >= 2
    wide = ClipDatasetMapper(_cfg(OFFSETS=[-2, -1, 1, 2]), True)(samples[1])
    _check_clip(wide, 5)
    assert wide["frame_ids"] == [0, 0, 1, 2, 3] and wide["key_index"] == 2


def test_unlabeled_frames_and_test_mode(synth):
    cfg = _cfg()
    val = DatasetCatalog.get("mapper_syn_val")
    mapper = ClipDatasetMapper(cfg, False, dataset_names=["mapper_syn_val"])
    clip = mapper({"video": val[0], "key": 4})
    _check_clip(clip, 3)
    assert clip["labeled"] == [False, True, False]
    assert len(clip["instances"][0]) == 0 and len(clip["instances"][1]) > 0
    assert tuple(clip["image"].shape[2:]) == (2 * SIZE, 2 * SIZE)  # MIN_SIZE_TEST
    persons = val[0]["frames"][4]["persons"]
    want = torch.tensor([p["keypoints"] for p in persons], dtype=torch.float32).view(-1, 15, 3)
    got = clip["instances"][1].gt_keypoints
    torch.testing.assert_close(got[..., :2], want[..., :2] * 2)  # coordinates scale with the image
    assert torch.equal(
        clip["instances"][1].gt_track_ids, torch.tensor([p["track_id"] for p in persons])
    )
    loader = build_clip_test_loader(cfg, "mapper_syn_val")
    order = [(b[0]["video_id"], b[0]["key_frame_id"]) for b in loader]
    assert order == [(val[0]["video_id"], k) for k in (0, 4)]


def test_one_draw_per_clip_static_scene(synth):
    """Three copies of one frame stay identical through random crop/resize/flip/colour."""
    video = copy.deepcopy(DatasetCatalog.get("mapper_syn_train")[0])
    video["frames"] = [dict(video["frames"][2], frame_index=i) for i in range(3)]
    cfg = _cfg(FLIP_PROB=0.5, PHOTOMETRIC=0.4)
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 160)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "relative_range"
    cfg.INPUT.CROP.SIZE = [0.6, 0.6]
    mapper = ClipDatasetMapper(cfg, True)
    sizes = set()
    for seed in range(6):
        np.random.seed(seed)
        clip = mapper({"video": video, "key": 1})
        sizes.add(tuple(clip["image"].shape[2:]))
        for t in (0, 2):
            assert torch.equal(clip["image"][t], clip["image"][1])
            a, b = clip["instances"][t], clip["instances"][1]
            assert torch.equal(a.gt_keypoints, b.gt_keypoints)
            assert torch.equal(a.gt_boxes.tensor, b.gt_boxes.tensor)
        kp = clip["instances"][1].gt_keypoints
        H, W = clip["image"].shape[2:]
        vis = kp[..., 2] > 0
        assert (kp[vis][:, 0] <= W).all() and (kp[vis][:, 1] <= H).all()
        assert (kp[~vis][:, :2] == 0).all()  # cropped-away joints: v=0, (0, 0)
    assert len(sizes) > 1  # the draws did differ between clips


def test_flip_swaps_left_right_and_mirrors(synth):
    video = DatasetCatalog.get("mapper_syn_train")[0]
    sample = {"video": video, "key": 2}
    plain = ClipDatasetMapper(_cfg(), True)(sample)
    flipped = ClipDatasetMapper(_cfg(FLIP_PROB=1.0), True)(sample)
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    perm = flip_indices(POSETRACK.names, POSETRACK.flip_map)
    ls = POSETRACK.names.index("left_shoulder")
    assert POSETRACK.names[perm[ls]] == "right_shoulder"
    for a, b in zip(plain["instances"], flipped["instances"]):
        ka, kb = a.gt_keypoints, b.gt_keypoints
        assert torch.equal(a.gt_track_ids, b.gt_track_ids)
        vis = ka[..., 2] > 0
        expect_x = SIZE - ka[..., 0]
        # the joint named left after the flip is the mirrored right one, and vice versa
        torch.testing.assert_close(kb[:, perm, 0][vis], expect_x[vis])
        torch.testing.assert_close(kb[:, perm, 1][vis], ka[..., 1][vis])
        torch.testing.assert_close(b.gt_boxes.tensor[:, 0], SIZE - a.gt_boxes.tensor[:, 2])


def test_missing_frame_names_the_file(synth, tmp_path):
    video = copy.deepcopy(DatasetCatalog.get("mapper_syn_train")[0])
    gone = str(tmp_path / "gone" / "000001.jpg")
    video["frames"][1]["file_name"] = gone
    mapper = ClipDatasetMapper(_cfg(), True)
    with pytest.raises(FileNotFoundError, match=rf"{video['video_id']}.*frame 1.*{gone}"):
        mapper({"video": video, "key": 0})
    video["frames"][1]["persons"][0]["keypoints"] = [1.0] * 30
    video["frames"][1]["file_name"] = video["frames"][0]["file_name"]
    with pytest.raises(ValueError, match="frame 1.*30 keypoint values"):
        mapper({"video": video, "key": 1})


def test_photometric_is_per_frame_and_identity_at_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert (
        np.abs(PhotometricTransform(1.0, 1.0, 1.0, False).apply_image(a).astype(int) - a).max() <= 1
    )
    bright = PhotometricTransform(1.3, 1.0, 1.0, False).apply_image(a).astype(int)
    assert np.abs(bright - np.clip(a * 1.3, 0, 255)).max() <= 1
    contrast = PhotometricTransform(1.0, 0.5, 1.0, False).apply_image(a).astype(int)
    assert np.abs(contrast - (0.5 * a + 0.5 * a.mean())).max() <= 1
    gray = PhotometricTransform(1.0, 1.0, 0.0, False).apply_image(a)
    assert (gray.max(-1).astype(int) - gray.min(-1)).max() <= 1  # saturation 0 -> gray


@pytest.mark.skipif(not (DATA / "coco" / "test_coco.json").is_file(), reason=f"no {DATA}/coco")
def test_coco_pseudo_video_rotates_neighbours_rigidly():
    register_coco_keypoints("mapper_coco", DATA / "coco" / "test_coco.json", DATA / "coco")
    cfg = _cfg(PSEUDO_VIDEO_MAX_ROTATION=5)
    cfg.DATASETS.TRAIN = ("mapper_coco",)
    cfg.INPUT.MIN_SIZE_TRAIN = (200,)
    mapper = ClipDatasetMapper(cfg, True)
    video = DatasetCatalog.get("mapper_coco")[0]
    assert mapper.num_keypoints == 17
    rotated = 0
    for seed in range(4):
        np.random.seed(seed)
        clip = mapper({"video": video, "key": 0})
        _check_clip(clip, 3, K=17)
        assert clip["labeled"] == [True] * 3 and clip["frame_ids"] == [0, 0, 0]
        k = [inst.gt_keypoints[0] for inst in clip["instances"]]
        both = (k[0][:, 2] > 0) & (k[1][:, 2] > 0) & (k[2][:, 2] > 0)
        i, j = torch.nonzero(both)[[0, -1], 0]
        dists = [torch.dist(kk[i, :2], kk[j, :2]) for kk in k]
        torch.testing.assert_close(dists[0], dists[1], rtol=1e-4, atol=1e-3)  # rigid
        torch.testing.assert_close(dists[2], dists[1], rtol=1e-4, atol=1e-3)
        v = [kk[j, :2] - kk[i, :2] for kk in k]
        ang = [math.degrees(math.atan2(float(x[1]), float(x[0]))) for x in v]
        d0, d2 = ang[0] - ang[1], ang[2] - ang[1]
        assert abs(d0 + d2) < 1e-2 and abs(d0) <= 5.01  # +n and -n degrees
        rotated += abs(d0) > 0.5
    assert rotated > 0


def test_train_loader_batches(synth):
    cfg = _cfg()
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.DATASETS.SYNTHETIC_ROOT = str(synth)  # re-points synthetic_posetrack_* at it
    cfg.DATASETS.TRAIN = ("mapper_syn_train", "synthetic_posetrack_train")
    try:
        batch = next(iter(build_clip_train_loader(cfg)))
        assert len(batch) == 2
        for clip in batch:
            _check_clip(clip, 3)
        cfg.DATASETS.TRAIN = ("nope",)
        with pytest.raises(KeyError, match=r"'nope' is not registered.*posetrack18_train"):
            build_clip_train_loader(cfg)
    finally:
        register_synthetic_posetrack(DEFAULT_SYNTHETIC_ROOT)
