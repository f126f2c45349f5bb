"""The official evaluator on files that used to be scored silently wrong (issue 13, items 1, 6,
7): no ``annotations``, a prediction for a video the ground truth lacks, duplicate ground-truth
track ids, non-finite ground truth, NaN scores and coordinates in predictions."""

import json
import logging
import math

import pytest
from test_posetrack_eval import person, pose, video_file

from vpose_d2.evaluation.posetrack import PoseTrackEvalError, evaluate_posetrack

LOGGER = "vpose_d2.evaluation.posetrack"


def _drop_annotations(path):
    data = json.loads(path.read_text())
    del data["annotations"]
    path.write_text(json.dumps(data))


def test_prediction_file_without_annotations_is_an_error(tmp_path):
    a = pose(100, 100)
    video_file(tmp_path / "gt" / "v.json", [[person(a, 0, 0)]])
    video_file(tmp_path / "pr" / "v.json", [[person(a, 0, 0)]])
    assert evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")["Total"] == pytest.approx(100)
    _drop_annotations(tmp_path / "pr" / "v.json")
    with pytest.raises(PoseTrackEvalError, match=r"pr/v\.json.*'annotations'"):
        evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")
    # An empty list is a file that predicts nobody: scored, not an error.
    data = json.loads((tmp_path / "pr" / "v.json").read_text())
    (tmp_path / "pr" / "v.json").write_text(json.dumps({**data, "annotations": []}))
    assert evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")["Total"] == 0.0


def test_ground_truth_file_without_annotations_is_an_error(tmp_path):
    a, b = pose(100, 100), pose(300, 300)
    video_file(tmp_path / "gt" / "v.json", [[person(a, 0, 0)]])
    video_file(tmp_path / "gt" / "w.json", [[person(b, 0, 0)]])
    video_file(tmp_path / "pr" / "v.json", [[person(a, 0, 0)]])
    video_file(tmp_path / "pr" / "w.json", [[person(a, 0, 0, scores=[0.5] * 15)]])  # a miss
    assert evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")["Total"] == pytest.approx(50)
    _drop_annotations(tmp_path / "gt" / "w.json")  # used to drop w from scoring: 100
    with pytest.raises(PoseTrackEvalError, match=r"gt/w\.json.*'annotations'"):
        evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")


def test_prediction_for_a_video_the_ground_truth_lacks_is_named(tmp_path, caplog):
    a = pose(100, 100)
    video_file(tmp_path / "gt" / "v.json", [[person(a, 0, 0)]])
    video_file(tmp_path / "pr" / "v.json", [[person(a, 0, 0)]])
    video_file(tmp_path / "pr" / "stray_video.json", [[person(a, 0, 0)]])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        res = evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")
    assert res["num_videos"] == 1
    assert "stray_video.json" in caplog.text and "not scored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        evaluate_posetrack(
            [tmp_path / "gt" / "v.json"],
            [tmp_path / "pr" / "v.json", tmp_path / "pr" / "stray_video.json"],
        )
    assert "stray_video.json" in caplog.text


def test_duplicate_ground_truth_track_id_is_an_error(tmp_path):
    a, b = pose(100, 100), pose(300, 100)
    with pytest.raises(PoseTrackEvalError, match=r"gt/dupgt\.json.*frame 0.*track_id 4 twice"):
        video_file(tmp_path / "gt" / "dupgt.json", [[person(a, 4, 0), person(b, 4, 0)]])
        video_file(tmp_path / "pr" / "dupgt.json", [[person(a, 0, 0)]])
        evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")


def test_non_finite_ground_truth_joint_is_an_error(tmp_path):
    a = pose(100, 100)
    gt = person(a, 6, 0)
    gt["keypoints"][3 * 5 + 1] = math.nan  # left_shoulder y
    video_file(tmp_path / "gt" / "v.json", [[gt]])
    video_file(tmp_path / "pr" / "v.json", [[person(a, 0, 0)]])
    with pytest.raises(PoseTrackEvalError, match=r"gt/v\.json.*frame 0.*track_id 6.*finite"):
        evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")


def test_nan_prediction_scores_and_coordinates_warn_once_per_file(tmp_path, caplog):
    a = pose(100, 100)
    scores = [0.9] * 15
    scores[0] = scores[4] = math.nan
    p = person(a, 0, 0, scores=scores)
    p["keypoints"][3 * 6] = math.nan  # right_shoulder x
    video_file(tmp_path / "gt" / "v.json", [[person(a, 0, 0)], [person(a, 0, 0)]])
    video_file(tmp_path / "pr" / "v.json", [[p], [p]])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")
    msgs = [r.getMessage() for r in caplog.records if "pr/v.json" in r.getMessage()]
    assert len(msgs) == 1, msgs
    assert (
        "4 non-finite joint scores" in msgs[0]
        and "2 joint(s) with non-finite coordinates" in msgs[0]
    )
