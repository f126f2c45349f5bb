"""The online tracker interface and the assignment logic every tracker shares.

A tracker follows the people of ONE video (or stream): call it on each frame's
``Instances`` in frame order; it sets ``pred_track_ids`` (N,) int64 on them and returns them.
``reset()`` starts a new video. Subclasses only say what a track remembers about its person
and how similar a remembered person is to a new one; matching, thresholds, track ages and id
allocation live here, so every tracker applies them the same way:

1. persons scoring below ``min_score`` are not tracked at all: id -1. They neither start nor
   continue a track, because DETR-style models output many low-score duplicates of each
   person, and a duplicate must not take a track over from the person it duplicates;
2. the other persons and the live tracks are matched one-to-one by the Hungarian algorithm
   (scipy) on the similarity, pairs below ``sim_thresh`` not allowed: most matches first,
   then the largest total similarity;
3. a matched person continues its track (the track's memory is updated); an unmatched one
   starts a new track with the next unused id (ids are never reused within a video);
4. a track matched by no person ages by one frame and ends after ``max_age`` such frames in a
   row; until then a person can still continue it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List, Tuple

import numpy as np
import torch
from detectron2.structures import Instances
from scipy.optimize import linear_sum_assignment

__all__ = ["Tracker", "match_tracks"]

logger = logging.getLogger(__name__)


def match_tracks(sim: np.ndarray, thresh: float) -> Tuple[np.ndarray, np.ndarray]:
    """One-to-one matches between tracks and persons whose similarity is at least ``thresh``.

    Args:
        sim: (T, N) similarity of every live track to every new person (NaN: no match).
        thresh: the least similarity a match may have.

    Returns:
        (rows, cols): matched track and person indices, each (M,) int64, M <= min(T, N).
    """
    sim = np.asarray(sim, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(sim) & (sim >= thresh)
    if not valid.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cost = -sim
    # A forbidden pair costs more than any set of allowed ones could save, so the assignment
    # first maximizes the number of allowed matches, then their total similarity.
    span = np.abs(cost[valid]).max() + 1.0
    big = 2.0 * min(sim.shape) * span + 1.0
    rows, cols = linear_sum_assignment(np.where(valid, cost, big))
    ok = valid[rows, cols]
    return rows[ok].astype(np.int64), cols[ok].astype(np.int64)


@dataclass
class _Track:
    track_id: int
    memory: Any  # what the subclass remembers about the person (its last pose, an embedding)
    missed: int = 0  # frames in a row without a match


class Tracker:
    """Base class: assigns track ids to the persons of consecutive frames of one video.

    Subclasses implement :meth:`_features` (per-person features of a frame),
    :meth:`_similarity` (tracks' memories vs new features) and :meth:`_update` (a track's new
    memory after a match); a new track's memory is its first person's features.

    Attributes:
        min_score (float): persons scoring below are not tracked (id -1).
        max_age (int): frames a track survives without a match.
        sim_thresh (float): the least similarity of a match.
    """

    def __init__(self, *, min_score: float, max_age: int, sim_thresh: float) -> None:
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        self.min_score = float(min_score)
        self.max_age = int(max_age)
        self.sim_thresh = float(sim_thresh)
        self.reset()

    def reset(self) -> None:
        """Forget every track: the next frame starts a new video, with ids from 0."""
        self._tracks: List[_Track] = []
        self._next_id = 0
        self._num_frames = 0

    @property
    def num_live_tracks(self) -> int:
        """Tracks that a person of the next frame can continue."""
        return len(self._tracks)

    def __call__(self, instances: Instances) -> Instances:
        """Track the persons of the next frame.

        Args:
            instances: one frame's predictions (``pred_keypoints`` (N, K, 3) [x, y, score] in
                pixels, ``scores`` (N,), and whatever the subclass reads).

        Returns:
            the same ``instances`` with ``pred_track_ids`` (N,) int64 set: the person's track
            id (>= 0), or -1 for a person scoring below ``min_score``.
        """
        n = len(instances)
        ids = np.full(n, -1, dtype=np.int64)
        if n:
            if not instances.has("scores"):
                raise KeyError(
                    f"{type(self).__name__}: frame {self._num_frames} has no 'scores' field "
                    f"(fields: {sorted(instances.get_fields())})"
                )
            scores = instances.scores.detach().float().cpu().numpy()
            cand = np.nonzero(scores >= self.min_score)[0]
        else:
            cand = np.zeros(0, dtype=np.int64)
        feats = self._features(instances, cand) if len(cand) else None
        matched_tracks = set()
        matched_persons = set()
        if len(cand) and self._tracks:
            missed = np.array([t.missed for t in self._tracks], dtype=np.int64)
            sim = self._similarity([t.memory for t in self._tracks], missed, feats)
            rows, cols = match_tracks(sim, self.sim_thresh)
            for r, c in zip(rows.tolist(), cols.tolist()):
                track = self._tracks[r]
                track.memory = self._update(track.memory, track.missed, self._select(feats, c))
                track.missed = 0
                ids[cand[c]] = track.track_id
                matched_tracks.add(r)
                matched_persons.add(c)
        alive = []
        for i, track in enumerate(self._tracks):
            if i not in matched_tracks:
                track.missed += 1
            if track.missed <= self.max_age:
                alive.append(track)
        for c in range(len(cand)):
            if c not in matched_persons:
                alive.append(_Track(self._next_id, self._select(feats, c)))
                ids[cand[c]] = self._next_id
                self._next_id += 1
        self._tracks = alive
        self._num_frames += 1
        device = instances.scores.device if n else torch.device("cpu")
        instances.pred_track_ids = torch.as_tensor(ids, device=device)
        return instances

    # ---- what a subclass defines --------------------------------------------------------
    def _features(self, instances: Instances, keep: np.ndarray) -> Any:
        """Features of the persons ``keep`` (C,) of a frame, indexable by :meth:`_select`."""
        raise NotImplementedError

    def _select(self, feats: Any, i: int) -> Any:
        """The features of the i-th of them (a new track's memory)."""
        return feats[i]

    def _similarity(self, memories: List[Any], missed: np.ndarray, feats: Any) -> np.ndarray:
        """(T, C) similarity of the T tracks' memories to the C new persons; ``missed`` (T,):
        the frames each track has gone unmatched (0: matched in the previous frame)."""
        raise NotImplementedError

    def _update(self, memory: Any, missed: int, feat: Any) -> Any:
        """A matched track's new memory (default: the new person's features); ``missed``: the
        frames it had gone unmatched."""
        return feat
