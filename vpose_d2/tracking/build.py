"""The tracker registry and :func:`build_tracker`."""

from __future__ import annotations

from typing import Optional

from fvcore.common.registry import Registry

from .base import Tracker

__all__ = ["TRACKER_REGISTRY", "build_tracker"]

TRACKER_REGISTRY = Registry("TRACKER")
TRACKER_REGISTRY.__doc__ = """
Online multi-person trackers (subclasses of :class:`vpose_d2.tracking.Tracker`), built from a
config by ``TRACKER_REGISTRY.get(name)(cfg)``.
"""


def build_tracker(cfg) -> Optional[Tracker]:
    """The tracker ``cfg.MODEL.TRACKER.NAME`` names, built from ``cfg``.

    "auto" gives an :class:`AutoTracker` (the embedding tracker for models whose outputs carry
    ``pred_instance_embeds``, else the pose tracker); "none" gives None (no tracker: an
    evaluator then keeps the ids the model itself gives, if any); any other name is looked up
    in :data:`TRACKER_REGISTRY`.

    A tracker holds the state of one video: build one per stream (or ``reset()`` it between
    videos).
    """
    name = cfg.MODEL.TRACKER.NAME
    if name.lower() == "none":
        return None
    if name.lower() == "auto":
        name = "AutoTracker"
    try:
        cls = TRACKER_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"MODEL.TRACKER.NAME={cfg.MODEL.TRACKER.NAME!r}: no such tracker; known: 'auto', "
            f"'none', {', '.join(repr(k) for k, _ in sorted(TRACKER_REGISTRY))}"
        ) from None
    return cls(cfg)
