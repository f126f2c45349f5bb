"""The official PoseTrack evaluation protocol (``poseval``): per-joint AP and MOTA.

Reproduces what the public ``poseval`` toolkit computes (the numbers PoseWarper, DCPose,
PAVE-Net and VEPE report), quirks included:

* Files: ground truth and predictions are official per-video json files (2018/21 layout:
  ``images`` / ``annotations`` with 17 COCO-ordered slots, ears empty; the 2017 ``annolist``
  layout is read too). They are paired by file name, frames by position.
* Frames: 2017/2018 evaluate the frames whose ground truth lists at least one person
  (poseval's ``cleanupData``; a listed person whose joints are all (0, 0, 0) still counts, as
  in poseval); PoseTrack21 evaluates the frames with ``is_labeled``.
* Joints: 2017/2018 keep a joint unless it is written as (0, 0, 0) (poseval's converter);
  PoseTrack21 keeps it iff x > 0 and y > 0.
* Ignore regions: joints strictly inside a polygon (even-odd rule, boundary outside, as
  shapely's ``contains``) are removed from ground truth and predictions, then persons left
  without joints are removed (only in frames that have ignore regions, as in poseval).
* AP: per-frame PCKh matching (head size 0.6 x head-box diagonal, threshold 0.5), each
  prediction keeps its best person, each person takes the best remaining prediction; joint
  scores pooled over all frames; all-point interpolated AP. Missing/NaN scores count -9999.
* Bad input: a file without an ``annotations`` list, a non-finite ground-truth coordinate and
  a track id twice in one frame (ground truth or predictions) are errors naming the file and
  frame; NaN/inf scores and coordinates in a prediction file are counted in one warning per
  file (a NaN coordinate never matches); prediction files for videos the ground truth lacks
  are named in a warning and not scored.
* MOTA: per joint and video, CLEAR-MOT accumulation as py-motmetrics does (keep last
  frame's matches if still within threshold, Hungarian on the rest, with the most matches
  first); the last evaluated frame of every video is left out; a frame whose ground truth or
  predictions are empty adds one miss and one false positive per joint (a poseval quirk).
  A one-frame video thus contributes nothing to MOTA; if no video contributes anything,
  MOTA / recall are NaN (logged), MOTP 0, as poseval's formulas give.
* HOTA (version "21" with tracking): PoseTrack21's keypoint HOTA, similarity
  max(1 - d / 0.5001, 0), alphas 0.05 ... 0.95, per joint, sequences combined as TrackEval;
  its quirk of adding the whole sequence's joint counts as FP/FN for a labeled frame without
  ground truth/predictions is kept. (PoseTrack21's own ignore-region rule differs from
  poseval's only for joints with x <= 0 or y <= 0; poseval's is used.)

Command line::

    python -m vpose_d2.evaluation.posetrack GT_DIR PRED_DIR [--track] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..data.keypoints import OFFICIAL17_NAMES, POSETRACK, POSETRACK17_JOINT_IDS

__all__ = [
    "JOINT_NAMES",
    "COLUMNS",
    "MIN_SCORE",
    "MAX_TRACK_ID",
    "PoseTrackEvalError",
    "evaluate_posetrack",
    "format_table",
    "point_in_polygons",
    "main",
]

logger = logging.getLogger(__name__)

# The 15 PoseTrack joints in vpose_d2's internal order (data.keypoints.POSETRACK).
JOINT_NAMES: Tuple[str, ...] = POSETRACK.names
NUM_JOINTS = len(JOINT_NAMES)
_JOINT_INDEX = {n: i for i, n in enumerate(JOINT_NAMES)}

# Reported columns: Head = mean(nose, head_bottom, head_top), the others left/right means.
COLUMNS: Dict[str, Tuple[int, ...]] = {
    "Head": (0, 1, 2),
    "Shoulder": (3, 4),
    "Elbow": (5, 6),
    "Wrist": (7, 8),
    "Hip": (9, 10),
    "Knee": (11, 12),
    "Ankle": (13, 14),
}

MIN_SCORE = -9999.0
MAX_TRACK_ID = 10000
DIST_THRESH = 0.5

# The 17 slots of an official 2018/21 file (ears always empty).
_OFFICIAL17 = OFFICIAL17_NAMES

# PoseTrack 2017 / poseval joint ids.
_PT17_IDS = POSETRACK17_JOINT_IDS


class PoseTrackEvalError(ValueError):
    """Bad evaluation input; the message names the file, frame and key at fault."""


# ------------------------------------------------------------------------------------------
# Parsed files
# ------------------------------------------------------------------------------------------
@dataclass
class _Person:
    xy: np.ndarray  # (15, 2) float64 pixels
    has: np.ndarray  # (15,) bool, the joint exists
    score: np.ndarray  # (15,) float64, MIN_SCORE where missing (predictions only)
    track_id: Optional[int]
    head_size: float  # 0.6 x head-box diagonal, NaN without a head box (ground truth only)


@dataclass
class _Frame:
    name: str  # file name or image id, for messages
    image_id: Any
    evaluated: bool  # the protocol scores this frame (decided on the ground truth)
    persons: List[_Person] = field(default_factory=list)
    regions: List[np.ndarray] = field(default_factory=list)  # (V, 2) polygons
    has_regions: bool = False


@dataclass
class _NonFinite:
    """Non-finite values met while reading one file. In ground truth they are an error (no
    distance to them exists); in predictions they are counted, and reported once per file."""

    path: Path
    ground_truth: bool
    scores: int = 0  # present joints whose listed score is not a finite number
    coords: int = 0  # present joints with a NaN/inf coordinate

    def check_gt(self, values: Sequence[float], where: str, track_id: Any) -> None:
        if self.ground_truth and not all(math.isfinite(v) for v in values):
            raise PoseTrackEvalError(
                f"{where}: ground-truth person (track_id {track_id}) has non-finite keypoint "
                f"values; every coordinate must be a finite number"
            )

    def warn(self) -> None:
        # Ground-truth scores are not used; ground-truth coordinates raised already.
        if not self.ground_truth and (self.scores or self.coords):
            logger.warning(
                "%s: %d non-finite joint scores (scored %g, as poseval does) and %d joint(s) "
                "with non-finite coordinates (they never match)",
                self.path, self.scores, MIN_SCORE, self.coords,
            )  # fmt: skip


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise PoseTrackEvalError(f"cannot read {what} file {path}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PoseTrackEvalError(f"{what} file {path} is not valid json: {e}") from e


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _first(v: Any, default: Any = None) -> Any:
    # 2017 files wrap every scalar in a one-element list.
    if isinstance(v, (list, tuple)):
        return v[0] if len(v) else default
    return default if v is None else v


def _track_id(value: Any, where: str) -> Optional[int]:
    value = _first(value)
    if value is None:
        return None
    f = _as_float(value)
    if not math.isfinite(f) or f != int(f):
        raise PoseTrackEvalError(f"{where}: track_id {value!r} is not an integer")
    return int(f)


def _head_size(box: Any, corners: bool) -> float:
    if not box or len(box) != 4:
        return math.nan
    x1, y1, a, b = (_as_float(v) for v in box)
    w, h = (a - x1, b - y1) if corners else (a, b)
    return 0.6 * math.hypot(w, h)


def _joint_exists(x: np.ndarray, y: np.ndarray, v: np.ndarray, version: str) -> np.ndarray:
    if version == "21":
        return (x > 0) & (y > 0)
    # poseval's 2018 -> 2017 converter drops exactly the joints written as (0, 0, 0).
    return ~((x == 0) & (y == 0) & (v == 0))


def _slot_table(data: Dict[str, Any], n_values: int, where: str) -> List[Optional[int]]:
    """For each slot of the file's keypoint list, the internal joint index (None: unused)."""
    names = None
    cats = data.get("categories")
    if isinstance(cats, list) and cats and isinstance(cats[0], dict):
        names = cats[0].get("keypoints")
    if not names:
        if n_values == 17 * 3:
            names = _OFFICIAL17
        elif n_values == 15 * 3:
            names = JOINT_NAMES
        else:
            raise PoseTrackEvalError(
                f"{where}: {n_values} keypoint values and no categories[0].keypoints; "
                f"expected 51 (17 x 3) or 45 (15 x 3)"
            )
    table = [_JOINT_INDEX.get(n) for n in names]
    missing = [n for n in JOINT_NAMES if n not in names]
    if missing:
        raise PoseTrackEvalError(f"{where}: categories[0].keypoints lacks joints {missing}")
    return table


