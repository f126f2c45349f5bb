"""Pose query selection (VEPE's PQS, the VEPE paper section 3.3): per frame, the pose queries the
spatial stage scores at least a threshold, as a fixed-size set with a validity mask."""

from typing import Dict

import torch
from detectron2.config import configurable
from torch import nn

__all__ = ["PoseQuerySelection"]


class PoseQuerySelection(nn.Module):
    """Top-M pose queries of a frame by score, those under the threshold marked invalid.

    A frame's selection is variable; batching needs a fixed size, so every frame keeps its
    ``num_queries`` best-scored queries (M), sorted by score, with ``valid`` telling which of
    them pass the threshold. Callers leave invalid slots out of every attention, matching and
    output. No parameters.
    """

    @configurable
    def __init__(self, *, threshold: float = 0.3, num_queries: int = 0):
        """
        Args:
            threshold: minimum spatial score (sigmoid of the class logit) of a selected query;
                0 keeps every query.
            num_queries: slots M per frame; 0 keeps as many as the spatial stage has (N).
        """
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"MODEL.VEPE.PQS_THRESHOLD={threshold} must lie in [0, 1]")
        if num_queries < 0:
            raise ValueError(f"MODEL.VEPE.PQS_NUM_QUERIES={num_queries} must be >= 0")
        self.threshold = threshold
        self.num_queries = num_queries

    @classmethod
    def from_config(cls, cfg) -> Dict:
        e = cfg.MODEL.VEPE
        return {"threshold": e.PQS_THRESHOLD, "num_queries": e.PQS_NUM_QUERIES}

    def forward(
        self, logits: torch.Tensor, fields: Dict[str, torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: (B, N) the spatial stage's class logits of each frame's N queries.
            fields: per-query tensors (B, N, ...) to gather (queries, poses, ...).

        Returns:
            ``index`` (B, M) int64 the selected queries' positions among the N (best first),
            ``valid`` (B, M) bool (score >= threshold), and every field gathered, (B, M, ...).
        """
        b, n = logits.shape
        m = n if self.num_queries == 0 else min(self.num_queries, n)
        scores, index = logits.detach().sigmoid().topk(m, dim=1)
        out = {"index": index, "valid": scores >= self.threshold}
        for name, x in fields.items():
            if x.shape[:2] != (b, n):
                raise ValueError(
                    f"PoseQuerySelection: field {name!r} is {tuple(x.shape)}, expected (B={b}, "
                    f"N={n}, ...)"
                )
            idx = index.view(b, m, *([1] * (x.dim() - 2))).expand(b, m, *x.shape[2:])
            out[name] = torch.gather(x, 1, idx)
        return out
