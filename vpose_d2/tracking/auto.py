"""``AutoTracker``: the embedding tracker where the model gives embeddings, else the pose one."""

from __future__ import annotations

import logging
from typing import Optional

from detectron2.config import configurable
from detectron2.structures import Instances

from .base import Tracker
from .build import TRACKER_REGISTRY
from .embedding import EMBED_FIELD, EmbeddingTracker
from .pose import PoseTracker

__all__ = ["AutoTracker"]

logger = logging.getLogger(__name__)


@TRACKER_REGISTRY.register()
class AutoTracker:
    """Chooses, per video, at its first frame with persons: :class:`EmbeddingTracker` when the
    frame's Instances carry ``pred_instance_embeds``, else :class:`PoseTracker`.

    Same interface as :class:`Tracker` (``reset()``, ``tracker(instances)``). Frames before the
    first person get ids from nobody: they have no persons.
    """

    @configurable
    def __init__(self, *, pose_tracker: PoseTracker, embedding_tracker: EmbeddingTracker):
        """
        Args:
            pose_tracker: used for models without embeddings.
            embedding_tracker: used for models with embeddings.
        """
        self.pose_tracker = pose_tracker
        self.embedding_tracker = embedding_tracker
        self.reset()

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {"pose_tracker": PoseTracker(cfg), "embedding_tracker": EmbeddingTracker(cfg)}

    @property
    def min_score(self) -> float:
        """Persons scoring below this are never tracked, whichever tracker is chosen."""
        return min(self.pose_tracker.min_score, self.embedding_tracker.min_score)

    @property
    def active(self) -> Optional[Tracker]:
        """The tracker chosen for the current video (None before its first person)."""
        return self._active

    def reset(self) -> None:
        self.pose_tracker.reset()
        self.embedding_tracker.reset()
        self._active: Optional[Tracker] = None
        self._logged = getattr(self, "_logged", False)

    def __call__(self, instances: Instances) -> Instances:
        if self._active is None:
            if len(instances) == 0:
                return self.pose_tracker(instances)  # sets an empty pred_track_ids
            with_embeds = instances.has(EMBED_FIELD)
            self._active = self.embedding_tracker if with_embeds else self.pose_tracker
            if not self._logged:
                logger.info(
                    "MODEL.TRACKER.NAME 'auto': %s (the outputs %s %s)",
                    type(self._active).__name__,
                    "carry" if with_embeds else "have no",
                    EMBED_FIELD,
                )
                self._logged = True
        return self._active(instances)