def _person_2018(
    ann: Dict[str, Any], table: List[Optional[int]], version: str, where: str, bad: _NonFinite
) -> _Person:
    kp = ann.get("keypoints") or []
    arr = np.asarray([_as_float(v) for v in kp], dtype=np.float64)
    bad.check_gt(arr.tolist(), where, ann.get("track_id"))
    if arr.size and arr.size != 3 * len(table):
        raise PoseTrackEvalError(
            f"{where}: annotation {ann.get('id')} has {arr.size} keypoint values, "
            f"expected {3 * len(table)}"
        )
    xy = np.zeros((NUM_JOINTS, 2))
    has = np.zeros(NUM_JOINTS, dtype=bool)
    score = np.full(NUM_JOINTS, MIN_SCORE)
    raw_scores = ann.get("scores")
    if arr.size:
        arr = arr.reshape(-1, 3)
        exists = _joint_exists(arr[:, 0], arr[:, 1], arr[:, 2], version)
        for slot, j in enumerate(table):
            if j is None:
                continue
            xy[j] = arr[slot, :2]
            has[j] = bool(exists[slot])
            # poseval reads scores only from a non-empty list; missing or NaN -> MIN_SCORE.
            if isinstance(raw_scores, list) and slot < len(raw_scores):
                s = _as_float(raw_scores[slot])
                if math.isfinite(s):
                    score[j] = s
                elif has[j]:
                    bad.scores += 1
            if has[j] and not np.isfinite(xy[j]).all():
                bad.coords += 1
    return _Person(
        xy=xy,
        has=has,
        score=score,
        track_id=_track_id(ann.get("track_id"), where),
        head_size=_head_size(ann.get("bbox_head"), corners=False),
    )


def _regions_2018(im: Dict[str, Any], where: str) -> Tuple[List[np.ndarray], bool]:
    xs = im.get("ignore_regions_x") or []
    ys = im.get("ignore_regions_y") or []
    if len(xs) != len(ys):
        raise PoseTrackEvalError(
            f"{where}: {len(xs)} ignore_regions_x polygons but {len(ys)} ignore_regions_y"
        )
    polys = []
    for px, py in zip(xs, ys):
        if len(px) != len(py):
            raise PoseTrackEvalError(f"{where}: ignore region with {len(px)} x and {len(py)} y")
        polys.append(np.stack([np.asarray(px, float), np.asarray(py, float)], 1).reshape(-1, 2))
    return polys, len(polys) > 0


