"""demo/video_demo.py end to end: a synthetic frame folder, the real PoseTrack clip (frames and
mp4), unreadable input and unwritable output, and the model's track ids in the json. A tiny
randomly initialised model is enough for the mechanics."""

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]

# A tiny model on top of the CPU quick config: random weights, few queries, small input.
TINY_OPTS = [
    "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.VPOSE.HIDDEN_DIM", "64", "MODEL.VPOSE.NHEADS", "2", "MODEL.VPOSE.DIM_FEEDFORWARD",
    "64", "MODEL.VPOSE.ENC_LAYERS", "1", "MODEL.VPOSE.DEC_LAYERS", "1",
    "MODEL.VPOSE.JOINT_DEC_LAYERS", "1", "MODEL.VPOSE.NUM_QUERIES", "8",
    "MODEL.VPOSE.NUM_JOINT_PERSONS_TEST", "4", "MODEL.VPOSE.REFINE_HIDDEN_DIM", "32",
    "TEST.DETECTIONS_PER_IMAGE", "5", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "DATASETS.TRAIN", "('synthetic_posetrack_train',)",
    "DATASETS.TEST", "('synthetic_posetrack_val',)",
]  # fmt: skip


def _config_file() -> str:
    pave = REPO / "configs" / "quick" / "pave_synthetic.yaml"
    return str(pave if pave.exists() else REPO / "configs" / "petr_r50.yaml")


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/video_demo.py")


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory) -> Path:
    from vpose_d2.data.datasets.synthetic import make_synthetic_posetrack

    root = make_synthetic_posetrack(
        tmp_path_factory.mktemp("synthetic"), num_train_videos=0, num_val_videos=1,
        frames_per_video=5, size=96, max_persons=2, min_person_height=40, max_person_height=80,
    )  # fmt: skip
    folders = sorted(p for p in (Path(root) / "images" / "val").iterdir() if p.is_dir())
    assert folders, "the generator wrote no val video"
    return folders[0]


def _run(demo, input_path: Path, output: Path, *extra: str):
    argv = [
        "--config-file",
        _config_file(),
        "--input",
        str(input_path),
        "--output",
        str(output),
        "--confidence-threshold",
        "0.0",
        *extra,
        "--opts",
        *TINY_OPTS,
    ]
    return demo.main(argv)


def _check_outputs(result, num_frames: int, size_hw):
    capture = cv2.VideoCapture(str(result["video"]))
    assert capture.isOpened(), f"cannot read back {result['video']}"
    frames = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape[:2] == tuple(size_hw)
        frames += 1
    capture.release()
    assert frames == num_frames

    with open(result["json"]) as f:
        data = json.load(f)
    images = data["images"]
    assert len(images) == num_frames == result["num_frames"]
    assert [im["frame_id"] for im in images] == [im["id"] for im in images]
    assert len({im["id"] for im in images}) == num_frames
    assert all({"file_name", "id", "frame_id"} <= set(im) for im in images)
    ids = {im["id"] for im in images}
    assert data["annotations"], "a 0.0 threshold keeps every prediction"
    for ann in data["annotations"]:
        assert ann["image_id"] in ids
        assert len(ann["keypoints"]) == 17 * 3 and len(ann["scores"]) == 17
        assert isinstance(ann["track_id"], int)
        assert ann["keypoints"][3 * 3 : 5 * 3] == [0.0] * 6  # the official ears stay empty
    assert len(data["categories"][0]["keypoints"]) == 17
    return data


