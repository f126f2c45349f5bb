"""Set criterion: Hungarian-matched losses on proposals, pose- and joint-decoder layers."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn

from .losses import RLELoss, keypoint_l1, keypoint_oks, sigmoid_focal_loss
from .matcher import HungarianPoseMatcher

__all__ = ["PoseSetCriterion"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


class PoseSetCriterion(nn.Module):
    """Focal classification + keypoint regression (RLE, or L1 + OKS) for every stage.

    ``outputs`` (from the meta-architecture)::

        {"proposals": {"logits": (B, S), "poses": (B, S, K, 2), "sigmas": (B, S, K, 2),
                       "valid": (B, S) bool},
         "pose_layers": [{"logits": (B, N), "poses": (B, N, K, 2), "sigmas": (B, N, K, 2),
                          "indices": optional precomputed matching,
                          "valid": optional (B, N) bool}, ...],
         "joint_layers": [{"joints": (B, P, K, 2), "sigmas": (B, P, K, 2)}, ...],
         "joint_targets": B pairs (slot indices into P, target indices)}

    ``pose_layers`` may be empty (a pose decoder without layers, or PAVE-Net's ablation
    without it): the proposals, matched over their ``valid`` tokens, are then the last stage;
    like a pose layer they may carry precomputed ``indices``. A pose layer may carry ``valid``
    like the proposals (VEPE's padded query selection): invalid queries are never matched and
    add no classification loss. ``joint_layers`` may be empty or absent.

    ``targets`` are the matcher's dicts. Every loss is summed over persons and divided by
    the number of persons in the whole (distributed) batch, as DETR does, then weighted.
    """

    @configurable
    def __init__(
        self,
        *,
        matcher: HungarianPoseMatcher,
        oks_sigmas: Sequence[float],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        class_weight: float = 0.5,
        keypoint_loss: str = "rle",
        rle_weight: float = 1.0,
        pose_l1_weight: float = 70.0,
        pose_oks_weight: float = 2.0,
        joint_l1_weight: float = 80.0,
        joint_oks_weight: float = 3.0,
    ):
        """
        Args:
            matcher: the Hungarian matcher.
            oks_sigmas: K per-joint OKS sigmas.
            focal_alpha, focal_gamma: focal loss parameters.
            class_weight: weight of the focal loss.
            keypoint_loss: "rle" (paper) or "l1_oks" (PETR without RLE).
            rle_weight: weight of the RLE loss.
            pose_l1_weight, pose_oks_weight: L1 / OKS weights on proposals and pose layers.
            joint_l1_weight, joint_oks_weight: L1 / OKS weights on joint layers.
        """
        super().__init__()
        if keypoint_loss not in ("rle", "l1_oks"):
            raise ValueError(f"keypoint_loss must be 'rle' or 'l1_oks', got {keypoint_loss!r}")
        self.matcher = matcher
        self.register_buffer(
            "oks_sigmas", torch.as_tensor(oks_sigmas, dtype=torch.float32), persistent=False
        )
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.class_weight = class_weight
        self.keypoint_loss = keypoint_loss
        self.rle_weight = rle_weight
        self.l1_weights = {"pose": pose_l1_weight, "joint": joint_l1_weight}
        self.oks_weights = {"pose": pose_oks_weight, "joint": joint_oks_weight}
        self.rle = RLELoss() if keypoint_loss == "rle" else None

    @classmethod
    def from_config(cls, cfg, oks_sigmas: Sequence[float]) -> Dict:
        loss = cfg.MODEL.VPOSE.LOSS
        return {
            "matcher": HungarianPoseMatcher(cfg),
            "oks_sigmas": oks_sigmas,
            "focal_alpha": loss.FOCAL_ALPHA,
            "focal_gamma": loss.FOCAL_GAMMA,
            "class_weight": loss.CLASS_WEIGHT,
            "keypoint_loss": loss.KEYPOINT_LOSS,
            "rle_weight": loss.RLE_WEIGHT,
            "pose_l1_weight": loss.POSE_L1_WEIGHT,
            "pose_oks_weight": loss.POSE_OKS_WEIGHT,
            "joint_l1_weight": loss.JOINT_L1_WEIGHT,
            "joint_oks_weight": loss.JOINT_OKS_WEIGHT,
        }

    @staticmethod
    def num_persons(targets: List[Dict[str, torch.Tensor]], device: torch.device) -> float:
        """Persons per GPU averaged over the world, at least 1."""
        n = torch.as_tensor([float(sum(t["keypoints"].shape[0] for t in targets))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(n)
        return max(n.item() / comm.get_world_size(), 1.0)

    def match(self, stage: Dict[str, torch.Tensor], targets, valid=None) -> Indices:
        return self.matcher(stage["logits"], stage["poses"], targets, self.oks_sigmas, valid=valid)

    def loss_class(
        self,
        logits: torch.Tensor,
        indices: Indices,
        num_persons: float,
        valid: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Focal loss over all (valid) queries; matched queries are the positives."""
        labels = torch.zeros_like(logits)
        for b, (src, _) in enumerate(indices):
            labels[b, src.to(logits.device)] = 1.0
        loss = sigmoid_focal_loss(logits.float(), labels, self.focal_alpha, self.focal_gamma)
        if valid is not None:
            loss = loss * valid.to(loss.dtype)
        return loss.sum() / num_persons * self.class_weight

    def loss_keypoints(
        self,
        mu: torch.Tensor,
        sigmas: torch.Tensor,
        indices: Indices,
        targets: List[Dict[str, torch.Tensor]],
        num_persons: float,
        kind: str,
    ) -> Dict[str, torch.Tensor]:
        """Regression losses of the matched predictions (unweighted names, weighted values).

        Args:
            mu: (B, Q, K, 2) normalized keypoints; sigmas: (B, Q, K, 2).
            indices: B pairs (prediction indices, target indices).
            targets: B target dicts.
            num_persons: normalizer.
            kind: "pose" or "joint" (selects the L1 / OKS weights).
        """
        batch = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(
            mu.device
        )
        src = torch.cat([s for s, _ in indices]).to(mu.device)
        if src.numel() == 0:
            # Keep every parameter in the graph (DDP expects gradients for all of them).
            zero = mu.sum() * 0.0 + sigmas.sum() * 0.0
            if self.keypoint_loss == "rle":
                return {"rle": zero + sum(p.sum() for p in self.rle.parameters()) * 0.0}
            return {"l1": zero, "oks": zero}
        pred = mu[batch, src].float()
        gt = torch.cat([t["keypoints"][j.to(mu.device)] for t, (_, j) in zip(targets, indices)])
        vis = torch.cat([t["visible"][j.to(mu.device)] for t, (_, j) in zip(targets, indices)])
        if self.keypoint_loss == "rle":
            per_person = self.rle(pred, sigmas[batch, src].float(), gt, vis)
            return {"rle": per_person.sum() / num_persons * self.rle_weight}
        areas = torch.cat([t["areas"][j.to(mu.device)] for t, (_, j) in zip(targets, indices)])
        size_wh = torch.stack(
            [t["size_wh"] for t, (_, j) in zip(targets, indices) for _ in range(len(j))]
        )
        l1 = keypoint_l1(pred, gt, vis).sum() / num_persons
        oks = keypoint_oks(pred, gt, vis, areas, self.oks_sigmas, size_wh)
        # Targets without visible joints carry no OKS signal.
        has_vis = vis.any(-1).to(oks.dtype)
        oks_loss = ((1 - oks) * has_vis).sum() / num_persons
        return {
            "l1": l1 * self.l1_weights[kind],
            "oks": oks_loss * self.oks_weights[kind],
        }

    def forward(
        self, outputs: Dict, targets: List[Dict[str, torch.Tensor]], prefix: str = ""
    ) -> Dict[str, torch.Tensor]:
        """Returns a dict of weighted scalar losses (``loss_<term>_<prefix><stage>``).

        Args:
            outputs: the stages, as in the class docstring.
            targets: the matcher's dicts, one per image.
            prefix: prepended to every stage name, so that a model supervising two sets of
                decoder layers (VEPE's spatial and temporal stages) keeps their losses apart.
        """
        device = self._device(outputs)
        # The flow's log-density and the focal terms need float32 even under AMP.
        with torch.autocast(device_type=device.type, enabled=False):
            return self._losses(outputs, targets, device, prefix)

    @staticmethod
    def _device(outputs: Dict) -> torch.device:
        """The device of the outputs, from whichever stage is present."""
        stages = [outputs.get("proposals")]
        stages += list(outputs.get("pose_layers") or []) + list(outputs.get("joint_layers") or [])
        for stage in stages:
            for value in (stage or {}).values():
                if isinstance(value, torch.Tensor):
                    return value.device
        raise ValueError("PoseSetCriterion: the outputs hold no proposals, pose or joint layers")

    def _losses(
        self,
        outputs: Dict,
        targets: List[Dict[str, torch.Tensor]],
        device: torch.device,
        prefix: str,
    ) -> Dict[str, torch.Tensor]:
        n = self.num_persons(targets, device)
        losses: Dict[str, torch.Tensor] = {}

        def add(tag: str, stage: Dict, indices: Indices, valid=None, kind="pose", cls=True):
            tag = prefix + tag
            if cls:
                losses[f"loss_class_{tag}"] = self.loss_class(stage["logits"], indices, n, valid)
            mu = stage["poses"] if "poses" in stage else stage["joints"]
            for name, value in self.loss_keypoints(
                mu, stage["sigmas"], indices, targets, n, kind
            ).items():
                losses[f"loss_{name}_{tag}"] = value

        if outputs.get("proposals") is not None:
            prop = outputs["proposals"]
            indices = prop.get("indices") or self.match(prop, targets, prop.get("valid"))
            add("enc", prop, indices, prop.get("valid"))
        for i, stage in enumerate(outputs.get("pose_layers") or []):
            indices = stage.get("indices") or self.match(stage, targets, stage.get("valid"))
            add(f"dec{i}", stage, indices, stage.get("valid"))
        for i, stage in enumerate(outputs.get("joint_layers") or []):
            add(f"joint{i}", stage, outputs["joint_targets"], kind="joint", cls=False)
        return losses
