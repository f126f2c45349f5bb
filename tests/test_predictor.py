"""VideoPosePredictor: one result per frame in order, edge frames repeated like the clip
mapper, each frame encoded once, bounded memory, and streaming == windowed recomputation."""

from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
import torch

import vpose_d2  # noqa: F401  isort: skip  (compat shims before Detectron2's structures)
from common import build, perturb, tiny_cfg
from detectron2.structures import Boxes, Instances
from torch import nn

from vpose_d2.config import get_vpose_cfg
from vpose_d2.data.clip import clip_offsets, window_indices
from vpose_d2.engine.predictor import VideoPosePredictor


def test_window_indices_repeat_edges():
    offsets = [-2, -1, 0, 1, 2]
    assert window_indices(0, offsets, 10) == [0, 0, 0, 1, 2]
    assert window_indices(5, offsets, 10) == [3, 4, 5, 6, 7]
    assert window_indices(9, offsets, 10) == [7, 8, 9, 9, 9]
    assert window_indices(0, offsets, 1) == [0, 0, 0, 0, 0]


class _FrameIdModel(nn.Module):
    """A stand-in video model whose output says which frames the window held.

    Frame i of the test video is filled with the value i, so a frame's "encoder memory" is
    that value; every output carries the window's frame values as its keypoint x.
    """

    def __init__(self, offsets=(0,)):
        super().__init__()
        self.frame_offsets = clip_offsets(offsets)[0]
        self.encoded: List[int] = []
        self.alive = 0
        self.max_alive = 0

    class Memory:
        def __init__(self, owner: "_FrameIdModel", value: int):
            self.owner, self.value = owner, value
            owner.alive += 1
            owner.max_alive = max(owner.max_alive, owner.alive)

        def __del__(self):
            self.owner.alive -= 1

    def encode_frames(self, frames: List[Dict], cache_values=True) -> List["_FrameIdModel.Memory"]:
        values = [int(f["image"][0, 0, 0]) for f in frames]
        self.encoded.extend(values)
        return [self.Memory(self, v) for v in values]

    def _instances(self, values: List[int], key_index: int, height: int, width: int):
        inst = Instances((height, width))
        kpts = torch.zeros(1, len(values), 3)
        kpts[0, :, 0] = torch.tensor(values, dtype=torch.float32)
        kpts[0, key_index, 2] = 1.0
        inst.pred_keypoints = kpts
        inst.scores = torch.ones(1)
        inst.pred_boxes = Boxes(torch.zeros(1, 4))
        inst.pred_classes = torch.zeros(1, dtype=torch.int64)
        return inst

    def decode(self, windows, output_sizes):
        ((height, width),) = output_sizes
        key_index = self.frame_offsets.index(0)
        return [self._instances([m.value for m in windows[0]], key_index, height, width)]

    def forward(self, clips):
        out = []
        for clip in clips:
            images = clip["image"] if clip["image"].dim() == 4 else clip["image"][None]
            values = [int(im[0, 0, 0]) for im in images]
            out.append(
                {
                    "instances": self._instances(
                        values, clip["key_index"], clip["height"], clip["width"]
                    )
                }
            )
        return out


def _cfg(offsets):
    cfg = get_vpose_cfg()
    cfg.INPUT.CLIP.OFFSETS = offsets
    cfg.INPUT.MIN_SIZE_TEST = 16
    cfg.INPUT.MAX_SIZE_TEST = 32
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    # The stand-in's poses are frame ids, not people: nothing to track.
    cfg.MODEL.TRACKER.NAME = "none"
    return cfg