def _parse_2018(
    data: Dict[str, Any], path: Path, version: str, images: List[Dict], bad: _NonFinite
) -> List[_Frame]:
    anns = data.get("annotations")
    if not isinstance(anns, list):
        # Read as "nobody", a missing list would score a prediction file as no detections
        # and drop a ground-truth video's persons from scoring.
        what, means = (
            ("ground-truth", "its") if bad.ground_truth else ("prediction", "the predicted")
        )
        found = "no such key" if "annotations" not in data else f"a {type(anns).__name__}"
        raise PoseTrackEvalError(
            f"{what} file {path}: 'annotations' must be the list of {means} persons ([] for "
            f"none), found {found}"
        )
    ids = [im.get("id") for im in images]
    pos = {}
    for i, iid in enumerate(ids):
        pos.setdefault(iid, i)
    by_image: List[List[Dict[str, Any]]] = [[] for _ in images]
    table = None
    for a in anns:
        iid = a.get("image_id")
        if iid not in pos:
            raise PoseTrackEvalError(
                f"{path}: annotation {a.get('id')} is for image_id {iid}, a frame the ground "
                f"truth does not have (not among the listed images)"
            )
        by_image[pos[iid]].append(a)
        if table is None and a.get("keypoints"):
            table = _slot_table(data, len(a["keypoints"]), str(path))
    frames = []
    for i, im in enumerate(images):
        name = im.get("file_name", im.get("id"))
        where = f"{path}, frame {i} ({name})"
        persons = [_person_2018(a, table or [], version, where, bad) for a in by_image[i]]
        regions, has_regions = _regions_2018(im, where)
        if version == "21":
            evaluated = bool(im.get("is_labeled", len(by_image[i]) > 0))
        else:
            evaluated = len(by_image[i]) > 0
        frames.append(_Frame(str(name), im.get("id"), evaluated, persons, regions, has_regions))
    return frames


def _parse_2017(data: Dict[str, Any], path: Path, version: str, bad: _NonFinite) -> List[_Frame]:
    frames = []
    for i, entry in enumerate(data.get("annolist") or []):
        try:
            name = entry["image"][0]["name"]
        except (KeyError, IndexError, TypeError):
            name = str(i)
        where = f"{path}, frame {i} ({name})"
        rects = entry.get("annorect") or []
        persons = []
        for r in rects:
            ap = r.get("annopoints")
            # poseval's removeRectsWithoutPoints: a rect needs annopoints[0]["point"].
            if not (isinstance(ap, list) and ap and isinstance(ap[0], dict) and "point" in ap[0]):
                continue
            xy = np.zeros((NUM_JOINTS, 2))
            has = np.zeros(NUM_JOINTS, dtype=bool)
            score = np.full(NUM_JOINTS, MIN_SCORE)
            for pt in ap[0]["point"] or []:
                jid = _first(pt.get("id"))
                if jid is None or int(jid) not in _PT17_IDS:
                    continue
                j = _JOINT_INDEX[_PT17_IDS[int(jid)]]
                if has[j]:
                    continue  # poseval's getPointGTbyID takes the first point with an id
                x, y = _as_float(_first(pt.get("x"))), _as_float(_first(pt.get("y")))
                bad.check_gt((x, y), where, _first(r.get("track_id")))
                if version == "21" and not (x > 0 and y > 0):
                    continue
                xy[j] = (x, y)
                has[j] = True
                bad.coords += not (math.isfinite(x) and math.isfinite(y))
                s = _as_float(_first(pt.get("score")))
                if math.isfinite(s):
                    score[j] = s
                elif pt.get("score") is not None:
                    bad.scores += 1
            box = [_first(r.get(k)) for k in ("x1", "y1", "x2", "y2")]
            persons.append(
                _Person(
                    xy=xy,
                    has=has,
                    score=score,
                    track_id=_track_id(r.get("track_id"), where),
                    head_size=_head_size(box if None not in box else None, corners=True),
                )
            )
        regions = []
        for reg in entry.get("ignore_regions") or []:
            pts = reg.get("point") or []
            regions.append(
                np.asarray(
                    [(_as_float(_first(p["x"])), _as_float(_first(p["y"]))) for p in pts], float
                ).reshape(-1, 2)
            )
        if version == "21":
            evaluated = bool(_first(entry.get("is_labeled"), len(rects) > 0))
        else:
            evaluated = len(rects) > 0
        # 2017 files carry no image ids: frames pair by position only.
        frames.append(_Frame(str(name), None, evaluated, persons, regions, len(regions) > 0))
    return frames


def _load_file(
    path: Path, version: str, what: str, gt_images: Optional[List[Dict]] = None
) -> Tuple[List[_Frame], Optional[List[Dict]]]:
    data = _read_json(path, what)
    if not isinstance(data, dict):
        raise PoseTrackEvalError(f"{what} file {path}: expected a json object")
    bad = _NonFinite(path, ground_truth=what == "ground-truth")
    if "annolist" in data:
        frames, images = _parse_2017(data, path, version, bad), None
    else:
        images = data.get("images")
        if images is None:
            if gt_images is None:
                raise PoseTrackEvalError(f"{what} file {path} has neither 'images' nor 'annolist'")
            # A prediction file without 'images' is read against the ground truth's frames.
            images = gt_images
        if not isinstance(images, list):
            raise PoseTrackEvalError(f"{what} file {path}: 'images' is not a list")
        frames = _parse_2018(data, path, version, images, bad)
    bad.warn()
    return frames, images


def _check_pair(gt_path: Path, pr_path: Path, gt: List[_Frame], pr: List[_Frame]) -> None:
    if len(pr) > len(gt):
        extra = pr[len(gt)]
        raise PoseTrackEvalError(
            f"{pr_path}: prediction for frame {len(gt)} ({extra.name}), a frame the ground "
            f"truth {gt_path} does not have ({len(gt)} frames)"
        )
    if len(pr) < len(gt):
        raise PoseTrackEvalError(
            f"{pr_path}: lists {len(pr)} frames but the ground truth {gt_path} has {len(gt)}; "
            f"a prediction file must list the same frames in the same order"
        )
    for i, (g, p) in enumerate(zip(gt, pr)):
        if g.image_id is not None and p.image_id is not None and g.image_id != p.image_id:
            raise PoseTrackEvalError(
                f"{pr_path}: frame {i} is image {p.image_id} ({p.name}) but the ground truth "
                f"{gt_path} has image {g.image_id} ({g.name}) there; a prediction file must "
                f"list the same frames in the same order"
            )
    for path, frames in ((gt_path, gt), (pr_path, pr)):
        for i, p in enumerate(frames):
            tids = [q.track_id for q in p.persons if q.track_id is not None]
            dup = next((t for k, t in enumerate(tids) if t in tids[:k]), None)
            if dup is not None:
                raise PoseTrackEvalError(
                    f"{path}: frame {i} ({p.name}) has track_id {dup} twice; track ids must "
                    f"be unique within a frame"
                )
    for i, p in enumerate(pr):
        for person in p.persons:
            tid = person.track_id
            if tid is not None and tid >= MAX_TRACK_ID:
                raise PoseTrackEvalError(
                    f"{pr_path}: frame {i} ({p.name}): track_id {tid} >= {MAX_TRACK_ID}"
                )


