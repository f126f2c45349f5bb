"""The synthetic set's blurred-frame listing and tools/blur_breakdown.py (mAP on blurred vs sharp
key frames)."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import json
import shutil
from pathlib import Path

import pytest
from script_loader import load_script

from vpose_d2.data.datasets import make_synthetic_posetrack

# Every val frame labeled and half of them blurred, so both subsets have frames to score.
ARGS = dict(
    seed=1, num_train_videos=0, num_val_videos=2, frames_per_video=8, size=96, val_label_every=1,
    blur_prob=0.5, min_person_height=30, max_person_height=80,
)  # fmt: skip


def _tool():
    return load_script("tools/blur_breakdown.py")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_posetrack(tmp_path_factory.mktemp("blur") / "set", **ARGS)


def _listing(root: Path):
    return json.loads((root / "annotations" / "blurred_frames.json").read_text())


def _predictions(root: Path, out: Path, drop_blurred: bool = False) -> Path:
    """The ground truth as predictions (per-joint scores added); optionally none on the
    blurred frames."""
    blurred = _listing(root)["val"]
    out.mkdir(parents=True)
    for gt in sorted((root / "annotations" / "val").glob("*.json")):
        data = json.loads(gt.read_text())
        drop = {im["id"] for i, im in enumerate(data["images"]) if i in blurred[gt.stem]}
        anns = []
        for a in data["annotations"]:
            if drop_blurred and a["image_id"] in drop:
                continue
            anns.append(dict(a, scores=[0.9 if v > 0 else 0.0 for v in a["keypoints"][2::3]]))
        (out / gt.name).write_text(json.dumps(dict(data, annotations=anns)))
    return out


def test_listing_names_exactly_the_frames_the_blur_changed(synth, tmp_path):
    # The draws do not depend on blur_strength, so at strength 0 only the blurred frames differ.
    sharp = make_synthetic_posetrack(tmp_path / "sharp", **dict(ARGS, blur_strength=0.0))
    listing = _listing(synth)
    assert listing["train"] == {} and len(listing["val"]) == 2
    n_blurred = 0
    for video, frames in listing["val"].items():
        changed = [
            t
            for t in range(ARGS["frames_per_video"])
            if (synth / "images" / "val" / video / f"{t:06d}.jpg").read_bytes()
            != (sharp / "images" / "val" / video / f"{t:06d}.jpg").read_bytes()
        ]
        assert frames == changed
        n_blurred += len(frames)
        ann = f"annotations/val/{video}.json"
        assert (synth / ann).read_bytes() == (sharp / ann).read_bytes()
    assert 0 < n_blurred < 2 * ARGS["frames_per_video"]


def test_ground_truth_scores_100_on_every_subset(synth, tmp_path, capsys):
    tool = _tool()
    pred = _predictions(synth, tmp_path / "pred")
    assert tool.main([str(pred), "--root", str(synth), "--json", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    n = out["frames"]
    labeled = sum(
        im["is_labeled"]
        for f in (synth / "annotations" / "val").glob("*.json")
        for im in json.loads(f.read_text())["images"]
    )
    assert n["all"] == labeled == 16 and n["blurred"] + n["sharp"] == labeled
    assert n["blurred"] > 0 and n["sharp"] > 0
    for subset in ("all", "blurred", "sharp"):
        assert out["results"][str(pred)][subset]["mAP"] == pytest.approx(100.0)
    table = capsys.readouterr().out
    assert str(pred) in table and "mAP blurred" in table


def test_empty_on_blurred_frames_scores_0_there_and_100_on_sharp(synth, tmp_path):
    pred = _predictions(synth, tmp_path / "pred", drop_blurred=True)
    res = _tool().blur_breakdown([pred], synth)["results"][str(pred)]
    assert res["sharp"]["mAP"] == pytest.approx(100.0)
    assert res["blurred"]["mAP"] == 0.0
    assert 0.0 < res["all"]["mAP"] < 100.0


def test_clear_errors(synth, tmp_path, capsys):
    tool = _tool()
    pred = _predictions(synth, tmp_path / "pred")
    old = tmp_path / "old"
    shutil.copytree(synth, old)
    (old / "annotations" / "blurred_frames.json").unlink()
    with pytest.raises(FileNotFoundError, match="older generator"):
        tool.blur_breakdown([pred], old)
    assert tool.main([str(pred), "--root", str(old)]) == 2
    err = capsys.readouterr().err
    assert "make_synthetic_posetrack.py --root" in err and "--val-label-every 1" in err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tool.blur_breakdown([tmp_path / "missing"], synth)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no json"):
        tool.blur_breakdown([tmp_path / "empty"], synth)
