"""The clip's frame order and window indices: the one definition the mapper, the models and
the predictor share."""

from typing import List, Sequence, Tuple

__all__ = ["clip_offsets", "window_indices"]


def clip_offsets(offsets: Sequence[int]) -> Tuple[List[int], int]:
    """The clip's frame order and key position.

    Frames are stacked in time order, so a model's frame axis means the same thing whatever
    order ``INPUT.CLIP.OFFSETS`` lists them in.

    Args:
        offsets: ``cfg.INPUT.CLIP.OFFSETS``, the neighbours around the key frame (0 optional).

    Returns:
        (sorted offsets with 0 added, index of 0): ``[-1, 1] -> ([-1, 0, 1], 1)``.
    """
    ordered = sorted(set(int(o) for o in offsets) | {0})
    return ordered, ordered.index(0)


def window_indices(key: int, offsets: Sequence[int], num_frames: int) -> List[int]:
    """Frame indices of the window around ``key``; neighbours beyond the video's ends repeat
    the edge frame.

    Args:
        key: index of the key frame in the video (0-based).
        offsets: the window's offsets relative to the key frame, in window order (0 included).
        num_frames: number of frames of the video, or a large number while its end is unknown.

    Returns:
        ``len(offsets)`` indices, each clamped to ``[0, num_frames - 1]``.
    """
    return [min(max(key + o, 0), num_frames - 1) for o in offsets]
