"""Ground truth in the matcher's format, for the key frame or any frame of a clip."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["clip_key_index", "frame_targets", "select_joint_persons"]


def clip_key_index(d: Dict) -> int:
    """The key frame's position in a Clip dict's ``image`` (0 for a single image)."""
    image = d["image"]
    return int(d.get("key_index", image.shape[0] // 2)) if image.dim() == 4 else 0


def frame_targets(
    batched_inputs: Sequence[Dict],
    image_sizes: Sequence[Tuple[int, int]],
    num_keypoints: int,
    device: torch.device,
    frame: Optional[int] = None,
) -> List[Dict[str, torch.Tensor]]:
    """Targets of one frame of every clip.

    Persons without any annotated joint are dropped (nothing to regress).

    Args:
        batched_inputs: Clip dicts with ``instances`` (one Instances per frame, or one).
        image_sizes: (h, w) of the unpadded inputs.
        num_keypoints: K.
        device: where the targets go.
        frame: the frame on the clip's T axis; None is each clip's key frame.

    Returns:
        per clip: ``keypoints`` (G, K, 2) normalized to the unpadded image, ``visible``
        (G, K) bool, ``areas`` (G,) pixels^2, ``size_wh`` (2,) pixels, ``track_ids`` (G,)
        int64 (-1 where the annotation has none).
    """
    targets = []
    for d, (h, w) in zip(batched_inputs, image_sizes):
        inst = d.get("instances")
        where = f"input {d.get('video_id', d.get('file_name', '?'))}"
        if inst is None:
            raise ValueError(f"training {where} has no 'instances'")
        if isinstance(inst, (list, tuple)):
            inst = inst[clip_key_index(d) if frame is None else frame]
        elif frame is not None and frame != clip_key_index(d):
            raise ValueError(f"{where}: one Instances (the key frame's), frame {frame} asked")
        inst = inst.to(device)
        if inst.has("gt_keypoints"):
            kpts = inst.gt_keypoints
            kpts = getattr(kpts, "tensor", kpts).float()
        else:
            kpts = torch.zeros((len(inst), num_keypoints, 3), device=device)
        if kpts.shape[1:] != (num_keypoints, 3):
            raise ValueError(
                f"{where} frame {d.get('key_frame_id', '?')}: gt_keypoints "
                f"{tuple(kpts.shape)}, expected (N, {num_keypoints}, 3)"
            )
        visible = kpts[..., 2] > 0
        keep = visible.any(-1)
        kpts, visible = kpts[keep], visible[keep]
        size_wh = torch.tensor([w, h], dtype=torch.float32, device=device)
        if inst.has("gt_areas"):
            areas = inst.gt_areas[keep].float()
        elif inst.has("gt_boxes"):
            areas = inst.gt_boxes[keep].area().float()
        else:
            areas = torch.zeros(kpts.shape[0], device=device)
        # Fall back to the keypoints' extent where no area was given.
        vis_xy = torch.where(visible[..., None], kpts[..., :2], kpts.new_tensor(float("nan")))
        extent = (vis_xy.nan_to_num(-1e9).amax(1) - vis_xy.nan_to_num(1e9).amin(1)).clamp(0)
        areas = torch.where(areas > 0, areas, extent.prod(-1))
        if inst.has("gt_track_ids"):
            track_ids = inst.gt_track_ids[keep].to(torch.int64)
        else:
            track_ids = torch.full((kpts.shape[0],), -1, dtype=torch.int64, device=device)
        targets.append(
            {
                "keypoints": kpts[..., :2] / size_wh,
                "visible": visible,
                "areas": areas,
                "size_wh": size_wh,
                "track_ids": track_ids,
            }
        )
    return targets


def select_joint_persons(
    indices: List[Tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
    """Slots for the joint decoder from the matched queries (training).

    Returns:
        query indices (B, P) (padded with 0, P >= 1) and, per image, (slot indices, target
        indices) of the real slots.
    """
    p = max([1] + [len(src) for src, _ in indices])
    slots = torch.zeros((len(indices), p), dtype=torch.int64, device=device)
    joint_targets = []
    for b, (src, tgt) in enumerate(indices):
        slots[b, : len(src)] = src.to(device)
        joint_targets.append((torch.arange(len(src), dtype=torch.int64), tgt))
    return slots, joint_targets
