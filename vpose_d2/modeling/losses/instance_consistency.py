"""VEPE's instance consistency loss (the VEPE paper, section 3.6, eq. 5): a triplet loss on the
instance embeddings of Hungarian-matched predictions, grouped by ground-truth track id."""

import torch
from torch.nn import functional as F

__all__ = ["MINING_MODES", "instance_consistency_loss"]

#: Triplet sets: "hard" (per anchor its farthest positive and nearest negative), "all" (every
#: positive with every negative).
MINING_MODES = ("hard", "all")


def instance_consistency_loss(
    embeds: torch.Tensor,
    track_ids: torch.Tensor,
    frames: torch.Tensor,
    groups: torch.Tensor,
    margin: float,
    mining: str = "hard",
    reduction: str = "mean",
) -> torch.Tensor:
    """``sum_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin)`` over a set of triplets (eq. 5), with
    the cosine distance ``d(x, y) = 1 - cos(x, y)``.

    Each row is one matched prediction: its embedding, the track id of the person it was
    matched to, the frame it is in and its group (the clip: track ids mean nothing across
    videos). For an anchor a, the positives are the rows of a's group with a's track id in
    another frame (the same person elsewhere in time), the negatives the rows of a's group
    with another track id (another person, in any frame). Anchors without a positive or
    without a negative give no triplet.

    Args:
        embeds: (P, E) embeddings (normalized here).
        track_ids: (P,) int64 ground-truth track ids.
        frames: (P,) the frame of each row within its group.
        groups: (P,) the group (clip) of each row.
        margin: the triplet margin.
        mining: "hard": one triplet per anchor, its farthest positive and nearest negative;
            "all": every (anchor, positive, negative) triplet.
        reduction: "mean" over the triplets (0 without any, still connected to ``embeds``) or
            "sum" (eq. 5 as written).

    Returns:
        Scalar loss.
    """
    if mining not in MINING_MODES:
        raise ValueError(f"instance_consistency_loss: mining {mining!r} not in {MINING_MODES}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"instance_consistency_loss: reduction {reduction!r} not mean/sum")
    p = embeds.shape[0]
    if not (track_ids.shape == frames.shape == groups.shape == (p,)):
        raise ValueError(
            f"instance_consistency_loss: embeds {tuple(embeds.shape)}, track_ids "
            f"{tuple(track_ids.shape)}, frames {tuple(frames.shape)}, groups {tuple(groups.shape)}"
        )
    if p == 0:
        return embeds.sum() * 0.0
    # At least float32 (the margin comparison under AMP), float64 kept.
    x = F.normalize(embeds.to(torch.promote_types(embeds.dtype, torch.float32)), dim=-1)
    dist = 1.0 - x @ x.t()  # (P, P)
    same_group = groups[:, None] == groups[None]
    same_id = track_ids[:, None] == track_ids[None]
    pos = same_group & same_id & (frames[:, None] != frames[None])
    neg = same_group & ~same_id
    if mining == "hard":
        anchors = pos.any(1) & neg.any(1)
        d_pos = dist.masked_fill(~pos, float("-inf")).amax(1)
        d_neg = dist.masked_fill(~neg, float("inf")).amin(1)
        terms = F.relu(d_pos[anchors] - d_neg[anchors] + margin)
    else:
        triplets = pos[:, :, None] & neg[:, None, :]  # (anchor, positive, negative)
        terms = F.relu(dist[:, :, None] - dist[:, None, :] + margin)[triplets]
    if terms.numel() == 0:
        # No triplet: zero, kept in the graph (DDP expects a gradient for every parameter).
        return embeds.sum() * 0.0
    return terms.mean() if reduction == "mean" else terms.sum()