# ------------------------------------------------------------------------------------------
# Ignore regions
# ------------------------------------------------------------------------------------------
def point_in_polygons(points: np.ndarray, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Which points lie strictly inside any polygon (shapely ``Polygon.contains`` semantics).

    Uses the even-odd rule (what GEOS's ray-crossing locator gives, also for self-intersecting
    rings); points on an edge or vertex are outside, as ``contains`` excludes the boundary.

    Args:
        points: (M, 2) x, y.
        polygons: list of (V, 2) vertex arrays (implicitly closed).

    Returns:
        (M,) bool.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    inside_any = np.zeros(len(points), dtype=bool)
    px, py = points[:, 0:1], points[:, 1:2]  # (M, 1)
    for poly in polygons:
        poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(poly) < 3:
            # shapely refuses such a ring (poseval would crash); it can contain nothing.
            logger.warning("ignoring an ignore region with %d vertices", len(poly))
            continue
        x1, y1 = poly[:, 0][None], poly[:, 1][None]  # (1, V)
        x2, y2 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
        with np.errstate(divide="ignore", invalid="ignore"):
            straddle = (y1 > py) != (y2 > py)
            x_cross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            crossings = (straddle & (px < x_cross)).sum(1)
        inside = crossings % 2 == 1
        # Boundary: collinear with an edge and within its extent.
        cross = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
        on_edge = (
            (cross == 0)
            & (px >= np.minimum(x1, x2))
            & (px <= np.maximum(x1, x2))
            & (py >= np.minimum(y1, y2))
            & (py <= np.maximum(y1, y2))
        ).any(1)
        inside_any |= inside & ~on_edge
    return inside_any


def _apply_ignore_regions(persons: List[_Person], regions: List[np.ndarray]) -> List[_Person]:
    kept = []
    for p in persons:
        if p.has.any():
            idx = np.nonzero(p.has)[0]
            drop = point_in_polygons(p.xy[idx], regions)
            if drop.any():
                has = p.has.copy()
                has[idx[drop]] = False
                p = _Person(p.xy, has, p.score, p.track_id, p.head_size)
        # poseval drops a person left without joints (here only, where regions exist).
        if p.has.any():
            kept.append(p)
    return kept


# ------------------------------------------------------------------------------------------
# Per-frame matching (poseval's assignGTmulti)
# ------------------------------------------------------------------------------------------
@dataclass
class _FrameResult:
    scores: List[np.ndarray]  # per joint, the predicted joints' scores in prediction order
    labels: List[np.ndarray]  # per joint, True for a true positive
    n_gt: np.ndarray  # (15,) annotated ground-truth joints
    # per joint: (gt track ids, predicted track ids, (n_gt, n_pr) distances, NaN = no match)
    mot: List[Tuple[List[Any], List[Any], np.ndarray]]


def _match_frame(gt: List[_Person], pr: List[_Person], where: str) -> _FrameResult:
    n_g, n_p = len(gt), len(pr)
    has_gt = np.array([p.has for p in gt], dtype=bool).reshape(n_g, NUM_JOINTS)
    has_pr = np.array([p.has for p in pr], dtype=bool).reshape(n_p, NUM_JOINTS)
    score = np.array([p.score for p in pr], dtype=np.float64).reshape(n_p, NUM_JOINTS)
    labels = np.zeros((n_p, NUM_JOINTS), dtype=bool)
    mot = []
    if n_g and n_p:
        for g in gt:
            if g.has.any() and not math.isfinite(g.head_size):
                raise PoseTrackEvalError(
                    f"{where}: ground-truth person (track_id {g.track_id}) has joints but no "
                    f"valid bbox_head, so no head size to normalize distances"
                )
        gxy = np.stack([g.xy for g in gt])  # (G, 15, 2)
        pxy = np.stack([p.xy for p in pr])  # (P, 15, 2)
        head = np.array([g.head_size for g in gt])  # (G,)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.linalg.norm(pxy[:, None] - gxy[None], axis=-1) / head[None, :, None]
        dist = np.where(has_pr[:, None, :] & has_gt[None, :, :], d, np.inf)  # (P, G, 15)
        with np.errstate(invalid="ignore"):
            match = dist <= DIST_THRESH
        n_ann = has_gt.sum(1)
        pck = match.sum(2).astype(np.float64)
        pck[:, n_ann > 0] /= n_ann[n_ann > 0]
        # Each prediction keeps only its best person (argmax: ties -> lowest index) ...
        best = pck.argmax(1)
        keep = np.zeros_like(pck)
        keep[np.arange(n_p), best] = pck[np.arange(n_p), best]
        # ... then each person takes its best remaining prediction; a zero stays unmatched.
        pr_to_gt = keep.argmax(0)
        pr_to_gt[keep.max(0) == 0] = -1
        for g, p in enumerate(pr_to_gt):
            if p >= 0:
                labels[p] = match[p, g]
        gt_ids = [g.track_id for g in gt]
        pr_ids = [p.track_id for p in pr]
        for j in range(NUM_JOINTS):
            gi = np.nonzero(has_gt[:, j])[0]
            pi = np.nonzero(has_pr[:, j])[0]
            dj = dist[np.ix_(pi, gi, [j])][..., 0].T  # (nG_j, nP_j)
            mj = match[np.ix_(pi, gi, [j])][..., 0].T
            mot.append(([gt_ids[i] for i in gi], [pr_ids[i] for i in pi], np.where(mj, dj, np.nan)))
    else:
        # poseval: with no ground truth or no prediction in the frame, every joint gets one
        # object and one hypothesis that cannot match (one miss + one false positive).
        mot = [([0], [0], np.full((1, 1), np.nan)) for _ in range(NUM_JOINTS)]
    scores_j, labels_j = [], []
    for j in range(NUM_JOINTS):
        sel = has_pr[:, j]
        scores_j.append(score[sel, j])
        labels_j.append(labels[sel, j])
    return _FrameResult(scores_j, labels_j, has_gt.sum(0).astype(np.float64), mot)


# ------------------------------------------------------------------------------------------
# CLEAR-MOT accumulation (py-motmetrics' MOTAccumulator semantics)
# ------------------------------------------------------------------------------------------
def _assign(cost: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment over the finite entries: most matches first, then least cost."""
    valid = np.isfinite(cost)
    if not valid.any():
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    # An invalid edge costs more than any all-valid alternative (motmetrics' lap helper), so
    # the solution maximizes the number of valid matches before minimizing distance.
    c = np.abs(cost[valid]).max() + 1.0
    big = 2.0 * min(cost.shape) * c + 1.0
    rows, cols = linear_sum_assignment(np.where(valid, cost, big))
    ok = valid[rows, cols]
    return rows[ok], cols[ok]


class _MotAccumulator:
    """Per-joint, per-video CLEAR-MOT counts."""

    def __init__(self) -> None:
        self.last_match: Dict[Any, Any] = {}  # object id -> hypothesis id last matched
        self.objects = 0
        self.misses = 0
        self.false_positives = 0
        self.switches = 0
        self.matches = 0  # including switches (motmetrics' num_detections)
        self.sum_dist = 0.0

    def update(self, oids: List[Any], hids: List[Any], dist: np.ndarray) -> None:
        n_o, n_h = len(oids), len(hids)
        dist = np.asarray(dist, dtype=np.float64).reshape(n_o, n_h).copy()
        o_done = np.zeros(n_o, dtype=bool)
        h_done = np.zeros(n_h, dtype=bool)
        if n_o and n_h:
            # 1. Keep last frame's correspondences that are still within the threshold.
            for i, o in enumerate(oids):
                if o not in self.last_match:
                    continue
                js = [j for j, h in enumerate(hids) if not h_done[j] and h == self.last_match[o]]
                if js and np.isfinite(dist[i, js[0]]):
                    o_done[i] = h_done[js[0]] = True
                    self.matches += 1
                    self.sum_dist += dist[i, js[0]]
            # 2. Hungarian on the rest; a match to another hypothesis is an id switch.
            dist[o_done, :] = np.nan
            dist[:, h_done] = np.nan
            for i, j in zip(*_assign(dist)):
                o, h = oids[i], hids[j]
                if o in self.last_match and self.last_match[o] != h:
                    self.switches += 1
                self.matches += 1
                self.sum_dist += dist[i, j]
                self.last_match[o] = h
                o_done[i] = h_done[j] = True
        self.objects += n_o
        self.misses += int((~o_done).sum())
        self.false_positives += int((~h_done).sum())


# ------------------------------------------------------------------------------------------
# AP (poseval's computeRPC + VOCap)
# ------------------------------------------------------------------------------------------
def _average_precision(scores: np.ndarray, labels: np.ndarray, n_gt: float) -> Tuple[float, ...]:
    """All-point interpolated AP (x100), final precision and recall (x100) for one joint."""
    if len(scores) == 0:
        return 0.0, 0.0, 0.0  # poseval leaves them at zero
    # Same call as poseval (default introsort, reversed) so that ties order identically.
    order = np.asarray(scores, dtype=np.float64).argsort()[::-1]
    tp = np.cumsum(labels[order].astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / n_gt
    precision = tp / np.arange(1, len(tp) + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone precision envelope
    # NaN (no ground truth) propagates as in poseval: np.fmax would hide it.
    if np.isnan(mrec).any():
        return math.nan, float(precision[-1] * 100), math.nan
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    ap = float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))
    return ap * 100.0, float(precision[-1] * 100.0), float(recall[-1] * 100.0)


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _columns(per_joint: np.ndarray) -> Dict[str, float]:
    # poseval's getCum: plain means per column (a NaN joint makes its column NaN), Total = the
    # mean over the non-NaN joints.
    out = {name: float(np.mean(per_joint[list(idx)])) for name, idx in COLUMNS.items()}
    out["Total"] = _nanmean(per_joint)
    return out


# ------------------------------------------------------------------------------------------
# HOTA for PoseTrack21 (its official ``HOTAeypoints`` metric)
# ------------------------------------------------------------------------------------------
HOTA_ALPHAS = np.arange(0.05, 0.99, 0.05)  # 19 localization thresholds
_HOTA_INT = ("HOTA_TP", "HOTA_FN", "HOTA_FP")
_HOTA_ASS = ("AssA", "AssRe", "AssPr")


def _with_total(res: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    # PoseTrack21 appends a "Total" column per sequence: counts summed, ratios averaged.
    out = {}
    for k, v in res.items():
        tot = v.sum(1, keepdims=True) if k in _HOTA_INT else v.mean(1, keepdims=True)
        out[k] = np.concatenate([v, tot], 1)
    return out


def _hota_sequence(frames: List[Tuple[List[_Person], List[_Person]]]) -> Dict[str, np.ndarray]:
    """Per-sequence HOTA statistics, (19 alphas, 15 joints + total) arrays."""
    n_a = len(HOTA_ALPHAS)
    res = {k: np.zeros((n_a, NUM_JOINTS)) for k in _HOTA_INT + _HOTA_ASS + ("LocA",)}
    gt_ids = sorted({p.track_id for g, _ in frames for p in g})
    tr_ids = sorted({p.track_id for _, q in frames for p in q})
    gmap = {t: i for i, t in enumerate(gt_ids)}
    tmap = {t: i for i, t in enumerate(tr_ids)}
    n_gt_joints = sum((p.has.astype(np.int64) for g, _ in frames for p in g), np.zeros(NUM_JOINTS))
    n_tr_joints = sum((p.has.astype(np.int64) for _, q in frames for p in q), np.zeros(NUM_JOINTS))
    if not tr_ids or not gt_ids:
        key = "HOTA_FN" if not tr_ids else "HOTA_FP"
        res[key] += (n_gt_joints if not tr_ids else n_tr_joints)[None]
        res["LocA"][:] = 1.0
        return _with_total(res)
    gt_cnt = np.zeros((len(gt_ids), NUM_JOINTS))
    tr_cnt = np.zeros((len(tr_ids), NUM_JOINTS))
    for g, q in frames:
        for p in g:
            gt_cnt[gmap[p.track_id]] += p.has
        for p in q:
            tr_cnt[tmap[p.track_id]] += p.has
    matches = np.zeros((n_a, len(gt_ids), len(tr_ids), NUM_JOINTS))
    eps = np.finfo("float").eps
    for g, q in frames:
        # PoseTrack21 adds the whole sequence's joint counts here (not the frame's); kept so
        # that the numbers match the official ones.
        if not g:
            res["HOTA_FP"] += n_tr_joints[None]
            continue
        if not q:
            res["HOTA_FN"] += n_gt_joints[None]
            continue
        has_g = np.stack([p.has for p in g])
        has_q = np.stack([p.has for p in q])
        head = np.array([p.head_size for p in g])
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.linalg.norm(
                np.stack([p.xy for p in g])[:, None] - np.stack([p.xy for p in q])[None], axis=-1
            )
            d = d / head[:, None, None]
        dist = np.where(has_g[:, None] & has_q[None], d, np.inf)  # (G, P, 15)
        with np.errstate(invalid="ignore"):
            sim = np.nan_to_num(np.maximum(1.0 - dist / 0.5001, 0.0), nan=0.0)
        gi = np.array([gmap[p.track_id] for p in g])
        ti = np.array([tmap[p.track_id] for p in q])
        n_g_t, n_q_t = has_g.sum(0), has_q.sum(0)
        for j in range(NUM_JOINTS):
            rows, cols = linear_sum_assignment(-sim[:, :, j])
            s = sim[rows, cols, j]
            for a, alpha in enumerate(HOTA_ALPHAS):
                ok = s >= alpha - eps
                n = int(ok.sum())
                res["HOTA_TP"][a, j] += n
                res["HOTA_FN"][a, j] += n_g_t[j] - n
                res["HOTA_FP"][a, j] += n_q_t[j] - n
                if n:
                    res["LocA"][a, j] += s[ok].sum()
                    np.add.at(matches[a], (gi[rows[ok]], ti[cols[ok]], j), 1)
    for a in range(n_a):
        m = matches[a]
        tp = np.maximum(1.0, res["HOTA_TP"][a])
        union = np.maximum(1.0, gt_cnt[:, None] + tr_cnt[None] - m)
        res["AssA"][a] = (m * m / union).sum((0, 1)) / tp
        res["AssRe"][a] = (m * m / np.maximum(1.0, gt_cnt[:, None])).sum((0, 1)) / tp
        res["AssPr"][a] = (m * m / np.maximum(1.0, tr_cnt[None])).sum((0, 1)) / tp
    res["LocA"] = np.maximum(1e-10, res["LocA"]) / np.maximum(1e-10, res["HOTA_TP"])
    return _with_total(res)


def _hota_combine(seqs: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Combine sequences as TrackEval does; returns (19, 16) arrays incl. HOTA, DetA."""
    res = {k: sum(s[k] for s in seqs) for k in _HOTA_INT}
    tp = np.maximum(1.0, res["HOTA_TP"])
    for k in _HOTA_ASS:
        res[k] = sum(s[k] * s["HOTA_TP"] for s in seqs) / tp
    loc = sum(s["LocA"] * s["HOTA_TP"] for s in seqs)
    res["LocA"] = np.maximum(1e-10, loc) / np.maximum(1e-10, res["HOTA_TP"])
    tp_, fn, fp = res["HOTA_TP"], res["HOTA_FN"], res["HOTA_FP"]
    res["DetRe"] = tp_ / np.maximum(1.0, tp_ + fn)
    res["DetPr"] = tp_ / np.maximum(1.0, tp_ + fp)
    res["DetA"] = tp_ / np.maximum(1.0, tp_ + fn + fp)
    res["HOTA"] = np.sqrt(res["DetA"] * res["AssA"])
    return res


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------
def _collect(paths: Union[str, Path, Sequence[Union[str, Path]]], what: str) -> List[Path]:
    if isinstance(paths, (str, Path)):
        p = Path(paths)
        if p.is_dir():
            files = sorted(p.glob("*.json"))
            if not files:
                raise PoseTrackEvalError(f"{what} folder {p} holds no *.json files")
            return files
        if p.is_file():
            return [p]
        raise PoseTrackEvalError(f"{what} path {p} does not exist")
    files = [Path(f) for f in paths]
    for f in files:
        if not f.is_file():
            raise PoseTrackEvalError(f"{what} file {f} does not exist")
    return files


def _pair_files(
    gt: Union[str, Path, Sequence], pred: Union[str, Path, Sequence]
) -> List[Tuple[Path, Path]]:
    gt_files = _collect(gt, "ground-truth")
    if isinstance(pred, (str, Path)) and Path(pred).is_dir():
        pred_dir = Path(pred)
        pairs = []
        for g in gt_files:
            p = pred_dir / g.name
            if not p.is_file():
                raise PoseTrackEvalError(
                    f"no prediction file for ground-truth video {g.name}: expected {p}"
                )
            pairs.append((g, p))
        pred_files = {f.name: f for f in pred_dir.glob("*.json")}
    else:
        pred_files = {f.name: f for f in _collect(pred, "prediction")}
        pairs = []
        for g in gt_files:
            if g.name not in pred_files:
                raise PoseTrackEvalError(
                    f"no prediction file for ground-truth video {g.name} among "
                    f"{sorted(pred_files)}"
                )
            pairs.append((g, pred_files[g.name]))
    stray = sorted(set(pred_files) - {g.name for g in gt_files})
    if stray:
        logger.warning(
            "%d prediction file(s) for videos the ground truth lacks, not scored: %s",
            len(stray), ", ".join(str(pred_files[n]) for n in stray),
        )  # fmt: skip
    return pairs


def evaluate_posetrack(
    gt_dir_or_files: Union[str, Path, Sequence[Union[str, Path]]],
    pred_dir_or_files: Union[str, Path, Sequence[Union[str, Path]]],
    track: bool = False,
    version: str = "2018",
) -> Dict[str, Any]:
    """Score predictions with the official PoseTrack protocol.

    Args:
        gt_dir_or_files: a folder of ground-truth per-video json files, one file, or a list.
        pred_dir_or_files: a folder holding a prediction file of the same name for every
            ground-truth file, or a list of files (paired by file name).
        track: also compute MOTA, MOTP, precision and recall (needs track ids).
        version: "2017" or "2018" (poseval; both formats are read either way) or "21"
            (frames by ``is_labeled``, a joint exists iff x > 0 and y > 0).

    Returns:
        dict with the AP columns "Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee",
        "Ankle", "Total" (percent; Total = mean over the 15 joints); with ``track`` also
        "MOTA", "MOTP", "Precision", "Recall" (totals over joints) and "MOTA_columns" (the
        per-column MOTA row poseval prints); "per_joint" (dict of per-joint dicts: "AP",
        "AP_precision", "AP_recall", and with ``track`` "MOTA", "MOTP", "Precision",
        "Recall", "num_objects", ...); "num_videos", "num_frames" (evaluated frames). With
        ``track`` and version "21" also PoseTrack21's "HOTA", "DetA", "AssA", "LocA",
        "DetRe", "DetPr", "AssRe", "AssPr" (mean over the 19 alphas, percent).

    Raises:
        PoseTrackEvalError: a missing prediction file, a prediction for a frame the ground
            truth lacks, duplicate track ids in a frame, a file without ``annotations``, a
            non-finite ground-truth coordinate, malformed files.
    """
    version = str(version)
    if version not in ("2017", "2018", "21"):
        raise ValueError(f"version must be '2017', '2018' or '21', got {version!r}")
    pairs = _pair_files(gt_dir_or_files, pred_dir_or_files)

    scores: List[List[np.ndarray]] = [[] for _ in range(NUM_JOINTS)]
    labels: List[List[np.ndarray]] = [[] for _ in range(NUM_JOINTS)]
    n_gt = np.zeros(NUM_JOINTS)
    accs_total = [_MotAccumulator() for _ in range(NUM_JOINTS)]
    n_frames = 0
    hota_seqs: List[Dict[str, np.ndarray]] = []
    for gt_path, pr_path in pairs:
        gt_frames, gt_images = _load_file(gt_path, version, "ground-truth")
        pr_frames, _ = _load_file(pr_path, version, "prediction", gt_images)
        _check_pair(gt_path, pr_path, gt_frames, pr_frames)
        results = []
        hota_frames: List[Tuple[List[_Person], List[_Person]]] = []
        for i, (g, p) in enumerate(zip(gt_frames, pr_frames)):
            if not g.evaluated:
                continue
            gt_persons, pr_persons = g.persons, p.persons
            if g.has_regions:
                gt_persons = _apply_ignore_regions(gt_persons, g.regions)
                pr_persons = _apply_ignore_regions(pr_persons, g.regions)
            where = f"{gt_path.name}, frame {i} ({g.name})"
            if track:
                for who, persons, path in (
                    ("ground-truth", gt_persons, gt_path),
                    ("predicted", pr_persons, pr_path),
                ):
                    if any(q.track_id is None for q in persons):
                        raise PoseTrackEvalError(
                            f"{path}: frame {i} ({g.name}) has a {who} person without "
                            f"track_id; tracking evaluation needs one per person"
                        )
            results.append(_match_frame(gt_persons, pr_persons, where))
            hota_frames.append((gt_persons, pr_persons))
        if track and version == "21":
            hota_seqs.append(_hota_sequence(hota_frames))
        n_frames += len(results)
        for r in results:
            for j in range(NUM_JOINTS):
                scores[j].append(r.scores[j])
                labels[j].append(r.labels[j])
            n_gt += r.n_gt
        if track:
            if len(results) <= 1:
                logger.info(
                    "%s: %d evaluated frame(s); the protocol leaves each video's last frame "
                    "out of MOTA, so this video adds nothing to it",
                    gt_path.name,
                    len(results),
                )
            # poseval leaves the last evaluated frame of every video out of MOTA.
            for j in range(NUM_JOINTS):
                acc = _MotAccumulator()
                for r in results[:-1]:
                    acc.update(*r.mot[j])
                tot = accs_total[j]
                for k in ("objects", "misses", "false_positives", "switches", "matches"):
                    setattr(tot, k, getattr(tot, k) + getattr(acc, k))
                tot.sum_dist += acc.sum_dist

    ap = np.zeros(NUM_JOINTS)
    ap_pre = np.zeros(NUM_JOINTS)
    ap_rec = np.zeros(NUM_JOINTS)
    for j in range(NUM_JOINTS):
        s = np.concatenate(scores[j]) if scores[j] else np.zeros(0)
        lab = np.concatenate(labels[j]) if labels[j] else np.zeros(0, dtype=bool)
        denom = max(n_gt[j], 1.0) if version == "21" else n_gt[j]
        ap[j], ap_pre[j], ap_rec[j] = _average_precision(s, lab, denom)

    out: Dict[str, Any] = dict(_columns(ap))
    per_joint: Dict[str, Dict[str, float]] = {
        "AP": dict(zip(JOINT_NAMES, ap.tolist())),
        "AP_precision": dict(zip(JOINT_NAMES, ap_pre.tolist())),
        "AP_recall": dict(zip(JOINT_NAMES, ap_rec.tolist())),
        "num_gt": dict(zip(JOINT_NAMES, n_gt.tolist())),
    }
    if track:
        mota, motp, pre, rec = (np.zeros(NUM_JOINTS) for _ in range(4))
        for j, a in enumerate(accs_total):
            n_obj = a.objects if a.objects > 0 else math.nan
            mota[j] = 100.0 * (1.0 - (a.misses + a.switches + a.false_positives) / n_obj)
            motp[j] = 0.0 if a.matches == 0 else 100.0 * (1.0 - a.sum_dist / a.matches)
            n_det = a.matches + a.false_positives
            pre[j] = 100.0 * a.matches / n_det if n_det > 0 else math.nan
            rec[j] = 100.0 * a.matches / n_obj
        if np.isnan(mota).all():
            logger.warning(
                "MOTA is undefined (NaN): no video has a scored frame besides its last one "
                "(the protocol leaves the last frame of every video out)"
            )
        out["MOTA"] = _nanmean(mota)
        out["MOTP"] = _nanmean(motp)
        out["Precision"] = _nanmean(pre)
        out["Recall"] = _nanmean(rec)
        out["MOTA_columns"] = _columns(mota)
        for key, arr in (("MOTA", mota), ("MOTP", motp), ("Precision", pre), ("Recall", rec)):
            per_joint[key] = dict(zip(JOINT_NAMES, arr.tolist()))
        for key in ("objects", "misses", "false_positives", "switches", "matches"):
            per_joint[f"num_{key}"] = {
                n: int(getattr(a, key)) for n, a in zip(JOINT_NAMES, accs_total)
            }
    if hota_seqs:
        # PoseTrack21 reports each field averaged over the 19 alphas; column 15 is "Total".
        comb = _hota_combine(hota_seqs)
        for key in ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr"):
            vals = 100.0 * comb[key].mean(0)
            out[key] = float(vals[NUM_JOINTS])
            per_joint[key] = dict(zip(JOINT_NAMES, vals[:NUM_JOINTS].tolist()))
    out["per_joint"] = per_joint
    out["num_videos"] = len(pairs)
    out["num_frames"] = n_frames
    return out


# ------------------------------------------------------------------------------------------
# Table and command line
# ------------------------------------------------------------------------------------------
def _cell(v: float) -> str:
    return "{:>5}".format("%1.1f" % v)


def format_table(results: Dict[str, Any], track: Optional[bool] = None) -> str:
    """The table poseval prints: an AP row and, for tracking, a MOTA row.

    Args:
        results: the dict returned by :func:`evaluate_posetrack`.
        track: include the MOTA row (default: when ``results`` has "MOTA").

    Returns:
        the table as a multi-line string (LaTeX-ish ``&`` separated, as poseval's).
    """
    track = ("MOTA" in results) if track is None else track
    cols = ["Head", "Shou", "Elb ", "Wri ", "Hip ", "Knee", "Ankl"]
    keys = list(COLUMNS)
    lines = ["Average Precision (AP) metric:"]
    lines.append("& " + " & ".join(cols) + " & Total\\\\")
    lines.append("& " + " & ".join(_cell(results[k]) for k in keys + ["Total"]) + " \\\\")
    if track:
        mc = results["MOTA_columns"]
        lines.append("")
        lines.append("Multiple Object Tracking (MOT) metrics:")
        lines.append("& " + " & ".join(["MOTA"] * 8 + ["MOTP", "Prec", "Rec "]) + "\\\\")
        lines.append("& " + " & ".join(cols + ["Total"] * 4) + "\\\\")
        vals = [mc[k] for k in keys + ["Total"]] + [
            results["MOTP"],
            results["Precision"],
            results["Recall"],
        ]
        lines.append("& " + " & ".join(_cell(v) for v in vals) + " \\\\")
    if "HOTA" in results:
        keys = ["HOTA", "DetA", "AssA", "LocA"]
        lines.append("")
        lines.append("PoseTrack21 HOTA (Total, mean over alphas):")
        lines.append("& " + " & ".join(keys) + "\\\\")
        lines.append("& " + " & ".join(_cell(results[k]) for k in keys) + " \\\\")
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict json has no NaN
    return obj


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: print poseval's table and optionally write the results as json."""
    parser = argparse.ArgumentParser(
        prog="python -m vpose_d2.evaluation.posetrack",
        description="Official PoseTrack evaluation (poseval protocol): per-joint AP and MOTA.",
    )
    parser.add_argument("gt_dir", help="folder of ground-truth per-video json files")
    parser.add_argument("pred_dir", help="folder of prediction json files (same names)")
    parser.add_argument("--track", action="store_true", help="also compute MOTA")
    parser.add_argument("--json", metavar="OUT", help="write the results to this json file")
    parser.add_argument("--version", default="2018", choices=["2017", "2018", "21"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        res = evaluate_posetrack(args.gt_dir, args.pred_dir, track=args.track, version=args.version)
    except PoseTrackEvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(res, track=args.track))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_json_safe(res), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
