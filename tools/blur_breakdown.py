#!/usr/bin/env python
"""PoseTrack mAP on the blurred vs the sharp key frames of a synthetic set.

The synthetic generator lists the frames it blurred in ``annotations/blurred_frames.json``.
Each prediction folder (the per-video files the evaluator writes under
``OUTPUT_DIR/inference/<dataset>/posetrack_predictions``) is scored with the official protocol
three times: on all labeled frames, on the blurred ones, on the sharp ones. A subset is scored
against copies of the ground truth whose other frames are unlabeled (no persons, no ignore
regions), so the scoring is the evaluator's own.

Example::

    python tools/blur_breakdown.py \\
        output/quick/pave_synthetic/inference/synthetic_posetrack_val/posetrack_predictions \\
        output/quick/petr_synthetic/inference/synthetic_posetrack_val/posetrack_predictions \\
        --root datasets/synthetic_posetrack --json blur_breakdown.json
"""

import argparse
import json
import math
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

from vpose_d2.data.datasets.synthetic import SyntheticPosetrackConfig
from vpose_d2.evaluation.posetrack import COLUMNS, evaluate_posetrack

SUBSETS = ("all", "blurred", "sharp")


def _regenerate_hint(root: Path) -> str:
    marker = root / "SYNTHETIC_POSETRACK.json"
    if not marker.is_file():
        return f"{root} does not look like a synthetic set (no {marker.name})"
    meta = json.loads(marker.read_text())
    args = [f"--root {root}"]
    for f in fields(SyntheticPosetrackConfig):
        if f.name in meta and meta[f.name] != f.default:
            flag = "--" + f.name.replace("_", "-")
            args.append(flag if isinstance(f.default, bool) else f"{flag} {meta[f.name]}")
    return (
        "it was made by an older generator, which did not record the blurred frames; "
        "regenerate it with its arguments: python tools/make_synthetic_posetrack.py "
        + " ".join(args)
        + " (and predict again if its frames change)"
    )


def load_blurred_frames(root: Path, split: str) -> Dict[str, Set[int]]:
    """The blurred frame indices of every video of ``split``: {video: {frame index}}."""
    path = root / "annotations" / "blurred_frames.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: {_regenerate_hint(root)}")
    listing = json.loads(path.read_text())
    if split not in listing:
        raise ValueError(f"{path} has no split {split!r} (it has {sorted(listing)})")
    return {video: set(frames) for video, frames in listing[split].items()}


def _subset_ground_truth(
    gt_files: List[Path], blurred: Dict[str, Set[int]], out: Path
) -> Dict[str, int]:
    """Writes ``out/{blurred,sharp}/VIDEO.json``: the ground truth with the frames outside the
    subset unlabeled. Returns the labeled-frame count of each subset."""
    counts = dict.fromkeys(SUBSETS, 0)
    for gt in gt_files:
        if gt.stem not in blurred:
            raise ValueError(
                f"{gt.stem} is not in blurred_frames.json: the annotations and the listing "
                f"come from different sets; regenerate the set"
            )
        data = json.loads(gt.read_text())
        labeled = [bool(im.get("is_labeled")) for im in data["images"]]
        if any(i >= len(labeled) for i in blurred[gt.stem]):
            raise ValueError(f"blurred_frames.json lists frames that {gt} does not have")
        counts["all"] += sum(labeled)
        for subset in SUBSETS[1:]:
            keep = [
                ok and ((i in blurred[gt.stem]) == (subset == "blurred"))
                for i, ok in enumerate(labeled)
            ]
            counts[subset] += sum(keep)
            images, dropped = [], set()
            for im, k in zip(data["images"], keep):
                if not k:
                    dropped.add(im["id"])
                    im = dict(im, is_labeled=False, ignore_regions_x=[], ignore_regions_y=[])
                images.append(im)
            anns = [a for a in data["annotations"] if a["image_id"] not in dropped]
            (out / subset).mkdir(parents=True, exist_ok=True)
            (out / subset / gt.name).write_text(
                json.dumps(dict(data, images=images, annotations=anns))
            )
    return counts


def blur_breakdown(pred_dirs: Sequence[Path], root: Path, split: str = "val") -> Dict[str, Any]:
    """Score each prediction folder on all, blurred and sharp labeled frames of ``split``.

    Returns:
        {"frames": {subset: labeled frames}, "results": {pred_dir: {subset: {"mAP", the AP
        columns, "num_frames" (frames scored: labeled ones with persons)}}}}; a subset without
        labeled frames gets NaN.
    """
    root = Path(root)
    gt_dir = root / "annotations" / split
    gt_files = sorted(gt_dir.glob("*.json"))
    if not gt_files:
        raise FileNotFoundError(f"no ground-truth files in {gt_dir}")
    for d in pred_dirs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"prediction folder {d} does not exist")
        if not any(Path(d).glob("*.json")):
            raise FileNotFoundError(
                f"prediction folder {d} holds no json files (expected the per-video files "
                f"the evaluator writes under OUTPUT_DIR/inference/<dataset>/posetrack_predictions)"
            )
    blurred = load_blurred_frames(root, split)
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="blur_breakdown_") as tmp:
        counts = _subset_ground_truth(gt_files, blurred, Path(tmp))
        gts = {"all": gt_dir, "blurred": Path(tmp) / "blurred", "sharp": Path(tmp) / "sharp"}
        for d in pred_dirs:
            results[str(d)] = {}
            for subset in SUBSETS:
                if counts[subset] == 0:  # the protocol would report AP 0, not "no frames"
                    results[str(d)][subset] = {"mAP": math.nan, "num_frames": 0}
                    continue
                res = evaluate_posetrack(gts[subset], d, version="2018")
                row = {"mAP": float(res["Total"])}
                row.update({k: float(res[k]) for k in COLUMNS})
                row["num_frames"] = res["num_frames"]
                results[str(d)][subset] = row
    return {"root": str(root), "split": split, "frames": counts, "results": results}


def format_breakdown(out: Dict[str, Any]) -> str:
    """One row per prediction folder: mAP on all / blurred / sharp frames, then the number of
    labeled frames in each subset."""
    n = out["frames"]
    width = max([len("predictions")] + [len(d) for d in out["results"]])
    cols = [f"mAP {s}" for s in SUBSETS] + [f"n {s}" for s in SUBSETS]
    lines = [f"{'predictions':<{width}}" + "".join(f"{c:>13}" for c in cols)]
    for d, row in out["results"].items():
        cells = ["-" if math.isnan(row[s]["mAP"]) else f"{row[s]['mAP']:.1f}" for s in SUBSETS]
        cells += [str(n[s]) for s in SUBSETS]
        lines.append(f"{d:<{width}}" + "".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pred_dirs",
        nargs="+",
        metavar="PRED_DIR",
        type=Path,
        help="folders of per-video PoseTrack prediction json files",
    )
    parser.add_argument("--root", required=True, type=Path, help="the synthetic set")
    parser.add_argument("--split", default="val", choices=["train", "val"])
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    try:
        out = blur_breakdown(args.pred_dirs, args.root, args.split)
    except (OSError, ValueError) as e:  # missing files, malformed predictions
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_breakdown(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        safe = json.loads(json.dumps(out), parse_constant=lambda c: None)  # NaN -> null
        args.json.write_text(json.dumps(safe, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
