"""Scores, poses and sigmas of the top persons -> Instances in original pixels."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Boxes, Instances

__all__ = ["joint_confidence", "to_instances"]


def joint_confidence(sigmas: torch.Tensor) -> torch.Tensor:
    """(..., K, 2) RLE scales -> (..., K) joint confidence, ``0.7 (1 - e^-0.2/sx)(1 - e^-0.2/sy)``
    (PETR's release), multiplied by the person score for the joint's score."""
    return 0.7 * (1 - torch.exp(-0.2 / sigmas[..., 0])) * (1 - torch.exp(-0.2 / sigmas[..., 1]))


def to_instances(
    scores: torch.Tensor,
    poses: torch.Tensor,
    sigmas: torch.Tensor,
    output_sizes: Sequence[Tuple[int, int]],
    *,
    detections_per_image: int,
    sigma_scores: bool,
    extra_fields: Optional[Dict[str, torch.Tensor]] = None,
) -> List[Instances]:
    """The top-scoring persons of every image, no NMS.

    Args:
        scores: (B, N) person scores; poses: (B, N, K, 2) normalized to the unpadded input;
            sigmas: (B, N, K, 2).
        output_sizes: B (height, width) the poses are returned in (the original frames).
        detections_per_image: persons kept per image.
        sigma_scores: joint scores from the RLE sigmas (else the person score).
        extra_fields: Instances field name -> (B, N, ...) per-person tensor to keep beside
            the poses (e.g. ``pred_instance_embeds``).

    Returns:
        B Instances with ``pred_keypoints`` (n, K, 3) [x, y, score], ``scores``,
        ``pred_boxes`` (keypoint extents), ``pred_classes`` (zeros) and the extra fields.
    """
    results = []
    for b, (height, width) in enumerate(output_sizes):
        n = min(detections_per_image, scores.shape[1])
        top_scores, top = scores[b].topk(n)
        xy = poses[b, top] * poses.new_tensor([width, height])
        if sigma_scores:
            kscore = top_scores[:, None] * joint_confidence(sigmas[b, top])
        else:
            kscore = top_scores[:, None].expand(-1, xy.shape[1])
        inst = Instances((height, width))
        inst.pred_keypoints = torch.cat([xy, kscore[..., None]], -1)
        inst.scores = top_scores
        inst.pred_boxes = Boxes(torch.cat([xy.amin(1), xy.amax(1)], -1))
        inst.pred_classes = torch.zeros(n, dtype=torch.int64, device=scores.device)
        for name, value in (extra_fields or {}).items():
            inst.set(name, value[b, top])
        results.append(inst)
    return results