def test_demo_on_a_synthetic_folder(demo, synthetic_folder, tmp_path):
    result = _run(demo, synthetic_folder, tmp_path / "out")
    data = _check_outputs(result, 5, (96, 96))
    assert data["images"][0]["file_name"].endswith("000000.jpg")
    # Per frame, at most TEST.DETECTIONS_PER_IMAGE persons, each with its own track id.
    for image in data["images"]:
        tracks = [a["track_id"] for a in data["annotations"] if a["image_id"] == image["id"]]
        assert 0 < len(tracks) <= 5 and len(set(tracks)) == len(tracks)
    # The file is one the official protocol reads, against the video's ground truth.
    from vpose_d2.evaluation.posetrack import evaluate_posetrack

    gt = synthetic_folder.parents[2] / "annotations" / "val" / f"{synthetic_folder.name}.json"
    res = evaluate_posetrack([gt], [result["json"]])
    assert 0.0 <= res["Total"] <= 100.0


def test_demo_on_the_real_clip_frames_and_mp4(demo, shared_data, tmp_path):
    real_clip = shared_data / "posetrack18" / "videos" / "000001_mpiinew_test"
    if not real_clip.is_dir():
        pytest.skip(f"real fixture clip absent: {real_clip}")
    frames_dir = tmp_path / "000001_mpiinew_test"
    frames_dir.mkdir()
    for jpg in sorted(real_clip.glob("*.jpg")):  # the folder also holds the mp4
        shutil.copy(jpg, frames_dir / jpg.name)
    first = cv2.imread(str(real_clip / "000000.jpg"))
    result = _run(demo, frames_dir, tmp_path / "frames")
    data = _check_outputs(result, 5, first.shape[:2])
    # PoseTrack ids: 1 + 6-digit video number + 4-digit frame index.
    assert data["images"][0]["id"] == 10000010000

    video = real_clip / "000001_mpiinew_test.mp4"
    capture = cv2.VideoCapture(str(video))
    n, size = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.read()[1].shape[:2]
    capture.release()
    result = _run(demo, video, tmp_path / "mp4")
    _check_outputs(result, n, size)


def test_unreadable_input_names_the_path(demo, tmp_path):
    missing = tmp_path / "no_such_video.mp4"
    with pytest.raises(demo.InputError, match="no_such_video.mp4"):
        _run(demo, missing, tmp_path / "out")

    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("this is not a video")
    with pytest.raises(demo.InputError, match="notes.mp4"):
        _run(demo, not_a_video, tmp_path / "out")

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(demo.InputError, match="empty_folder"):
        _run(demo, empty, tmp_path / "out")

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        path = folder / f"{i:06d}.jpg"
        if i == 1:
            path.write_bytes(b"\xff\xd8 truncated jpeg")
        else:
            cv2.imwrite(str(path), np.full((64, 64, 3), 127, dtype=np.uint8))
    with pytest.raises(demo.InputError, match=r"Frame 1 .*000001\.jpg"):
        _run(demo, folder, tmp_path / "out")


def test_frame_size_change_names_the_file(demo, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, height in enumerate((64, 64, 48)):
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), np.full((height, 64, 3), 127, dtype=np.uint8))
    with pytest.raises(demo.InputError, match=r"Frame 2 of .*clip.*000002\.jpg.* 64x48"):
        _run(demo, folder, tmp_path / "out")


