"""ImagePoseTransformer: the PETR-style end-to-end image model (the papers' baseline).

backbone -> L maps -> deformable encoder -> pose proposals (top N) -> pose decoder (pose-aware
attention) -> joint decoder (top persons) -> poses in original pixels. No NMS.

It runs on the key frame of a clip. The video models reuse its pieces: :meth:`preprocess`,
:meth:`_embed`, :meth:`encode`, :meth:`prepare_targets`, :meth:`losses`,
:meth:`select_joint_persons`, :meth:`run_joint_decoder`, :meth:`postprocess`.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from vpose_d2.layers.position_encoding import PositionEmbeddingSine

from ..criterion import PoseSetCriterion
from ..losses.heatmap import KeypointHeatmapHead
from ..transformer import (
    DeformableEncoder,
    JointDecoder,
    PoseDecoder,
    PoseProposalHead,
    flatten_levels,
    next_references,
)

__all__ = ["ImagePoseTransformer", "resolve_keypoint_meta"]

logger = logging.getLogger(__name__)


def resolve_keypoint_meta(cfg) -> Tuple[int, List[float]]:
    """K and the OKS sigmas from the config, else the first training dataset's metadata.

    Returns:
        (K, K OKS sigmas).
    """
    from vpose_d2.data.keypoints import COCO, POSETRACK

    k = cfg.MODEL.VPOSE.NUM_KEYPOINTS
    sigmas = list(cfg.MODEL.VPOSE.OKS_SIGMAS)
    meta = None
    if len(cfg.DATASETS.TRAIN) > 0:
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    if k == 0:
        names = getattr(meta, "keypoint_names", None) if meta is not None else None
        if not names:
            raise ValueError(
                "MODEL.VPOSE.NUM_KEYPOINTS is 0 and the metadata of DATASETS.TRAIN[0] "
                f"({cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else 'none'}) has no "
                "keypoint_names: set one of them"
            )
        k = len(names)
    if not sigmas and meta is not None:
        sigmas = list(getattr(meta, "keypoint_oks_sigmas", None) or [])
    if not sigmas:
        for layout in (POSETRACK, COCO):
            if layout.num_keypoints == k:
                sigmas = list(layout.oks_sigmas)
                break
    if not sigmas:
        # An unknown layout: a middle-of-the-road sigma for every joint.
        sigmas = [0.08] * k
    if len(sigmas) != k:
        raise ValueError(f"{len(sigmas)} OKS sigmas for {k} keypoints (MODEL.VPOSE.OKS_SIGMAS)")
    return k, sigmas


def _put_scalars(**values: float) -> None:
    try:
        storage = get_event_storage()
    except AssertionError:  # outside a trainer: no storage to report to
        return
    storage.put_scalars(**values)


@META_ARCH_REGISTRY.register()
class ImagePoseTransformer(nn.Module):
    """End-to-end multi-person pose estimation on the key frame of each input.

    Inputs follow the Clip contract (docs/INTERNALS.md): ``image`` (T, 3, H, W) with
    ``key_index``, or (3, H, W); ``instances`` one Instances per frame or a single one.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        encoder: DeformableEncoder,
        proposal_head: PoseProposalHead,
        pose_decoder: PoseDecoder,
        joint_decoder: Optional[JointDecoder],
        criterion: PoseSetCriterion,
        num_keypoints: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        num_feature_levels: int = 4,
        num_joint_persons_test: int = 20,
        detections_per_image: int = 100,
        sigma_scores: bool = True,
        heatmap_head: Optional[KeypointHeatmapHead] = None,
        heatmap_weight: float = 0.0,
    ):
        """
        Args:
            backbone: gives L maps of ``hidden_dim`` channels (e.g. build_resnet_pose_backbone).
            encoder: deformable encoder.
            proposal_head: token-wise pose proposals.
            pose_decoder: a :class:`PoseDecoder` with ``num_frames = 1``.
            joint_decoder: a :class:`JointDecoder` (``num_frames = 1``), or None to skip it.
            criterion: the set criterion (holds the matcher and the RLE flow).
            num_keypoints: joints K.
            pixel_mean, pixel_std: per-channel normalization, in the input's channel order.
            num_feature_levels: L.
            num_joint_persons_test: top-scoring persons refined by the joint decoder at test.
            detections_per_image: persons returned per image (top scores).
            sigma_scores: joint scores from the RLE sigmas (else the pose score).
            heatmap_head: the auxiliary keypoint heatmap on the key frame's finest encoder
                level (training only; PETR's release), or None.
            heatmap_weight: its loss weight.
        """
        super().__init__()
        if pose_decoder is not None and len(pose_decoder.layers) == 0:
            raise ValueError(
                "the pose decoder has no layers (MODEL.VPOSE.DEC_LAYERS=0), but its last layer "
                "gives the poses; the model without it is PAVENet with MODEL.PAVE.USE_STPD=False"
            )
        self.backbone = backbone
        self.encoder = encoder
        self.proposal_head = proposal_head
        self.pose_decoder = pose_decoder
        self.joint_decoder = joint_decoder
        self.criterion = criterion
        self.num_keypoints = num_keypoints
        self.num_feature_levels = num_feature_levels
        self.num_joint_persons_test = num_joint_persons_test
        self.detections_per_image = detections_per_image
        self.sigma_scores = sigma_scores
        self.heatmap_head = heatmap_head
        self.heatmap_weight = heatmap_weight
        shapes = backbone.output_shape()
        if len(shapes) != num_feature_levels:
            raise ValueError(
                f"backbone gives {len(shapes)} maps ({list(shapes)}), expected "
                f"MODEL.VPOSE.NUM_FEATURE_LEVELS={num_feature_levels}"
            )
        hidden_dim = next(iter(shapes.values())).channels
        self.position_embedding = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, hidden_dim))
        nn.init.normal_(self.level_embed)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        k, sigmas = resolve_keypoint_meta(cfg)
        v = cfg.MODEL.VPOSE
        backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        return {
            "backbone": backbone,
            "encoder": DeformableEncoder(cfg),
            "proposal_head": PoseProposalHead(cfg, num_keypoints=k),
            "pose_decoder": PoseDecoder(cfg, num_keypoints=k, num_frames=1),
            "joint_decoder": (
                JointDecoder(cfg, num_keypoints=k, num_frames=1) if v.JOINT_DEC_LAYERS > 0 else None
            ),
            "criterion": PoseSetCriterion(cfg, oks_sigmas=sigmas),
            "num_keypoints": k,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_feature_levels": v.NUM_FEATURE_LEVELS,
            "num_joint_persons_test": v.NUM_JOINT_PERSONS_TEST,
            "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "sigma_scores": v.LOSS.KEYPOINT_LOSS == "rle",
            "heatmap_head": (
                KeypointHeatmapHead(v.HIDDEN_DIM, k, v.LOSS.HEATMAP_SIGMA)
                if v.LOSS.HEATMAP_WEIGHT > 0
                else None
            ),
            "heatmap_weight": v.LOSS.HEATMAP_WEIGHT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def clip_frames(d: Dict) -> Tuple[torch.Tensor, int]:
        """(T, 3, H, W) frames of an input and its key index (T = 1 for a single image)."""
        image = d["image"]
        if image.dim() == 3:
            return image[None], 0
        if image.dim() != 4:
            raise ValueError(
                f"input {d.get('file_names', d.get('file_name', '?'))}: 'image' must be "
                f"(3, H, W) or (T, 3, H, W), got {tuple(image.shape)}"
            )
        key = int(d.get("key_index", image.shape[0] // 2))
        if not 0 <= key < image.shape[0]:
            raise ValueError(
                f"input {d.get('video_id', '?')}: key_index {key} outside T={image.shape[0]}"
            )
        return image, key

    def preprocess(
        self, batched_inputs: List[Dict], key_only: bool = True
    ) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]], List[int]]:
        """Normalize and pad the frames of a batch (one padding for all frames of a clip).

        Args:
            batched_inputs: Clip dicts.
            key_only: keep only each clip's key frame (T' = 1).

        Returns:
            images (B, T', 3, Hp, Wp) normalized, masks (B, Hp, Wp) bool (True at padding),
            image sizes [(h, w)] of the unpadded frames, key indices on the T' axis.
        """
        frames, keys = [], []
        for d in batched_inputs:
            clip, key = self.clip_frames(d)
            if clip.shape[1] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"input {d.get('video_id', d.get('file_name', '?'))}: image has "
                    f"{clip.shape[1]} channels, MODEL.PIXEL_MEAN has {self.pixel_mean.shape[0]}"
                )
            if key_only:
                clip, key = clip[key : key + 1], 0
            frames.append((clip.to(self.device).float() - self.pixel_mean) / self.pixel_std)
            keys.append(key)
        t_sizes = {f.shape[0] for f in frames}
        if len(t_sizes) != 1:
            raise ValueError(f"clips of one batch must have the same T, got {sorted(t_sizes)}")
        images = ImageList.from_tensors(frames, self.backbone.size_divisibility)
        b, _, _, hp, wp = images.tensor.shape
        masks = torch.ones((b, hp, wp), dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            masks[i, :h, :w] = False
        return images.tensor, masks, list(images.image_sizes), keys

    def prepare_targets(
        self, batched_inputs: List[Dict], image_sizes: List[Tuple[int, int]]
    ) -> List[Dict[str, torch.Tensor]]:
        """Key-frame ground truth in the matcher's format.

        Persons without any annotated joint are dropped (nothing to regress).

        Returns:
            per image: ``keypoints`` (G, K, 2) normalized to the unpadded image,
            ``visible`` (G, K) bool, ``areas`` (G,) pixels^2, ``size_wh`` (2,) pixels.
        """
        targets = []
        for d, (h, w) in zip(batched_inputs, image_sizes):
            inst = d.get("instances")
            if inst is None:
                raise ValueError(
                    f"training input {d.get('video_id', d.get('file_name', '?'))} has no "
                    "'instances'"
                )
            if isinstance(inst, (list, tuple)):
                _, key = self.clip_frames(d)
                inst = inst[key]
            inst = inst.to(self.device)
            if inst.has("gt_keypoints"):
                kpts = inst.gt_keypoints
                kpts = getattr(kpts, "tensor", kpts).float()
            else:
                kpts = torch.zeros((len(inst), self.num_keypoints, 3), device=self.device)
            if kpts.shape[1:] != (self.num_keypoints, 3):
                raise ValueError(
                    f"input {d.get('video_id', '?')} frame {d.get('key_frame_id', '?')}: "
                    f"gt_keypoints {tuple(kpts.shape)}, expected (N, {self.num_keypoints}, 3)"
                )
            visible = kpts[..., 2] > 0
            keep = visible.any(-1)
            kpts, visible = kpts[keep], visible[keep]
            size_wh = torch.tensor([w, h], dtype=torch.float32, device=self.device)
            if inst.has("gt_areas"):
                areas = inst.gt_areas[keep].float()
            elif inst.has("gt_boxes"):
                areas = inst.gt_boxes[keep].area().float()
            else:
                areas = torch.zeros(kpts.shape[0], device=self.device)
            # Fall back to the keypoints' extent where no area was given.
            vis_xy = torch.where(visible[..., None], kpts[..., :2], kpts.new_tensor(float("nan")))
            extent = (vis_xy.nan_to_num(-1e9).amax(1) - vis_xy.nan_to_num(1e9).amin(1)).clamp(0)
            areas = torch.where(areas > 0, areas, extent.prod(-1))
            targets.append(
                {
                    "keypoints": kpts[..., :2] / size_wh,
                    "visible": visible,
                    "areas": areas,
                    "size_wh": size_wh,
                }
            )
        return targets

    # ------------------------------------------------------------------ network
    def _embed(self, images: torch.Tensor, masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone, position and level embeddings of single frames, flattened over levels.

        Args:
            images: (N, 3, Hp, Wp) normalized frames; masks: (N, Hp, Wp) bool, True at padding.

        Returns:
            ``src`` (N, S, C), ``pos`` (N, S, C), ``padding_mask`` (N, S), ``spatial_shapes``
            (L, 2), ``level_start_index`` (L,), ``valid_ratios`` (N, L, 2).
        """
        feats = list(self.backbone(images).values())
        level_masks, pos = [], []
        for lvl, f in enumerate(feats):
            m = F.interpolate(masks[None].float(), size=f.shape[-2:])[0].to(torch.bool)
            level_masks.append(m)
            p = self.position_embedding(m).to(f.dtype)
            pos.append(p + self.level_embed[lvl].view(1, -1, 1, 1).to(f.dtype))
        src, mask, pos_flat, shapes, starts, ratios = flatten_levels(feats, level_masks, pos)
        return {
            "src": src,
            "pos": pos_flat,
            "padding_mask": mask,
            "spatial_shapes": shapes,
            "level_start_index": starts,
            "valid_ratios": ratios,
        }

    def encode(self, images: torch.Tensor, masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone + encoder on a batch of single frames.

        Args:
            images: (B, 3, Hp, Wp) normalized frames.
            masks: (B, Hp, Wp) bool, True at padding.

        Returns:
            ``memory`` (B, S, C), ``padding_mask`` (B, S), ``spatial_shapes`` (L, 2),
            ``level_start_index`` (L,), ``valid_ratios`` (B, L, 2).
        """
        emb = self._embed(images, masks)
        src, pos = emb.pop("src"), emb.pop("pos")
        memory = self.encoder(
            src,
            pos,
            emb["spatial_shapes"],
            emb["level_start_index"],
            emb["valid_ratios"],
            emb["padding_mask"],
        )
        return {"memory": memory, **emb}

    @staticmethod
    def select_joint_persons(
        indices: List[Tuple[torch.Tensor, torch.Tensor]], device: torch.device
    ) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
        """Slots for the joint decoder from the matched queries (training).

        Returns:
            query indices (B, P) (padded with 0, P >= 1) and, per image, (slot indices,
            target indices) of the real slots.
        """
        p = max([1] + [len(src) for src, _ in indices])
        slots = torch.zeros((len(indices), p), dtype=torch.int64, device=device)
        joint_targets = []
        for b, (src, tgt) in enumerate(indices):
            slots[b, : len(src)] = src.to(device)
            joint_targets.append((torch.arange(len(src), dtype=torch.int64), tgt))
        return slots, joint_targets

    def run_joint_decoder(
        self, poses: torch.Tensor, slots: torch.Tensor, enc: Dict[str, torch.Tensor], key: int
    ) -> List[Dict[str, torch.Tensor]]:
        """Joint decoder on persons ``slots`` (B, P) of the pose decoder's ``poses``
        (B, T, N, K, 2); returns its per-layer outputs.

        The poses are detached as between decoder layers; with the joint decoder's
        ``neighbour_reference_grad`` (PAVE-Net) the neighbour frames' are not, so the last
        pose-decoder layer's neighbour refinements learn through its sampling locations.
        """
        b, t, _, k, _ = poses.shape
        poses = next_references(poses, key, self.joint_decoder.neighbour_reference_grad)
        index = slots[:, None, :, None, None].expand(b, t, -1, k, 2)
        return self.joint_decoder(
            torch.gather(poses, 2, index),
            enc["memory"],
            enc["spatial_shapes"],
            enc["level_start_index"],
            enc["valid_ratios"],
            enc["padding_mask"],
            key_index=key,
            # PAVE-Net's streaming decode hands the frames' cached projections in.
            values=enc.get("joint_values"),
        )

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: Clip dicts (docs/INTERNALS.md).

        Returns:
            training: dict of weighted scalar losses; inference: [{"instances": Instances}]
            per input, in the input's original ``height`` x ``width``.
        """
        images, masks, sizes, _ = self.preprocess(batched_inputs, key_only=True)
        enc = self.encode(images[:, 0], masks)
        prop = self.proposal_head(
            enc["memory"], enc["padding_mask"], enc["spatial_shapes"], enc["valid_ratios"]
        )
        dec = self.pose_decoder(
            prop["query_content"],
            prop["reference_poses"][:, None],
            enc["memory"],
            enc["spatial_shapes"],
            enc["level_start_index"],
            enc["valid_ratios"],
            enc["padding_mask"],
            key_index=0,
        )
        if self.training:
            return self.losses(prop, dec, enc, batched_inputs, sizes, key=0, key_frame=enc)
        return self.inference(dec, enc, batched_inputs, sizes)

    def losses(
        self,
        prop: Optional[Dict[str, torch.Tensor]],
        dec: List[Dict[str, torch.Tensor]],
        memory: Dict[str, torch.Tensor],
        batched_inputs: List[Dict],
        image_sizes: List[Tuple[int, int]],
        key: int,
        key_frame: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Hungarian matching on the key frame; the criterion on the proposals and on every
        pose- and joint-decoder layer.

        Args:
            prop: the proposal head's dict, or None (learned references).
            dec: per pose-decoder layer ``poses`` (B, T, N, K, 2), ``logits`` (B, N),
                ``sigmas`` (B, N, K, 2). Without a pose decoder (PAVE-Net's ablation) the
                proposals are the last stage and ``dec`` only gives T.
            memory: what the joint decoder reads (:meth:`encode`'s dict; for T frames, the
                T frames' memory as one sequence).
            batched_inputs: the inputs, with ``instances``.
            image_sizes: (h, w) of the unpadded inputs.
            key: key position on the T axis.
            key_frame: the key frame's own encoder output (``memory`` (B, S, C),
                ``padding_mask``, ``spatial_shapes``, ``valid_ratios`` (B, L, 2)) for the
                auxiliary heatmap; None skips it.

        Returns:
            dict of weighted scalar losses.
        """
        targets = self.prepare_targets(batched_inputs, image_sizes)
        if self.pose_decoder is not None:
            pose_layers = [
                {"logits": o["logits"], "poses": o["poses"][:, key], "sigmas": o["sigmas"]}
                for o in dec
            ]
            indices = self.criterion.match(pose_layers[-1], targets)
            pose_layers[-1]["indices"] = indices
            source = dec[-1]["poses"]
            scores = pose_layers[-1]["logits"].detach().sigmoid()
        else:
            # Proposals are the last stage: match over all valid key-frame tokens.
            pose_layers = []
            indices = self.criterion.match(prop, targets, prop["valid"])
            prop = dict(prop, indices=indices)
            b, s, k, _ = prop["poses"].shape
            source = prop["poses"][:, None].expand(b, dec[0]["poses"].shape[1], s, k, 2)
            scores = prop["logits"].detach().sigmoid().masked_fill(~prop["valid"], 0.0)
        outputs = {"proposals": prop, "pose_layers": pose_layers}
        if self.joint_decoder is not None:
            slots, joint_targets = self.select_joint_persons(indices, self.device)
            joint = self.run_joint_decoder(source, slots, memory, key)
            outputs["joint_layers"] = [
                {"joints": o["joints"][:, key], "sigmas": o["sigmas"]} for o in joint
            ]
            outputs["joint_targets"] = joint_targets
        losses = self.criterion(outputs, targets)
        if self.heatmap_head is not None and key_frame is not None:
            losses["loss_heatmap"] = self.heatmap_weight * self.heatmap_head.loss(
                key_frame["memory"],
                key_frame["padding_mask"],
                key_frame["spatial_shapes"],
                key_frame["valid_ratios"],
                targets,
            )
        with torch.no_grad():
            matched = [scores[b, src.to(self.device)] for b, (src, _) in enumerate(indices)]
            matched = torch.cat(matched) if matched else scores.new_zeros(0)
            _put_scalars(
                num_persons=float(sum(len(t["keypoints"]) for t in targets)),
                matched_score=float(matched.mean()) if matched.numel() else 0.0,
                max_score=float(scores.max()),
            )
        return losses

    # ------------------------------------------------------------------ outputs
    def inference(
        self,
        dec: List[Dict[str, torch.Tensor]],
        enc: Dict[str, torch.Tensor],
        batched_inputs: List[Dict],
        image_sizes: List[Tuple[int, int]],
        key: int = 0,
    ) -> List[Dict[str, Instances]]:
        """Joint refinement of the top persons, then :meth:`postprocess`."""
        last = dec[-1]
        scores = last["logits"].sigmoid()  # (B, N)
        poses = last["poses"][:, key].clone()  # (B, N, K, 2)
        sigmas = last["sigmas"].clone()
        if self.joint_decoder is not None and self.num_joint_persons_test > 0:
            p = min(self.num_joint_persons_test, scores.shape[1])
            slots = scores.topk(p, dim=1).indices
            joint = self.run_joint_decoder(last["poses"], slots, enc, key)[-1]
            k = self.num_keypoints
            index = slots[:, :, None, None].expand(-1, -1, k, 2)
            poses.scatter_(1, index, joint["joints"][:, key])
            sigmas.scatter_(1, index, joint["sigmas"])
        return self.postprocess(scores, poses, sigmas, batched_inputs, image_sizes)

    def postprocess(
        self,
        scores: torch.Tensor,
        poses: torch.Tensor,
        sigmas: torch.Tensor,
        batched_inputs: List[Dict],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Instances]]:
        """Top-scoring persons in original pixels.

        Args:
            scores: (B, N) person scores; poses: (B, N, K, 2) normalized to the unpadded
                input; sigmas: (B, N, K, 2).
            batched_inputs: the inputs (``height`` / ``width`` give the original size).
            image_sizes: (h, w) of the unpadded inputs.

        Returns:
            [{"instances": Instances}] with pred_keypoints (N, K, 3), scores, pred_boxes,
            pred_classes.
        """
        results = []
        for b, d in enumerate(batched_inputs):
            h_in, w_in = image_sizes[b]
            height, width = d.get("height", h_in), d.get("width", w_in)
            n = min(self.detections_per_image, scores.shape[1])
            top_scores, top = scores[b].topk(n)
            xy = poses[b, top] * poses.new_tensor([width, height])
            if self.sigma_scores:
                s = sigmas[b, top]
                # reference_hparams: joint score = pose score x 0.7 (1 - e^-0.2/sx)(1 - e^-0.2/sy)
                conf = 0.7 * (1 - torch.exp(-0.2 / s[..., 0])) * (1 - torch.exp(-0.2 / s[..., 1]))
                kscore = top_scores[:, None] * conf
            else:
                kscore = top_scores[:, None].expand(-1, xy.shape[1])
            inst = Instances((height, width))
            inst.pred_keypoints = torch.cat([xy, kscore[..., None]], -1)
            inst.scores = top_scores
            inst.pred_boxes = Boxes(torch.cat([xy.amin(1), xy.amax(1)], -1))
            inst.pred_classes = torch.zeros(n, dtype=torch.int64, device=scores.device)
            results.append({"instances": inst})
        return results
