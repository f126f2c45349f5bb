"""The official PoseTrack protocol (vpose_d2.evaluation.posetrack) and the writer.

Expected numbers in the hand-built cases are derived by hand from the protocol (poseval's
rules, summarised in vpose_d2/evaluation/posetrack.py's docstring) in the comments, never by
calling the implementation.

Common geometry of the hand-built cases: every head box is 30 x 40 px, so the head size is
0.6 * 50 = 30 px and a predicted joint matches when it is within 0.5 * 30 = 15 px.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpose_d2.evaluation.posetrack import (
    PoseTrackEvalError,
    evaluate_posetrack,
    format_table,
    point_in_polygons,
)
from vpose_d2.evaluation.writer import write_posetrack_predictions

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURE_VAL = SHARED / "posetrack18" / "annotations" / "val"

needs_fixtures = pytest.mark.skipif(
    not FIXTURE_VAL.is_dir(),
    reason=f"real PoseTrack18 fixtures not found at {FIXTURE_VAL}",
)

# slots of the 15 PoseTrack joints inside the official 17 (ears 3, 4 always empty)
SLOTS = [0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
CATEGORIES = [
    {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": [
            "nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder",
            "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
            "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
        ],  # fmt: skip
    }
]


def pose(x0: float, y0: float) -> np.ndarray:
    """A (15, 2) pose whose joints are 20 px apart (further than the 15 px threshold)."""
    return np.array([[x0 + 20.0 * (j % 3), y0 + 20.0 * (j // 3)] for j in range(15)])


def person(xy, track_id, image_id, scores=None, joints=None, head=(0, 0, 30, 40)):
    """An official annotation: 17 slots, ears (0, 0, 0); `joints` limits the present ones."""
    kp = np.zeros((17, 3))
    sc = [0.0] * 17
    for j in range(15) if joints is None else joints:
        kp[SLOTS[j]] = (xy[j][0], xy[j][1], 1)
        sc[SLOTS[j]] = 0.9 if scores is None else scores[j]
    ann = {
        "image_id": image_id,
        "track_id": track_id,
        "keypoints": kp.reshape(-1).tolist(),
        "scores": sc,
        "category_id": 1,
    }
    if head is not None:
        ann["bbox_head"] = list(head)
    return ann


def video_file(path: Path, frames, regions=None, labeled=None):
    """frames: list (one per image) of lists of annotations (image_id filled in here)."""
    images, anns = [], []
    for i, persons in enumerate(frames):
        iid = 1000 + i
        im = {
            "id": iid,
            "file_name": f"images/val/{path.stem}/{i:06d}.jpg",
            "frame_id": iid,
            "is_labeled": bool(persons) if labeled is None else labeled[i],
            "ignore_regions_x": [],
            "ignore_regions_y": [],
        }
        for poly in (regions or {}).get(i, []):
            im["ignore_regions_x"].append([p[0] for p in poly])
            im["ignore_regions_y"].append([p[1] for p in poly])
        images.append(im)
        for a in persons:
            anns.append({**a, "image_id": iid, "id": len(anns)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


def run(tmp_path, gt_frames, pr_frames, track=False, regions=None, labeled=None, name="v1"):
    video_file(tmp_path / "gt" / f"{name}.json", gt_frames, regions, labeled)
    video_file(tmp_path / "pr" / f"{name}.json", pr_frames, regions, labeled)
    return evaluate_posetrack(tmp_path / "gt", tmp_path / "pr", track=track)


# ------------------------------------------------------------------------------------------
# real fixtures
# ------------------------------------------------------------------------------------------
@needs_fixtures
def test_fixture_gt_against_itself_is_100():
    res = evaluate_posetrack(FIXTURE_VAL, FIXTURE_VAL)
    for key in ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total"):
        assert res[key] == pytest.approx(100.0), key
    assert res["num_videos"] == 3 and res["num_frames"] == 3
    # 1 + 2 + 11 persons; the GT has no score (poseval's -9999) and still ranks fine.
    assert sum(res["per_joint"]["num_gt"].values()) > 14 * 10


@needs_fixtures
def test_cli_prints_table_and_writes_json(tmp_path):
    out = tmp_path / "res.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vpose_d2.evaluation.posetrack", str(FIXTURE_VAL),
         str(FIXTURE_VAL), "--track", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(REPO),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Total" in proc.stdout and "MOTA" in proc.stdout
    res = json.loads(out.read_text())
    assert res["Total"] == pytest.approx(100.0)
    # Every fixture video has a single frame: the last frame is left out of MOTA, so it is
    # undefined (NaN, written as null), which the log says plainly.
    assert res["MOTA"] is None
    assert "last frame" in proc.stderr


def test_cli_error_names_missing_prediction(tmp_path, capsys):
    from vpose_d2.evaluation.posetrack import main

    video_file(tmp_path / "gt" / "vidA.json", [[person(pose(0, 0), 0, 0)]])
    (tmp_path / "pr").mkdir()
    assert main([str(tmp_path / "gt"), str(tmp_path / "pr")]) != 0
    assert "vidA.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# hand-derived AP cases
# ------------------------------------------------------------------------------------------
def test_missing_person_halves_ap(tmp_path):
    a, b = pose(100, 100), pose(400, 100)
    gt = [[person(a, 0, 0), person(b, 1, 0)]]
    pr = [[person(a, 0, 0)]]
    # Per joint: nGT = 2, one prediction, a TP -> recall 0.5 at precision 1; the envelope
    # gives AP = 0.5 * 1 = 50 for every joint, so every column and Total are 50.
    res = run(tmp_path, gt, pr)
    for key in ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total"):
        assert res[key] == pytest.approx(50.0), key


def test_threshold_is_inclusive_at_half_head_size(tmp_path):
    a = pose(100, 100)
    p = a.copy()
    p[7, 0] += 15.01  # left_wrist: 15.01 / 30 = 0.5003 > 0.5 -> false positive
    p[8, 0] += 15.0  # right_wrist: 15 / 30 = 0.5 <= 0.5 -> true positive
    res = run(tmp_path, [[person(a, 0, 0)]], [[person(p, 0, 0)]])
    # The prediction matches the person (pck 14/15 > 0). left_wrist: one FP and nGT 1 ->
    # precision 0 everywhere -> AP 0; right_wrist and the others: one TP -> AP 100.
    assert res["per_joint"]["AP"]["left_wrist"] == pytest.approx(0.0)
    assert res["per_joint"]["AP"]["right_wrist"] == pytest.approx(100.0)
    assert res["Wrist"] == pytest.approx(50.0)  # mean(0, 100)
    assert res["Total"] == pytest.approx(14 * 100.0 / 15)  # mean over the 15 joints: 93.33


def test_ignore_region_removes_predictions_and_ground_truth(tmp_path):
    a = pose(100, 100)  # joints within x 100..140, y 100..180
    inside = pose(420, 420)  # joints within x 420..460, y 420..500
    square = [(400, 400), (600, 400), (600, 600), (400, 600)]
    gt = [[person(a, 0, 0), person(inside, 1, 0)]]
    # The prediction inside the region scores higher than the true one.
    pr = [[person(a, 0, 0, scores=[0.5] * 15), person(inside, 1, 0, scores=[0.95] * 15)]]
    res = run(tmp_path, gt, pr, regions={0: [square]})
    # Both the GT person and the prediction inside the region are removed: one TP, AP 100.
    # (Without the region it is also 100: two persons, two exact TPs. The cases below
    # separate the prediction side from the ground-truth side.)
    assert res["Total"] == pytest.approx(100.0)

    # A prediction inside the region with no GT there: removed, so neither TP nor FP.
    # Without removal it would rank first as an FP: precision [0, 0.5], recall [0, 1]
    # -> AP 50.
    gt2 = [[person(a, 0, 0)]]
    res2 = run(tmp_path / "b", gt2, pr, regions={0: [square]})
    assert res2["Total"] == pytest.approx(100.0)
    res3 = run(tmp_path / "c", gt2, pr)  # same without the region: AP 50 per joint
    assert res3["Total"] == pytest.approx(50.0)

    # A GT person inside the region is removed too: not predicting it costs nothing.
    # Without the region, nGT = 2 with one TP -> AP 50.
    res4 = run(tmp_path / "d", gt, [[person(a, 0, 0)]], regions={0: [square]})
    assert res4["Total"] == pytest.approx(100.0)
    res5 = run(tmp_path / "e", gt, [[person(a, 0, 0)]])
    assert res5["Total"] == pytest.approx(50.0)


def test_point_in_polygon_excludes_boundary():
    sq = [np.array([(0, 0), (10, 0), (10, 10), (0, 10)], float)]
    pts = np.array([(5, 5), (10, 5), (0, 0), (11, 5), (5, 10), (9.99, 0.01)])
    assert point_in_polygons(pts, sq).tolist() == [True, False, False, False, False, True]
    # concave "U": the notch (5, 8) is outside
    u = [np.array([(0, 0), (10, 0), (10, 10), (7, 10), (7, 3), (3, 3), (3, 10), (0, 10)], float)]
    assert point_in_polygons(np.array([(5, 8), (5, 1), (1, 8)]), u).tolist() == [
        False,
        True,
        True,
    ]


def test_unlabeled_frame_predictions_are_ignored(tmp_path):
    a = pose(100, 100)
    gt = [[person(a, 0, 0)], []]  # frame 1: no annotation (is_labeled False)
    pr = [[person(a, 0, 0, scores=[0.5] * 15)], [person(pose(300, 300), 5, 0, scores=[0.99] * 15)]]
    # Frame 1 is not scored, so its confident false positive does not count: AP 100.
    # (Scored, it would rank first as an FP: AP 50.)
    res = run(tmp_path, gt, pr)
    assert res["Total"] == pytest.approx(100.0)
    assert res["num_frames"] == 1


def test_nan_and_missing_scores_count_as_minus_9999(tmp_path):
    a = pose(100, 100)
    far = pose(500, 500)
    scores = [0.9] * 15
    scores[0] = float("nan")  # nose
    gt = [[person(a, 0, 0)]]
    pr = [[person(a, 0, 0, scores=scores), person(far, 1, 0, scores=[0.1] * 15)]]
    # nose: TP scored -9999 and the far FP scored 0.1 -> order [FP, TP]: precision [0, .5],
    # recall [0, 1] -> AP = 1 * 0.5 = 50. Other joints: [TP 0.9, FP 0.1] -> AP 100.
    res = run(tmp_path, gt, pr)
    assert res["per_joint"]["AP"]["nose"] == pytest.approx(50.0)
    assert res["Head"] == pytest.approx((50 + 100 + 100) / 3)
    assert res["Total"] == pytest.approx((50 + 14 * 100) / 15)

    # No "scores" at all: every joint is -9999, a single TP per joint still gives AP 100.
    p = person(a, 0, 0)
    del p["scores"]
    assert run(tmp_path / "b", gt, [[p]])["Total"] == pytest.approx(100.0)


def test_prediction_matches_one_person_only(tmp_path):
    # Two persons 200 px apart; two predictions both on person A (one exact, one with every
    # joint 10 px off, still within 15 px). Each prediction keeps its best person (A); A
    # takes the one with the highest pck (tie 1.0 vs 1.0 -> lowest index, the exact one).
    # The second prediction lost its person and is not reassigned: all its joints are FP.
    a, b = pose(100, 100), pose(400, 100)
    off = a + 10.0
    gt = [[person(a, 0, 0), person(b, 1, 0)]]
    pr = [[person(a, 0, 0, scores=[0.9] * 15), person(off, 1, 0, scores=[0.8] * 15)]]
    # per joint: [TP 0.9, FP 0.8], nGT 2 -> precision [1, .5], recall [.5, .5] -> AP 50.
    res = run(tmp_path, gt, pr)
    assert res["Total"] == pytest.approx(50.0)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
def test_duplicate_track_id_is_an_error(tmp_path):
    a, b = pose(100, 100), pose(300, 100)
    with pytest.raises(PoseTrackEvalError, match=r"dupvid\.json.*frame 0.*track_id 7"):
        run(tmp_path, [[person(a, 0, 0)]], [[person(a, 7, 0), person(b, 7, 0)]], name="dupvid")


def test_prediction_for_frame_gt_lacks_is_an_error(tmp_path):
    a = pose(100, 100)
    video_file(tmp_path / "gt" / "v.json", [[person(a, 0, 0)]])
    video_file(tmp_path / "pr" / "v.json", [[person(a, 0, 0)], [person(a, 0, 0)]])
    with pytest.raises(PoseTrackEvalError, match=r"v\.json.*frame 1 .*000001\.jpg"):
        evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")
    # an annotation pointing to an image id the ground truth does not have
    data = json.loads((tmp_path / "gt" / "v.json").read_text())
    data["annotations"][0]["image_id"] = 424242
    (tmp_path / "pr" / "v.json").write_text(json.dumps(data))
    with pytest.raises(PoseTrackEvalError, match=r"v\.json.*image_id 424242"):
        evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")


def test_missing_prediction_file_is_an_error(tmp_path):
    video_file(tmp_path / "gt" / "only_gt.json", [[person(pose(0, 0), 0, 0)]])
    (tmp_path / "pr").mkdir()
    with pytest.raises(PoseTrackEvalError, match="only_gt.json"):
        evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")


# ------------------------------------------------------------------------------------------
# tracking
# ------------------------------------------------------------------------------------------
def _multi_frame_gt():
    frames = []
    for t in range(5):
        persons = [
            person(pose(100 + 3 * t, 100), 0, 0),
            person(pose(300, 100 + 2 * t), 1, 0, joints=range(0, 15, 2)),  # 8 joints
            person(pose(500 - 4 * t, 300), 4, 0, joints=range(3, 15)),
        ]
        frames.append(persons if t != 2 else [])  # frame 2 unlabeled
    return frames


def test_multi_frame_gt_against_itself_is_perfect(tmp_path):
    frames = _multi_frame_gt()
    square = [(700, 700), (800, 700), (800, 800), (700, 800)]
    res = run(tmp_path, frames, frames, track=True, regions={1: [square]})
    assert res["Total"] == pytest.approx(100.0)
    assert res["num_frames"] == 4
    for key in ("MOTA", "MOTP", "Precision", "Recall"):
        assert res[key] == pytest.approx(100.0), key
    # 3 frames count for MOTA (last of 4 left out); nose: persons 0 and 1 -> 6 objects.
    assert res["per_joint"]["num_objects"]["nose"] == 6
    assert "MOTA" in format_table(res)


def test_labeled_frame_without_predictions_is_one_miss_one_fp_per_joint(tmp_path):
    a = pose(100, 100)
    gt = [[person(a, 0, 0)], [person(a, 0, 0)], [person(a, 0, 0)]]
    pr = [[person(a, 3, 0)], [], [person(a, 3, 0)]]
    res = run(tmp_path, gt, pr, track=True)
    # AP: nGT 3, two TPs (equal scores) -> recall 2/3 at precision 1 -> AP 66.67.
    assert res["Total"] == pytest.approx(200.0 / 3)
    # MOTA over frames 0, 1 (frame 2 is the last): frame 0 one match; frame 1 (GT, no
    # prediction) one object, one miss, one FP per joint. Objects 2, misses 1, FP 1:
    # MOTA = 1 - 2/2 = 0. MOTP = 1 - 0/1 = 100; precision 1/(1+1) = 50; recall 1/2 = 50.
    assert res["MOTA"] == pytest.approx(0.0)
    assert res["MOTP"] == pytest.approx(100.0)
    assert res["Precision"] == pytest.approx(50.0)
    assert res["Recall"] == pytest.approx(50.0)


def test_id_switches(tmp_path):
    a, b = pose(100, 100), pose(400, 100)
    gt = [[person(a, 1, 0), person(b, 2, 0)]] * 3
    pr = [
        [person(a, 10, 0), person(b, 20, 0)],
        [person(a, 20, 0), person(b, 10, 0)],  # identities swapped
        [person(a, 10, 0), person(b, 20, 0)],  # last frame: left out
    ]
    # Frame 0: two matches. Frame 1: the previous pairs (1-10, 2-20) are beyond threshold,
    # the Hungarian pairs 1-20 and 2-10: two switches. Objects 4 -> MOTA = 1 - 2/4 = 50.
    res = run(tmp_path, gt, pr, track=True)
    assert res["MOTA"] == pytest.approx(50.0)
    assert res["per_joint"]["num_switches"]["nose"] == 2
    assert res["Total"] == pytest.approx(100.0)


def test_one_frame_video_mota_is_nan_without_crash(tmp_path, caplog):
    a = pose(100, 100)
    with caplog.at_level("INFO"):
        res = run(tmp_path, [[person(a, 0, 0)]], [[person(a, 0, 0)]], track=True)
    assert res["Total"] == pytest.approx(100.0)
    assert math.isnan(res["MOTA"]) and math.isnan(res["Recall"])
    assert "last frame" in caplog.text
    # Beside a 2-frame video, the one-frame video simply adds nothing.
    video_file(tmp_path / "gt" / "v2.json", [[person(a, 0, 0)]] * 2)
    video_file(tmp_path / "pr" / "v2.json", [[person(a, 0, 0)]] * 2)
    res = evaluate_posetrack(tmp_path / "gt", tmp_path / "pr", track=True)
    assert res["MOTA"] == pytest.approx(100.0)
    assert res["per_joint"]["num_objects"]["nose"] == 1


def test_posetrack21_joint_needs_positive_coordinates(tmp_path):
    a = pose(100, 100)
    a[0] = (0.0, 50.0)  # nose at x = 0: exists for 2018 ((0,0,0) only is absent), not for 21
    gt = [[person(a, 0, 0)]]
    pr = [[person(pose(100, 100), 0, 0)]]
    video_file(tmp_path / "gt" / "v.json", gt, labeled=[True])
    video_file(tmp_path / "pr" / "v.json", pr, labeled=[True])
    r18 = evaluate_posetrack(tmp_path / "gt", tmp_path / "pr", version="2018")
    r21 = evaluate_posetrack(tmp_path / "gt", tmp_path / "pr", version="21")
    # 2018: the nose is annotated at (0, 50), predicted 100 px away -> FP, AP 0.
    assert r18["per_joint"]["AP"]["nose"] == pytest.approx(0.0)
    # 21: no GT nose; the predicted nose is a FP over max(nGT, 1) -> AP 0, and the rest 100.
    assert r21["per_joint"]["num_gt"]["nose"] == 0
    assert r21["per_joint"]["AP"]["head_top"] == pytest.approx(100.0)


def test_posetrack2017_files_are_read(tmp_path):
    # The same person in the 2017 layout (poseval joint ids, head box as corners).
    pt17_ids = [13, 12, 14, 9, 8, 10, 7, 11, 6, 3, 2, 4, 1, 5, 0]  # ours -> poseval id
    a = pose(100, 100)
    rect = {
        "x1": [0], "y1": [0], "x2": [30], "y2": [40], "track_id": [0],
        "annopoints": [{"point": [
            {"id": [pt17_ids[j]], "x": [a[j, 0]], "y": [a[j, 1]], "score": [0.9]}
            for j in range(15)
        ]}],
    }  # fmt: skip
    data = {"annolist": [{"image": [{"name": "images/x/00000001.jpg"}], "annorect": [rect]}]}
    for d in ("gt", "pr"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "v.json").write_text(json.dumps(data))
    assert evaluate_posetrack(tmp_path / "gt", tmp_path / "pr")["Total"] == pytest.approx(100.0)
    # mixed: 2018 ground truth, 2017 predictions
    video_file(tmp_path / "gt18" / "v.json", [[person(a, 0, 0)]])
    res = evaluate_posetrack(tmp_path / "gt18", tmp_path / "pr")
    assert res["Total"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------
# writer
# ------------------------------------------------------------------------------------------
def _gt_predictions(gt_file: Path, by="index"):
    """Predictions made from a ground-truth file: 15-joint layout, NaN where unannotated."""
    data = json.loads(gt_file.read_text())
    pos = {im["id"]: i for i, im in enumerate(data["images"])}
    out = {}
    for a in data["annotations"]:
        kp = np.asarray(a["keypoints"], float).reshape(17, 3)[SLOTS]
        kp[kp[:, 2] == 0, :2] = np.nan  # unannotated -> unpredicted
        kp[:, 2] = 0.8
        key = pos[a["image_id"]] if by == "index" else a["image_id"]
        out.setdefault(key, []).append({"keypoints": kp, "score": 0.8, "track_id": a["track_id"]})
    return out


@needs_fixtures
def test_writer_roundtrip_on_fixtures(tmp_path):
    preds = {f.stem: _gt_predictions(f) for f in sorted(FIXTURE_VAL.glob("*.json"))}
    paths = write_posetrack_predictions(tmp_path, FIXTURE_VAL, preds)
    assert len(paths) == 3
    res = evaluate_posetrack(FIXTURE_VAL, tmp_path)
    assert res["Total"] == pytest.approx(100.0)
    data = json.loads(paths[0].read_text())
    gt = json.loads((FIXTURE_VAL / paths[0].name).read_text())
    assert data["images"] == gt["images"] and data["categories"] == gt["categories"]
    ann = data["annotations"][0]
    assert len(ann["keypoints"]) == 51 and len(ann["scores"]) == 17
    assert ann["keypoints"][9:15] == [0.0] * 6  # ears


def test_writer_assigns_ids_and_never_writes_nan(tmp_path, caplog):
    a = pose(100, 100)
    video_file(tmp_path / "gt" / "v.json", [[person(a, 0, 0)], [person(a, 0, 0)]])
    kp = np.concatenate([a, np.full((15, 1), 0.7)], 1)
    bad = kp.copy()
    bad[3, 2] = np.nan  # NaN score
    bad[4, :2] = np.nan  # unpredicted joint
    preds = {"v": {0: [{"keypoints": kp, "score": 0.9}, {"keypoints": bad, "score": float("nan")}],
                   1001: [{"keypoints": kp, "score": 0.9, "track_id": 5}]}}  # fmt: skip
    with caplog.at_level("WARNING"):
        (path,) = write_posetrack_predictions(tmp_path / "pr", tmp_path / "gt", preds)
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    anns = data["annotations"]
    assert [x["track_id"] for x in anns] == [0, 1, 5]
    assert [x["image_id"] for x in anns] == [1000, 1000, 1001]  # 1001: an image id key
    k = np.asarray(anns[1]["keypoints"]).reshape(17, 3)
    assert k[SLOTS[4]].tolist() == [0.0, 0.0, 0.0] and anns[1]["scores"][SLOTS[3]] == 0.0
    assert anns[1]["score"] == 0.0 and "non-finite" in caplog.text
    with pytest.raises(PoseTrackEvalError, match=r"video v, frame 0.*duplicate track_id"):
        write_posetrack_predictions(
            tmp_path / "pr", tmp_path / "gt",
            {"v": {0: [{"keypoints": kp, "track_id": 2}, {"keypoints": kp, "track_id": 2}]}},
        )  # fmt: skip
    with pytest.raises(PoseTrackEvalError, match="frame key 7"):
        write_posetrack_predictions(tmp_path / "pr", tmp_path / "gt", {"v": {7: []}})
    with pytest.raises(PoseTrackEvalError, match="nope"):
        write_posetrack_predictions(tmp_path / "pr", tmp_path / "gt", {"nope": {}})


def test_synthetic_val_set_against_itself(tmp_path):
    synthetic = pytest.importorskip("vpose_d2.data.datasets.synthetic")
    root = synthetic.make_synthetic_posetrack(
        tmp_path / "syn", num_train_videos=0, num_val_videos=2, frames_per_video=9, size=96,
        min_person_height=30, max_person_height=60, max_persons=3,
    )  # fmt: skip
    val = root / "annotations" / "val"
    res = evaluate_posetrack(val, val, track=True)
    assert res["Total"] == pytest.approx(100.0)
    assert res["MOTA"] == pytest.approx(100.0)
    # and through the writer, from 15-joint predictions
    preds = {f.stem: _gt_predictions(f, by="image_id") for f in sorted(val.glob("*.json"))}
    write_posetrack_predictions(tmp_path / "pr", val, preds)
    res = evaluate_posetrack(val, tmp_path / "pr", track=True)
    assert res["Total"] == pytest.approx(100.0) and res["MOTA"] == pytest.approx(100.0)


def test_posetrack21_hota(tmp_path):
    a = pose(100, 100)
    gt = [[person(a, 0, 0)], [person(a, 0, 0)]]
    video_file(tmp_path / "gt" / "v.json", gt, labeled=[True, True])
    # Against itself: every joint matched with similarity 1 at every alpha, one track each
    # side -> DetA 1, AssA 1, HOTA 100.
    res = evaluate_posetrack(tmp_path / "gt", tmp_path / "gt", track=True, version="21")
    for key in ("HOTA", "DetA", "AssA", "LocA"):
        assert res[key] == pytest.approx(100.0), key
    # Exact poses, but the predicted identity changes between the two frames (ids 1 then 2):
    # TP 2, FN = FP = 0 -> DetA 1. Pairs (gt0, 1) and (gt0, 2) each have 1 match; the union
    # is |gt0| + |id| - matches = 2 + 1 - 1 = 2, so each pair's association is 1/2 and
    # AssA = (1 * 1/2 + 1 * 1/2) / TP 2 = 0.5 -> HOTA = sqrt(1 * 0.5) = 70.71.
    video_file(tmp_path / "pr" / "v.json", [[person(a, 1, 0)], [person(a, 2, 0)]], labeled=[1, 1])
    res = evaluate_posetrack(tmp_path / "gt", tmp_path / "pr", track=True, version="21")
    assert res["DetA"] == pytest.approx(100.0)
    assert res["AssA"] == pytest.approx(50.0)
    assert res["HOTA"] == pytest.approx(100.0 * math.sqrt(0.5))
    assert res["per_joint"]["HOTA"]["nose"] == pytest.approx(100.0 * math.sqrt(0.5))
    # MOTA of the same: only frame 0 counts (the last is left out) -> one match, 100.
    assert res["MOTA"] == pytest.approx(100.0)
    assert "HOTA" in format_table(res)
