"""vpose_d2.utils.visualizer.draw_poses: one colour per person, kept by track id across frames,
thresholds respected, both renderers."""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances

from vpose_d2.utils.visualizer import _bgr255, draw_poses, person_color

H, W = 120, 200


def _people(xs, scores, track_ids=None) -> Instances:
    """One upright 15-joint person at each x offset."""
    instances = Instances((H, W))
    kpts = torch.zeros(len(xs), 15, 3)
    for i, x in enumerate(xs):
        kpts[i, :, 0] = x + torch.linspace(0, 30, 15)
        kpts[i, :, 1] = torch.linspace(10, 110, 15)
    kpts[:, :, 2] = 0.9
    instances.pred_keypoints = kpts
    instances.scores = torch.tensor(scores)
    if track_ids is not None:
        instances.pred_track_ids = torch.tensor(track_ids)
    return instances


def _drawn_colours(out: np.ndarray, frame: np.ndarray, columns: slice) -> np.ndarray:
    """The distinct colours drawn at full opacity in ``columns`` (anti-aliased edges aside)."""
    changed = (out != frame).any(2)
    changed[:, : columns.start] = False
    changed[:, columns.stop :] = False
    pixels = out[changed].astype(int)
    values, counts = np.unique(pixels, axis=0, return_counts=True)
    return values[counts == counts.max()]


@pytest.fixture(scope="module")
def metadata():
    return MetadataCatalog.get("synthetic_posetrack_val")


@pytest.mark.parametrize("renderer", ["cv2", "visualizer"])
def test_draw_poses_colours_each_person_and_respects_the_threshold(metadata, renderer):
    frame = np.full((H, W, 3), 40, dtype=np.uint8)
    out = draw_poses(
        frame, _people([20, 120], [0.9, 0.2]), metadata, confidence_threshold=0.5, renderer=renderer
    )
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (frame == 40).all(), "the input frame is not drawn on"
    changed = (out != frame).any(2)
    assert changed[:, :60].any(), "the confident person is drawn"
    assert not changed[:, 100:].any(), "the person below the threshold is not"
    # One colour per person: the pixels drawn at full opacity are that person's colour.
    colour = np.array(_bgr255(person_color(0)))
    assert (np.abs(out[changed].astype(int) - colour).sum(1) < 30).any()


def test_a_track_keeps_its_colour_across_frames(metadata):
    """Track 5 is drawn first in one frame and second in the next: same colour both times;
    without track ids the colour follows the rank instead."""
    frame = np.full((H, W, 3), 40, dtype=np.uint8)
    first = draw_poses(frame, _people([20, 120], [0.9, 0.8], [5, 9]), metadata)
    second = draw_poses(frame, _people([20, 120], [0.9, 0.8], [9, 5]), metadata)
    left, right = slice(10, 60), slice(110, 160)
    assert np.array_equal(_drawn_colours(first, frame, left), _drawn_colours(second, frame, right))
    assert np.array_equal(_drawn_colours(first, frame, left), [_bgr255(person_color(5))])
    assert not np.array_equal(person_color(5), person_color(9))
    ranked = draw_poses(frame, _people([20, 120], [0.9, 0.8]), metadata)
    assert np.array_equal(_drawn_colours(ranked, frame, right), [_bgr255(person_color(1))])


def test_low_joints_and_non_finite_joints_are_not_drawn(metadata):
    frame = np.zeros((H, W, 3), dtype=np.uint8)
    people = _people([20], [0.9])
    people.pred_keypoints[0, :, 2] = 0.1
    people.pred_keypoints[0, 0, :2] = float("nan")
    assert not (draw_poses(frame, people, metadata, keypoint_threshold=0.5) != 0).any()
    assert (draw_poses(frame, people, metadata, keypoint_threshold=0.0) != 0).any()


def test_layout_mismatch_is_an_error(metadata):
    people = _people([20], [0.9])
    people.pred_keypoints = people.pred_keypoints[:, :10]
    with pytest.raises(ValueError, match="10 joints.*15"):
        draw_poses(np.zeros((H, W, 3), dtype=np.uint8), people, metadata)
    with pytest.raises(ValueError, match="renderer"):
        draw_poses(np.zeros((H, W, 3), dtype=np.uint8), people, metadata, renderer="svg")
