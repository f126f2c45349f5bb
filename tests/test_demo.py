"""demo/video_demo.py end to end: a synthetic frame folder, the real PoseTrack clip (frames and
mp4), and unreadable input. A tiny randomly initialised model is enough for the mechanics."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_CLIP = SHARED_DATA / "posetrack18" / "videos" / "000001_mpiinew_test"

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


@pytest.mark.skipif(not REAL_CLIP.is_dir(), reason=f"real fixture clip absent: {REAL_CLIP}")
def test_demo_on_the_real_clip_frames_and_mp4(demo, tmp_path):
    frames_dir = tmp_path / "000001_mpiinew_test"
    frames_dir.mkdir()
    for jpg in sorted(REAL_CLIP.glob("*.jpg")):  # the folder also holds the mp4
        shutil.copy(jpg, frames_dir / jpg.name)
    first = cv2.imread(str(REAL_CLIP / "000000.jpg"))
    result = _run(demo, frames_dir, tmp_path / "frames")
    data = _check_outputs(result, 5, first.shape[:2])
    # PoseTrack ids: 1 + 6-digit video number + 4-digit frame index.
    assert data["images"][0]["id"] == 10000010000

    video = REAL_CLIP / "000001_mpiinew_test.mp4"
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

    cv2.imwrite(str(folder / "000001.jpg"), np.full((48, 64, 3), 127, dtype=np.uint8))
    with pytest.raises(demo.InputError, match=r"'.*clip'.*Frame 1"):
        _run(demo, folder, tmp_path / "out")


@pytest.mark.parametrize("renderer", ["cv2", "visualizer"])
def test_draw_poses_colours_each_person(demo, renderer):
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Instances

    metadata = MetadataCatalog.get("synthetic_posetrack_val")
    frame = np.full((120, 160, 3), 40, dtype=np.uint8)
    instances = Instances((120, 160))
    kpts = torch.zeros(2, 15, 3)
    kpts[:, :, 0] = torch.linspace(20, 60, 15)
    kpts[:, :, 1] = torch.linspace(10, 110, 15)
    kpts[1, :, 0] += 80
    kpts[:, :, 2] = 0.9
    instances.pred_keypoints = kpts
    instances.scores = torch.tensor([0.9, 0.2])
    out = demo.draw_poses(frame, instances, metadata, confidence_threshold=0.5, renderer=renderer)
    assert out.shape == frame.shape and out.dtype == np.uint8
    changed = (out != frame).any(2)
    assert changed[:, :75].any(), "the confident person is drawn"
    assert not changed[:, 95:].any(), "the person below the threshold is not"
    # One colour per person: the pixels drawn at full opacity are that person's colour.
    colour = np.array(demo._bgr255(demo.person_color(0)))
    assert (np.abs(out[changed].astype(int) - colour).sum(1) < 30).any()
