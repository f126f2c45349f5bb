"""Write model predictions as official PoseTrack 2018 prediction files (one per video).

A prediction file copies the ground truth's ``images`` (same order) and ``categories`` and
lists one annotation per predicted person: ``keypoints`` 17 x 3 (ears and unpredicted joints
(0, 0, 0), predicted joints (x, y, 1)), ``scores`` 17 (the per-joint scores), ``track_id``,
``image_id``, ``score`` (the person's). Nothing non-finite is ever written.

:func:`write_posetrack_predictions` writes a dataset's videos against their ground-truth files;
:func:`write_posetrack_video` writes one video given its ``images`` (what the demo writes for a
clip without ground truth, with :func:`video_images` and :func:`instances_to_persons`). Both make
the annotations the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..data.datasets.posetrack import official_categories
from ..data.keypoints import COCO, OFFICIAL17_NAMES, POSETRACK, posetrack15_to_official17
from .posetrack import MAX_TRACK_ID, PoseTrackEvalError

__all__ = [
    "instances_to_persons",
    "video_images",
    "write_posetrack_predictions",
    "write_posetrack_video",
]

logger = logging.getLogger(__name__)

Person = Mapping[str, Any]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _resolve_frame(key: Any, images: List[Dict[str, Any]], mode: str, where: str) -> int:
    n = len(images)
    ids = {im.get("id"): i for i, im in enumerate(images)}
    try:
        k = int(key)
        is_int = k == key
    except (TypeError, ValueError):
        is_int = False
    if mode in ("index", "auto") and is_int and 0 <= k < n:
        return k
    if mode in ("image_id", "auto") and key in ids:
        return ids[key]
    expected = {
        "index": f"a frame index in 0..{n - 1}",
        "image_id": "an image id of the ground-truth file",
        "auto": f"a frame index in 0..{n - 1} or an image id of the ground-truth file",
    }[mode]
    raise PoseTrackEvalError(f"{where}: frame key {key!r} is not {expected}")


def _person_to_annotation(
    person: Person, image_id: Any, ann_id: int, track_id: int, where: str
) -> Dict[str, Any]:
    if "keypoints" not in person:
        raise PoseTrackEvalError(f"{where}: predicted person without 'keypoints'")
    kpts = _to_numpy(person["keypoints"])
    if kpts.ndim != 2 or kpts.shape[1] != 3 or kpts.shape[0] not in (15, 17):
        raise PoseTrackEvalError(
            f"{where}: keypoints of shape {tuple(kpts.shape)}; expected (15, 3) in the "
            f"PoseTrack layout (or (17, 3) official slots)"
        )
    if kpts.shape[0] == 15:
        kpts = posetrack15_to_official17(kpts)
    kpts = kpts.copy()
    # Unpredicted joints (non-finite coordinates) are written as (0, 0, 0), which the
    # protocol reads as absent.
    bad_xy = ~np.isfinite(kpts[:, :2]).all(1)
    if bad_xy.any():
        logger.warning("%s: %d non-finite joint(s) written as (0, 0, 0)", where, bad_xy.sum())
    scores = kpts[:, 2].copy()
    bad_score = ~np.isfinite(scores) & ~bad_xy
    if bad_score.any():
        logger.warning("%s: %d non-finite joint score(s) written as 0", where, bad_score.sum())
    scores[~np.isfinite(scores)] = 0.0
    out = np.zeros((17, 3))
    out[:, :2] = kpts[:, :2]
    out[:, 2] = 1.0
    out[bad_xy] = 0.0
    scores[bad_xy] = 0.0
    out[[3, 4]] = 0.0  # ears: never predicted in PoseTrack
    scores[[3, 4]] = 0.0
    pscore = person.get("score", float(np.mean(scores[np.r_[0:3, 5:17]])))
    pscore = float(_to_numpy(pscore).reshape(-1)[0])
    if not math.isfinite(pscore):
        logger.warning("%s: non-finite person score written as 0", where)
        pscore = 0.0
    return {
        "image_id": image_id,
        "id": ann_id,
        "category_id": 1,
        "track_id": int(track_id),
        "keypoints": [float(v) for v in out.reshape(-1)],
        "scores": [float(v) for v in scores],
        "score": pscore,
    }


def _track_ids(persons: Sequence[Person], where: str) -> List[int]:
    given: List[Optional[int]] = []
    for p in persons:
        t = p.get("track_id")
        if t is not None:
            t = float(_to_numpy(t).reshape(-1)[0])
            if not math.isfinite(t) or t != int(t) or t < 0:
                raise PoseTrackEvalError(f"{where}: track_id {t} is not a non-negative integer")
            t = int(t)
            if t >= MAX_TRACK_ID:
                raise PoseTrackEvalError(
                    f"{where}: track_id {t} >= {MAX_TRACK_ID}, which the protocol refuses"
                )
        given.append(t)
    seen = [t for t in given if t is not None]
    dup = {t for t in seen if seen.count(t) > 1}
    if dup:
        raise PoseTrackEvalError(f"{where}: duplicate track_id(s) {sorted(dup)} in one frame")
    # Persons without an id get the smallest ids unused in the frame (0..n-1 when none has one).
    free = (i for i in range(MAX_TRACK_ID) if i not in set(seen))
    return [t if t is not None else next(free) for t in given]


def write_posetrack_predictions(
    out_dir: Union[str, Path],
    gt_dir: Union[str, Path],
    predictions: Mapping[str, Mapping[Any, Sequence[Person]]],
    video_ids: Optional[Iterable[str]] = None,
    frame_key: str = "auto",
) -> List[Path]:
    """Write one official-format prediction file per video.

    Args:
        out_dir: folder to write ``<video_id>.json`` files into (created).
        gt_dir: folder of the ground-truth per-video files ``<video_id>.json`` (their
            ``images`` and ``categories`` are copied, so frames pair by position).
        predictions: video_id -> {frame key: list of persons}. A frame key is the 0-based
            position in the ground-truth file's image list or an image id (see
            ``frame_key``). A person is a mapping with ``keypoints`` ((15, 3) array or
            tensor in the PoseTrack layout, [x, y, score] in pixels; non-finite x/y marks an
            unpredicted joint), optional ``score`` (person score, default mean joint score)
            and optional ``track_id`` (int < 10000; frames without ids get 0..n-1).
        video_ids: also write (empty) files for these videos when they have no predictions,
            so every ground-truth video of a dataset has a prediction file.
        frame_key: "index" (positions), "image_id", or "auto" (a position when it is in
            range, else an image id).

    Returns:
        the written paths, in video order.

    Raises:
        PoseTrackEvalError: a video without ground-truth file, an unknown frame key, bad
            keypoint shapes, duplicate or out-of-range track ids.
    """
    if frame_key not in ("index", "image_id", "auto"):
        raise ValueError(f"frame_key must be 'index', 'image_id' or 'auto', got {frame_key!r}")
    out_dir, gt_dir = Path(out_dir), Path(gt_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = list(predictions)
    for v in video_ids or []:
        if v not in predictions:
            videos.append(v)
    written = []
    for video_id in videos:
        gt_file = gt_dir / f"{video_id}.json"
        if not gt_file.is_file():
            raise PoseTrackEvalError(
                f"video {video_id!r}: no ground-truth file {gt_file} to take the frames from"
            )
        gt = json.loads(gt_file.read_text())
        images = gt.get("images")
        if not isinstance(images, list):
            raise PoseTrackEvalError(
                f"{gt_file}: has no 'images' list (only 2018/21-format ground truth can be "
                f"written against)"
            )
        frames: Dict[int, Sequence[Person]] = {}
        for key, persons in (predictions.get(video_id) or {}).items():
            where = f"video {video_id}, frame key {key!r}"
            idx = _resolve_frame(key, images, frame_key, where)
            if idx in frames:
                raise PoseTrackEvalError(f"{where}: frame {idx} given twice")
            frames[idx] = persons
        path = out_dir / gt_file.name
        written.append(
            write_posetrack_video(
                path, images, frames, gt.get("categories", []), f"video {video_id}"
            )
        )
    logger.info("Wrote %d PoseTrack prediction files to %s", len(written), out_dir)
    return written


def write_posetrack_video(
    path: Union[str, Path],
    images: List[Dict[str, Any]],
    frames: Mapping[int, Sequence[Person]],
    categories: Optional[List[Dict[str, Any]]] = None,
    name: Optional[str] = None,
) -> Path:
    """Write one video's official-format prediction file (atomically: a temporary file, renamed).

    Args:
        path: the json file to write (its folder must exist).
        images: the file's ``images``, in frame order (copied from the ground truth, or made
            by :func:`video_images`).
        frames: position in ``images`` -> the frame's persons (as in
            :func:`write_posetrack_predictions`).
        categories: the file's ``categories``; default the official PoseTrack 2018 person.
        name: how messages name the video (default: the file name).

    Returns:
        ``path``.
    """
    path = Path(path)
    name = name or str(path)
    annotations = []
    for idx in sorted(frames):
        if not 0 <= idx < len(images):
            raise PoseTrackEvalError(f"{name}: frame {idx} outside its {len(images)} images")
        where = f"{name}, frame {idx} ({images[idx].get('file_name')})"
        persons = list(frames[idx])
        tids = _track_ids(persons, where)
        image_id = images[idx].get("id")
        for p, tid in zip(persons, tids):
            ann_id = len(annotations)
            annotations.append(_person_to_annotation(p, image_id, ann_id, tid, where))
    if categories is None:
        categories = official_categories()
    out = {"images": images, "categories": categories, "annotations": annotations}
    tmp = path.with_name(path.name + ".tmp")
    # allow_nan=False: a stray NaN would make the file invalid json; fail loudly instead.
    tmp.write_text(json.dumps(out, allow_nan=False))
    os.replace(tmp, path)
    return path


def video_images(video_name: str, file_names: Sequence[str]) -> List[Dict[str, Any]]:
    """The ``images`` of a PoseTrack 2018 file for a video that has no ground-truth file.

    Image ids follow the dataset's rule ``1VVVVVVFFFF``: 1, the video number (the name's
    leading digits, 0 when it has none; six digits) and the frame index (four digits); every
    frame counts as labeled.

    Args:
        video_name: e.g. "000001_mpiinew_test".
        file_names: per frame, the ``file_name`` to write.
    """
    match = re.match(r"\d+", video_name)
    number = int(match.group(0)) % 1_000_000 if match else 0
    images = []
    for frame, file_name in enumerate(file_names):
        image_id = int(f"1{number:06d}{frame:04d}")
        images.append({
            "file_name": file_name, "id": image_id, "frame_id": image_id,
            "vid_id": f"{number:06d}", "nframes": len(file_names), "is_labeled": True,
            "has_no_densepose": True, "ignore_regions_x": [], "ignore_regions_y": [],
        })  # fmt: skip
    return images


def instances_to_persons(
    instances: Any, keypoint_names: Sequence[str], min_score: float = 0.0
) -> List[Dict[str, Any]]:
    """One frame's predictions as the persons the writers take.

    Args:
        instances: Detectron2 ``Instances`` with ``pred_keypoints`` (N, K, 3) [x, y, score],
            ``scores`` (N,) and optionally ``pred_track_ids`` (N,), which become ``track_id``.
        keypoint_names: the model's K joint names (dataset metadata): the PoseTrack layout
            (15), or COCO / the official 17 slots (COCO's eyes then fill the head slots, the
            usual convention; see ``vpose_d2.data.keypoints.coco17_to_posetrack15``).
        min_score: persons scoring below are left out.

    Returns:
        dicts with ``keypoints`` (K, 3), ``score`` and, where tracked, ``track_id``.
    """
    names = tuple(keypoint_names)
    if names not in (POSETRACK.names, COCO.names, tuple(OFFICIAL17_NAMES)):
        raise ValueError(
            f"Cannot write poses with joints {list(names)} in the PoseTrack layout (it takes "
            f"the PoseTrack, COCO or official 17-slot joints)"
        )
    instances = instances.to("cpu")
    keypoints = instances.pred_keypoints.float().numpy()
    scores = instances.scores.float().numpy()
    tracks = instances.pred_track_ids.numpy() if instances.has("pred_track_ids") else None
    persons = []
    for i in np.flatnonzero(scores >= min_score):
        person = {"keypoints": keypoints[i], "score": float(scores[i])}
        # -1: the tracker left the person untracked; the writer gives it an id unused in the frame.
        if tracks is not None and tracks[i] >= 0:
            person["track_id"] = int(tracks[i])
        persons.append(person)
    return persons
