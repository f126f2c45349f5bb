"""Embedding tracker: Hungarian matching on the cosine similarity of instance embeddings.

For models that output a per-person embedding ``pred_instance_embeds`` (N, E) trained to be
alike for one person across frames and apart for different people (VEPE's instance queries
and instance consistency loss, paper section 3.6). Appearance, not position, decides, so
people who cross keep their ids where a pose tracker may swap them.

A track remembers an exponential moving average of its person's unit embeddings,
``m <- normalize(momentum * m + (1 - momentum) * e)``: with the default momentum of 0.5 one
bad frame (blur, occlusion, a person half hidden behind another) moves the track's embedding
half-way only, and a slowly changing appearance is followed within a few frames.
(JDE/FairMOT's 0.9 is meant for 30 fps video; in evaluation the tracker sees PoseTrack's
labeled frames, 4 apart.) ``momentum=0`` keeps the last embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from detectron2.config import configurable
from detectron2.structures import Instances

from .base import Tracker
from .build import TRACKER_REGISTRY

__all__ = ["EmbeddingTracker"]

EMBED_FIELD = "pred_instance_embeds"


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


@TRACKER_REGISTRY.register()
class EmbeddingTracker(Tracker):
    """Tracks persons by the cosine similarity of their embeddings to the tracks'.

    ``sim_thresh`` is the least cosine similarity of a match.
    """

    @configurable
    def __init__(
        self,
        *,
        min_score: float = 0.3,
        max_age: int = 3,
        sim_thresh: float = 0.5,
        momentum: float = 0.5,
    ) -> None:
        """
        Args:
            min_score: persons scoring below are not tracked (id -1).
            max_age: frames a track survives without a match.
            sim_thresh: the least cosine similarity of a match; below it a person starts a
                new track.
            momentum: weight of the track's embedding in its moving average (0: the last
                embedding).
        """
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        super().__init__(min_score=min_score, max_age=max_age, sim_thresh=sim_thresh)

    @classmethod
    def from_config(cls, cfg) -> dict:
        t = cfg.MODEL.TRACKER
        return {
            "min_score": t.MIN_SCORE,
            "max_age": t.MAX_AGE,
            "sim_thresh": t.EMBED_SIM_THRESH,
            "momentum": t.EMBED_MOMENTUM,
        }

    def _features(self, instances: Instances, keep: np.ndarray) -> np.ndarray:
        if not instances.has(EMBED_FIELD):
            raise KeyError(
                f"EmbeddingTracker: frame {self._num_frames} has no {EMBED_FIELD!r} (fields: "
                f"{sorted(instances.get_fields())}); a model without instance embeddings "
                f"needs the PoseTracker (MODEL.TRACKER.NAME 'PoseTracker' or 'auto')"
            )
        emb = instances.get(EMBED_FIELD).detach().float().cpu().numpy()
        if emb.ndim != 2:
            raise ValueError(
                f"EmbeddingTracker: frame {self._num_frames}: {EMBED_FIELD} of shape "
                f"{emb.shape}; expected (N, E)"
            )
        if not np.isfinite(emb[keep]).all():
            raise ValueError(
                f"EmbeddingTracker: frame {self._num_frames}: non-finite {EMBED_FIELD}"
            )
        return _unit(emb[keep].astype(np.float64))

    def _similarity(self, memories: Any, missed: np.ndarray, feats: np.ndarray) -> np.ndarray:
        mem = np.stack(memories)  # (T, E), unit rows
        if mem.shape[1] != feats.shape[1]:
            raise ValueError(
                f"EmbeddingTracker: frame {self._num_frames}: embeddings of size "
                f"{feats.shape[1]}, but the video's earlier frames had {mem.shape[1]}"
            )
        return mem @ feats.T

    def _update(self, memory: np.ndarray, missed: int, feat: np.ndarray) -> np.ndarray:
        return _unit(self.momentum * memory + (1.0 - self.momentum) * feat)