def _video(n: int, height: int = 12, width: int = 20) -> List[np.ndarray]:
    return [np.full((height, width, 3), i, dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("offsets", [[-1, 1], [-2, -1, 1, 2], [1, -1], [-1], [2]])
@pytest.mark.parametrize("num_frames", [1, 2, 7])
@pytest.mark.parametrize("cache", [True, False])
def test_windows_match_the_clip_mapper(offsets, num_frames, cache):
    model = _FrameIdModel(offsets)
    predictor = VideoPosePredictor(_cfg(offsets), model=model, cache=cache)
    order = sorted(set(offsets) | {0})
    assert predictor.offsets == order and predictor.window_size == len(order)

    def frames():  # a generator: the predictor cannot know the length in advance
        yield from _video(num_frames)

    results = list(predictor(frames()))
    assert [r.index for r in results] == list(range(num_frames))
    for key, frame, inst in results:
        assert isinstance(frame, np.ndarray) and (frame == key).all()  # its own frame, given back
        assert inst.image_size == (12, 20)
        seen = inst.pred_keypoints[0, :, 0].long().tolist()
        assert seen == window_indices(key, order, num_frames), (key, seen)
        assert inst.pred_keypoints[0, predictor.key_index, 2] == 1.0
    if cache:
        # Each frame encoded exactly once; never more memories alive than one window needs.
        assert model.encoded == list(range(num_frames))
        assert model.max_alive <= order[-1] - order[0] + 2
    else:
        assert model.encoded == []


@pytest.mark.parametrize("cache", [True, False])
def test_each_result_carries_its_frame(cache):
    """The frame comes back with its result (the same array), so a caller drawing on it need
    not hold frames itself, though results lag the input by the window's future frames."""
    from vpose_d2.engine import PredictedFrame

    frames = _video(5)
    read = []

    def stream():
        for frame in frames:
            read.append(len(read))
            yield frame

    predictor = VideoPosePredictor(_cfg([-1, 2]), model=_FrameIdModel([-1, 2]), cache=cache)
    for result in predictor(stream()):
        assert isinstance(result, PredictedFrame)
        assert result.frame is frames[result.index]
        assert len(read) == min(result.index + 3, 5)  # key + 2 future frames read, no more
    assert [len(r) for r in predictor.predict_video(frames)] == [1] * 5


def test_grad_mode_does_not_leak_between_frames():
    predictor = VideoPosePredictor(_cfg([-1, 1]), model=_FrameIdModel([-1, 1]))
    stream = predictor(_video(4))
    next(stream)
    assert torch.is_grad_enabled()  # the caller's code between frames keeps its grad mode
    assert len(list(stream)) == 3


def test_image_model_window_is_one_frame():
    # An image model's clip is its key frame, whatever INPUT.CLIP.OFFSETS says.
    predictor = VideoPosePredictor(_cfg([-1, 1]), model=_FrameIdModel())
    assert predictor.window_size == 1 and predictor.streaming
    results = list(predictor(_video(3)))
    assert [r.instances.pred_keypoints[0, 0, 0].item() for r in results] == [0.0, 1.0, 2.0]


def test_bad_frames_raise_naming_the_frame():
    predictor = VideoPosePredictor(_cfg([-1, 1]), model=_FrameIdModel([-1, 1]))
    frames = _video(3)
    frames[1] = np.zeros((12, 20), dtype=np.uint8)
    with pytest.raises(ValueError, match="Frame 1"):
        list(predictor(frames))
    frames = _video(3)
    frames[2] = np.zeros((14, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="Frame 2"):
        list(predictor(frames))


def test_rgb_input_format_flips_channels():
    cfg = _cfg([])
    cfg.INPUT.FORMAT = "RGB"
    predictor = VideoPosePredictor(cfg, model=_FrameIdModel())
    frame = np.zeros((12, 20, 3), dtype=np.uint8)
    frame[..., 0] = 200  # blue in BGR
    item = predictor.preprocess(frame, 0)
    assert item["image"].shape == (3, 16, 27)
    assert item["image"][2].float().mean() == 200 and item["image"][0].sum() == 0


# ------------------------------------------------------------------------------------------
# The predictor's pixels are the evaluator's
# ------------------------------------------------------------------------------------------
# (INPUT.FORMAT, MIN_SIZE_TEST, MAX_SIZE_TEST): shrinking (area averaging) and enlarging.
RESIZES = [("BGR", 256, 512), ("RGB", 256, 512), ("BGR", 900, 1700), ("RGB", 0, 0)]


def _pixel_cfg(image_format: str, min_size: int, max_size: int):
    cfg = _cfg([-1, 1])
    cfg.INPUT.FORMAT = image_format
    cfg.INPUT.MIN_SIZE_TEST = min_size
    cfg.INPUT.MAX_SIZE_TEST = max_size
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


@pytest.mark.parametrize("image_format,min_size,max_size", RESIZES)
def test_predictor_pixels_equal_the_evaluation_loader(
    shared_data, image_format, min_size, max_size
):
    """A real PoseTrack frame through the test loader (as evaluation reads it) and through
    ``VideoPosePredictor.preprocess`` (BGR in, as the demo reads it): the same uint8 tensor."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vpose_d2.data.build import build_clip_test_loader
    from vpose_d2.data.datasets import register_posetrack

    name = "predictor_pixels_pt18_val"
    if name not in DatasetCatalog.list():
        pt18 = shared_data / "posetrack18"
        register_posetrack(name, pt18 / "annotations" / "val", pt18, version="2018")
    cfg = _pixel_cfg(image_format, min_size, max_size)
    cfg.DATASETS.TEST = (name,)
    (clip,) = next(iter(build_clip_test_loader(cfg, name)))
    key_file = clip["file_names"][clip["key_index"]]
    frame = cv2.imread(key_file, cv2.IMREAD_COLOR)  # BGR, as FrameSource reads a folder
    assert frame is not None, key_file
    if min_size:
        assert min(clip["image"].shape[-2:]) != min(frame.shape[:2]), "the frame must be resized"
    predictor = VideoPosePredictor(cfg, model=_FrameIdModel())
    item = predictor.preprocess(frame, 0)
    expected = clip["image"][clip["key_index"]]
    assert item["image"].dtype == expected.dtype == torch.uint8
    assert item["image"].shape == expected.shape
    assert torch.equal(item["image"], expected)
    assert (item["height"], item["width"]) == (clip["height"], clip["width"])
    assert MetadataCatalog.get(name).keypoint_names  # the loader read the real set


@pytest.mark.parametrize("image_format,min_size,max_size", RESIZES)
def test_predictor_pixels_equal_the_test_mapper_on_noise(
    tmp_path, image_format, min_size, max_size
):
    """The same without the fixtures: a noise frame (where interpolations differ most)."""
    from vpose_d2.data.clip_mapper import ClipDatasetMapper, build_clip_augmentation
    from vpose_d2.data.keypoints import POSETRACK

    cfg = _pixel_cfg(image_format, min_size // 4, max_size // 4)
    frame = np.random.default_rng(0).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "000000.png"), frame)  # lossless: the mapper reads these bytes
    record = {
        "video_id": "noise",
        "frames": [
            {"file_name": str(tmp_path / "000000.png"), "image_id": 1, "frame_id": 1,
             "frame_index": 0, "is_labeled": False, "persons": []}
        ],
    }  # fmt: skip
    mapper = ClipDatasetMapper(
        False,
        augmentations=build_clip_augmentation(cfg, is_train=False),
        image_format=image_format,
        offsets=cfg.INPUT.CLIP.OFFSETS,
        keypoint_names=POSETRACK.names,
    )
    clip = mapper({"video": record, "key": 0})
    item = VideoPosePredictor(cfg, model=_FrameIdModel()).preprocess(frame, 0)
    assert torch.equal(item["image"], clip["image"][clip["key_index"]])


# ------------------------------------------------------------------------------------------
# The real PAVE-Net (tiny, random weights): streaming == windowed recomputation
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_video(tmp_path_factory) -> List[np.ndarray]:
    from vpose_d2.data.datasets.synthetic import make_synthetic_posetrack

    root = make_synthetic_posetrack(
        tmp_path_factory.mktemp("synthetic"), num_train_videos=0, num_val_videos=1,
        frames_per_video=6, size=80, max_persons=2, min_person_height=30, max_person_height=60,
    )  # fmt: skip
    files = sorted((Path(root) / "images" / "val").glob("*/*.jpg"))
    return [cv2.imread(str(f)) for f in files]


@pytest.fixture(scope="module")
def pave_model_cfg():
    cfg = tiny_cfg((-1, 1))
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.TEST.DETECTIONS_PER_IMAGE = 6
    # Output projections and sampling offsets start at zero, which would make the decoders
    # blind to the memories (and the equality below vacuous): perturb every weight.
    return perturb(build(cfg)).eval(), cfg


def test_pave_output_depends_on_the_neighbours(pave_model_cfg, synthetic_video):
    model, cfg = pave_model_cfg
    predictor = VideoPosePredictor(cfg, model=model)
    items = [predictor.preprocess(f, i) for i, f in enumerate(synthetic_video[:3])]
    with torch.no_grad():
        memories = model.encode_frames(items)
        real = model.decode([memories])[0]
        still = model.decode([[memories[1]] * 3])[0]
    assert not torch.allclose(real.pred_keypoints, still.pred_keypoints, atol=1e-3)


@pytest.mark.parametrize("value_cache", [True, False], ids=["values", "no_values"])
@pytest.mark.parametrize("num_frames", [6, 2, 1])
def test_pave_streaming_equals_windowed_recomputation(
    pave_model_cfg, synthetic_video, num_frames, value_cache
):
    model, cfg = pave_model_cfg
    frames = synthetic_video[:num_frames]
    streaming = VideoPosePredictor(cfg, model=model, cache=True, value_cache=value_cache)
    windowed = VideoPosePredictor(cfg, model=model, cache=False)
    assert streaming.streaming and not windowed.streaming and streaming.window_size == 3

    encoded, memories = [], []
    original = model.encode_frames

    def counting_encode(frames_, *args, **kwargs):
        encoded.append(len(frames_))
        out = original(frames_, *args, **kwargs)
        memories.extend(out)
        return out

    projections = []
    hooks = [
        layer.cross_attn.value_proj.register_forward_hook(
            lambda mod, inp, out: projections.append(inp[0].shape[1])  # tokens projected
        )
        for decoder in (model.pose_decoder, model.joint_decoder)
        for layer in decoder.layers
    ]
    model.encode_frames = counting_encode
    try:
        stream = list(streaming(iter(frames)))
    finally:
        del model.encode_frames
        for hook in hooks:
            hook.remove()
    assert sum(encoded) == num_frames  # every frame through the spatial encoder once
    # With the value cache each frame's S tokens are projected once per decoder layer, when
    # encoded; without it every window projects its T * S tokens in every layer.
    assert all(bool(m.values) == value_cache for m in memories)
    s = memories[0].memory.shape[2]
    layers = len(model.pose_decoder.layers) + len(model.joint_decoder.layers)
    assert sum(projections) == layers * num_frames * s * (1 if value_cache else 3)
    window = list(windowed(frames))
    assert [r.index for r in stream] == [r.index for r in window] == list(range(num_frames))
    height, width = frames[0].shape[:2]
    for (_, _, a), (_, _, b) in zip(stream, window):
        assert a.image_size == b.image_size == (height, width)
        assert len(a) == len(b) == 6
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.pred_keypoints, b.pred_keypoints, atol=1e-3, rtol=1e-4)


def test_results_carry_track_ids_that_follow_the_person():
    """The predictor's tracker gives each stream its own ids: a person that moves a little
    per frame keeps its id, a second call starts again at 0."""

    class _WalkingModel(_FrameIdModel):
        def decode(self, windows, output_sizes):
            ((height, width),) = output_sizes
            t = windows[0][self.frame_offsets.index(0)].value
            # Two persons far apart, listed in an order that changes every frame.
            base = torch.tensor([[10.0 + 0.5 * t, 10.0], [200.0 - 0.5 * t, 120.0]])
            order = [t % 2, 1 - t % 2]
            kpts = torch.zeros(2, 5, 3)
            kpts[..., :2] = base[order][:, None] + torch.arange(5.0)[None, :, None] * 20.0
            kpts[..., 2] = 1.0
            inst = Instances((height, width))
            inst.pred_keypoints, inst.scores = kpts, torch.tensor([0.9, 0.8])
            inst.pred_boxes = Boxes(torch.zeros(2, 4))
            inst.pred_classes = torch.zeros(2, dtype=torch.int64)
            return [inst]

    cfg = _cfg([])
    cfg.MODEL.VPOSE.NUM_KEYPOINTS = 5
    cfg.MODEL.VPOSE.OKS_SIGMAS = [0.08] * 5
    cfg.MODEL.TRACKER.NAME = "auto"
    predictor = VideoPosePredictor(cfg, model=_WalkingModel())
    assert predictor.track
    for _ in range(2):
        ids = [r.instances.pred_track_ids.tolist() for r in predictor(_video(4))]
        # Frame t lists the persons in order [t % 2, 1 - t % 2]: the ids swap with the order.
        assert ids == [[0, 1], [1, 0], [0, 1], [1, 0]]
    cfg.MODEL.TRACKER.NAME = "none"
    untracked = VideoPosePredictor(cfg, model=_WalkingModel())
    assert not untracked.track
    assert not any(r.instances.has("pred_track_ids") for r in untracked(_video(2)))
