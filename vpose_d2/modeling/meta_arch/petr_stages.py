"""PETR's stages as any model reuses them: pose proposals, the pose decoder on every frame,
the joint decoder on chosen persons, the set losses of one frame, and the output Instances."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from ..clip_memory import ClipMemory
from ..postprocess import to_instances
from ..targets import select_joint_persons
from ..transformer import next_references

__all__ = ["PETRStagesMixin", "put_scalars"]


def put_scalars(**values: float) -> None:
    """Diagnostics to the trainer's event storage; nothing outside a trainer."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalars(**values)


class PETRStagesMixin:
    """For :class:`PoseModelBase`, whose parts (``proposal_head``, ``pose_decoder``,
    ``joint_decoder``, ``criterion``) these stages run."""

    def propose(self, clip: ClipMemory, frame: int = 0) -> Dict[str, torch.Tensor]:
        """Token-wise pose proposals on ``frame`` of every clip (the proposal head's dict)."""
        return self.proposal_head(
            clip.memory[:, frame],
            clip.padding_mask[:, frame],
            clip.spatial_shapes,
            clip.valid_ratios[:, frame],
        )

    def spatial_stage(self, clip: ClipMemory) -> Dict:
        """Proposals and the pose decoder on every frame on its own, in one batched call (the
        image model; VEPE's spatial phase).

        Returns:
            ``proposals`` (the proposal head's dict over the B * T frames) and
            ``pose_layers``: per decoder layer ``poses`` (B * T, 1, N, K, 2), ``logits``
            (B * T, N), ``sigmas`` (B * T, N, K, 2), ``queries`` (B * T, N, C).
        """
        frames = clip.fold_time()
        prop = self.propose(frames)
        layers = self.pose_decoder(
            prop["query_content"],
            prop["reference_poses"][:, None],
            frames,
            key_index=0,
            values=frames.flat_values("pose_decoder"),
        )
        return {"proposals": prop, "pose_layers": layers}

    def refine_joints(
        self,
        poses: torch.Tensor,
        slots: torch.Tensor,
        clip: ClipMemory,
        key_index: Optional[int] = None,
    ) -> List[Dict[str, torch.Tensor]]:
        """The joint decoder on persons ``slots`` (B, P) of ``poses`` (B, T, Q, K, 2); returns
        its per-layer outputs. ``key_index``: the output frame's position on the T axis of
        ``poses`` and ``clip`` (default: the model's key frame).

        The poses are detached as between decoder layers; with the joint decoder's
        ``neighbour_reference_grad`` the neighbour frames' are not, so the last pose-decoder
        layer's neighbour refinements learn through its sampling locations.
        """
        key = self.key_index if key_index is None else key_index
        b, t, _, k, _ = poses.shape
        poses = next_references(poses, key, self.joint_decoder.neighbour_reference_grad)
        index = slots[:, None, :, None, None].expand(b, t, -1, k, 2)
        return self.joint_decoder(
            torch.gather(poses, 2, index),
            clip,
            key_index=key,
            values=clip.flat_values("joint_decoder"),
        )

    def set_losses(
        self,
        out: Dict,
        clip: ClipMemory,
        targets: List[Dict],
        prefix: str = "",
        key_index: Optional[int] = None,
    ) -> Dict[str, torch.Tensor]:
        """Hungarian matching on the last stage (the last pose layer, else the proposals, as
        the criterion defines it); the criterion on the proposals, every pose layer and every
        joint-decoder layer (the joint decoder refines the matched persons).

        Args:
            out: :meth:`predict`'s dict (poses with a T axis; supervised on the key frame). A
                pose layer may carry ``valid`` (B, N) bool: invalid queries are never matched
                and add no classification loss.
            clip: the encoded clips the joint decoder samples.
            targets: the supervised frame's targets.
            prefix: stage-name prefix of the loss names.
            key_index: the supervised frame's position on the T axis of the poses and of
                ``clip`` (default: the model's key frame).
        """
        key = self.key_index if key_index is None else key_index
        prop = out["proposals"]
        pose_layers = []
        for o in out["pose_layers"]:
            layer = {"logits": o["logits"], "poses": o["poses"][:, key], "sigmas": o["sigmas"]}
            if "valid" in o:
                layer["valid"] = o["valid"]
            pose_layers.append(layer)
        last = pose_layers[-1] if pose_layers else prop
        indices = self.criterion.match(last, targets, last.get("valid"))
        last["indices"] = indices
        scores = last["logits"].detach().sigmoid()
        if "valid" in last:
            scores = scores.masked_fill(~last["valid"], 0.0)
        outputs = {"proposals": prop, "pose_layers": pose_layers}
        if self.joint_decoder is not None:
            if out["pose_layers"]:
                source = out["pose_layers"][-1]["poses"]
            else:
                # Every frame starts from the key frame's proposal.
                b, s, k, _ = prop["poses"].shape
                source = prop["poses"][:, None].expand(b, clip.num_frames, s, k, 2)
            slots, joint_targets = select_joint_persons(indices, self.device)
            joint = self.refine_joints(source, slots, clip, key)
            outputs["joint_layers"] = [
                {"joints": o["joints"][:, key], "sigmas": o["sigmas"]} for o in joint
            ]
            outputs["joint_targets"] = joint_targets
        losses = self.criterion(outputs, targets, prefix=prefix)
        with torch.no_grad():
            matched = [scores[b, src.to(self.device)] for b, (src, _) in enumerate(indices)]
            matched = torch.cat(matched) if matched else scores.new_zeros(0)
            put_scalars(
                **{
                    f"{prefix}num_persons": float(sum(len(t["keypoints"]) for t in targets)),
                    f"{prefix}matched_score": float(matched.mean()) if matched.numel() else 0.0,
                    f"{prefix}max_score": float(scores.max()),
                }
            )
        return losses

    def inference(
        self,
        out: Dict,
        clip: ClipMemory,
        output_sizes: Sequence[Tuple[int, int]],
        key_index: Optional[int] = None,
    ) -> List[Instances]:
        """The joint decoder on the top persons of ``out["final"]``, then the top persons as
        Instances in ``output_sizes``. ``key_index``: the output frame's position on the T axis
        of the final poses and of ``clip`` (default: the model's key frame)."""
        final = out["final"]
        key = self.key_index if key_index is None else key_index
        scores = final["logits"].sigmoid()  # (B, N)
        poses = final["poses"][:, key].clone()  # (B, N, K, 2)
        sigmas = final["sigmas"].clone()
        if self.joint_decoder is not None and self.num_joint_persons_test > 0:
            p = min(self.num_joint_persons_test, scores.shape[1])
            slots = scores.topk(p, dim=1).indices
            joint = self.refine_joints(final["poses"], slots, clip, key)[-1]
            index = slots[:, :, None, None].expand(-1, -1, self.num_keypoints, 2)
            poses.scatter_(1, index, joint["joints"][:, key])
            sigmas.scatter_(1, index, joint["sigmas"])
        return to_instances(
            scores,
            poses,
            sigmas,
            output_sizes,
            detections_per_image=self.detections_per_image,
            sigma_scores=self.sigma_scores,
            extra_fields=out.get("person_fields"),
        )