@pytest.fixture
def no_model(demo, monkeypatch):
    """Building the model fails the test: the output folder is checked before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the demo built the model before checking its output folder")

    monkeypatch.setattr(demo, "VideoPosePredictor", refuse)


def test_output_under_a_regular_file_fails_before_the_model(
    demo, synthetic_folder, tmp_path, no_model
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    with pytest.raises(demo.InputError, match=r"'.*notes\.txt/out': '.*notes\.txt' is a file"):
        _run(demo, synthetic_folder, a_file / "out")
    with pytest.raises(demo.InputError, match=r"'.*notes\.txt' is a file, not a folder"):
        _run(demo, synthetic_folder, a_file)


@pytest.mark.parametrize("how", ["permissions", "read-only mount"])
def test_unwritable_output_folder_fails_before_the_model(
    demo, synthetic_folder, tmp_path, monkeypatch, no_model, how
):
    out = tmp_path / "read_only"
    out.mkdir()
    if how == "permissions":
        if os.geteuid() == 0:
            pytest.skip("root writes through permission bits; the mount case covers it")
        out.chmod(0o555)
        expected = os.strerror(errno.EACCES)
    else:  # what a file opened on a read-only mount raises, for root as for anyone
        expected = os.strerror(errno.EROFS)

        def read_only(*args, dir=None, **kwargs):
            raise OSError(errno.EROFS, expected, str(dir))

        monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    try:
        with pytest.raises(demo.InputError, match=rf"'.*read_only'.*{expected}"):
            _run(demo, synthetic_folder, out)
    finally:
        out.chmod(0o755)


def test_video_sink_cleanup_does_not_hide_the_error(demo, tmp_path, monkeypatch):
    """Neither codec opens and removing the failed file fails too: the error still says that
    no video can be written there, not what the cleanup ran into."""

    class NeverOpens:
        def __init__(self, path, *args):
            Path(path).write_bytes(b"")  # as OpenCV may leave an empty file

        def isOpened(self):
            return False

        def release(self):
            pass

    def unlink(self, missing_ok=False):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(cv2, "VideoWriter", NeverOpens)
    sink = demo.VideoSink(tmp_path, "clip", 25.0)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(RuntimeError, match=r"neither mp4v nor MJPG video into .*"):
        sink.write(np.zeros((8, 8, 3), dtype=np.uint8))


def test_demo_writes_the_models_track_ids(demo, synthetic_folder, tmp_path, monkeypatch):
    """A model that tracks: its ``pred_track_ids`` are the json's track ids, whatever the
    rank; persons below the threshold are left out."""
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Instances

    from vpose_d2.engine import PredictedFrame

    class TrackingPredictor:
        def __init__(self, cfg, **kwargs):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])

        def __call__(self, frames):
            for index, frame in enumerate(frames):
                inst = Instances(frame.shape[:2])
                inst.pred_keypoints = torch.full((3, 15, 3), 20.0 + index)
                inst.scores = torch.tensor([0.9, 0.8, 0.1])
                inst.pred_track_ids = torch.tensor([7 + index % 2, 8 - index % 2, 3])
                yield PredictedFrame(index, frame, inst)

    monkeypatch.setattr(demo, "VideoPosePredictor", TrackingPredictor)
    result = demo.main(
        ["--config-file", _config_file(), "--input", str(synthetic_folder), "--output",
         str(tmp_path), "--confidence-threshold", "0.5", "--opts", *TINY_OPTS]
    )  # fmt: skip
    data = _check_outputs(result, 5, (96, 96))
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append((ann["track_id"], ann["keypoints"][0]))
    assert [sorted(by_image[im["id"]]) for im in data["images"]] == [
        [(7, 20.0 + i), (8, 20.0 + i)] for i in range(5)
    ]


def test_json_persons_take_posetrack_or_coco_joints():
    """The writer's persons from a model's Instances: PoseTrack (15) or COCO (17, eyes in the
    head slots) layouts; any other layout is refused rather than written into wrong slots."""
    from detectron2.structures import Instances

    from vpose_d2.data.keypoints import COCO, POSETRACK
    from vpose_d2.evaluation.writer import instances_to_persons

    for layout in (POSETRACK, COCO):
        inst = Instances((10, 10))
        inst.pred_keypoints = torch.rand(2, layout.num_keypoints, 3)
        inst.scores = torch.tensor([0.9, 0.2])
        (person,) = instances_to_persons(inst, layout.names, min_score=0.5)
        assert person["keypoints"].shape == (layout.num_keypoints, 3) and person["score"] > 0.5
        assert "track_id" not in person  # the writer then numbers persons by rank
    with pytest.raises(ValueError, match="left_eye"):
        instances_to_persons(inst, [f"j{i}" for i in range(14)] + ["left_eye"])
