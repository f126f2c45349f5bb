"""What every pose model here shares: pixels -> encoded frames -> PETR's stages -> Instances.

:class:`PoseModelBase` holds the PETR parts (backbone, position and level embeddings, spatial
encoder, pose proposals, pose decoder, joint decoder, criterion) and runs any model through
one flow, for training, evaluation and streaming alike::

    preprocess -> embed_clips -> encode_frame_tokens -> encode_window -> predict
               -> losses (training) | inference (test)

A sibling model says what differs by overriding :meth:`predict` (and, where it supervises
more, :meth:`losses`); :meth:`encode_frame_tokens` is the per-frame work a stream caches and
:meth:`encode_window` the work that needs the whole window. :meth:`encode_frames` and
:meth:`decode` are the streaming halves of :meth:`forward` (``streaming.py``); PETR's stages
that siblings call (:meth:`propose`, :meth:`spatial_stage`, :meth:`refine_joints`,
:meth:`set_losses`, :meth:`inference`) live in ``petr_stages.py``.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F

from vpose_d2.layers.position_encoding import PositionEmbeddingSine

from ..clip_memory import ClipMemory
from ..criterion import PoseSetCriterion
from ..keypoint_meta import resolve_keypoint_meta
from ..losses.heatmap import KeypointHeatmapHead
from ..targets import clip_key_index, frame_targets
from ..transformer import (
    DeformableEncoder,
    JointDecoder,
    PoseDecoder,
    PoseProposalHead,
    flatten_levels,
)
from .petr_stages import PETRStagesMixin
from .streaming import StreamingMixin

__all__ = ["PoseModelBase", "resolve_keypoint_meta"]

logger = logging.getLogger(__name__)


class PoseModelBase(PETRStagesMixin, StreamingMixin, nn.Module):
    """The shared base of the pose models (not registered: the siblings are).

    Inputs follow the Clip contract (docs/INTERNALS.md): ``image`` (T, 3, H, W) with
    ``key_index``, or (3, H, W); ``instances`` one Instances per frame or a single one.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        encoder: DeformableEncoder,
        proposal_head: Optional[PoseProposalHead],
        pose_decoder: Optional[PoseDecoder],
        joint_decoder: Optional[JointDecoder],
        criterion: PoseSetCriterion,
        num_keypoints: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        frame_offsets: Sequence[int] = (0,),
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
            encoder: the deformable encoder.
            proposal_head: token-wise pose proposals, or None.
            pose_decoder: a :class:`PoseDecoder`, or None.
            joint_decoder: a :class:`JointDecoder`, or None to skip it.
            criterion: the set criterion (holds the matcher and the RLE flow).
            num_keypoints: joints K.
            pixel_mean, pixel_std: per-channel normalization, in the input's channel order.
            frame_offsets: the clip's frame order (:func:`vpose_d2.data.clip.clip_offsets`,
                0 is the key frame); ``(0,)`` for an image model.
            num_feature_levels: L.
            num_joint_persons_test: top-scoring persons refined by the joint decoder at test.
            detections_per_image: persons returned per image (top scores).
            sigma_scores: joint scores from the RLE sigmas (else the pose score).
            heatmap_head: the auxiliary keypoint heatmap on the key frame's finest encoder
                level (training only; PETR's release), or None.
            heatmap_weight: its loss weight.
        """
        super().__init__()
        if 0 not in frame_offsets or list(frame_offsets) != sorted(set(frame_offsets)):
            raise ValueError(f"frame_offsets {list(frame_offsets)}: sorted, unique, 0 included")
        self.backbone = backbone
        self.encoder = encoder
        self.proposal_head = proposal_head
        self.pose_decoder = pose_decoder
        self.joint_decoder = joint_decoder
        self.criterion = criterion
        self.num_keypoints = num_keypoints
        self.frame_offsets = [int(o) for o in frame_offsets]
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
        """The shared parts and the sibling's decoders (:meth:`build_decoders`), built in a
        fixed order (backbone, encoder, proposals, decoders, criterion, heatmap), so one seed
        gives every model the same initial weights for the parts they share."""
        k, sigmas = resolve_keypoint_meta(cfg)
        v = cfg.MODEL.VPOSE
        ret = {
            "backbone": build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))),
            "encoder": DeformableEncoder(cfg),
            "proposal_head": PoseProposalHead(cfg, num_keypoints=k),
        }
        ret.update(cls.build_decoders(cfg, k))
        ret.update(
            {
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
        )
        return ret

    @classmethod
    def build_decoders(cls, cfg, num_keypoints: int) -> Dict:
        """The model's ``pose_decoder`` / ``joint_decoder`` (and any other part built before
        the criterion); none here."""
        return {"pose_decoder": None, "joint_decoder": None}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_frames(self) -> int:
        """Frames T of a clip."""
        return len(self.frame_offsets)

    @property
    def key_index(self) -> int:
        """Position of the key frame on the T axis."""
        return self.frame_offsets.index(0)

    # ------------------------------------------------------------------ inputs
    def normalize_and_pad(
        self, clips: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
        """(T, 3, H, W) uint8 clips -> normalized (B, T, 3, Hp, Wp), one padding for all frames
        of a clip, masks (B, Hp, Wp) bool (True at padding), and the unpadded (h, w)."""
        frames = [(c.to(self.device).float() - self.pixel_mean) / self.pixel_std for c in clips]
        images = ImageList.from_tensors(frames, self.backbone.size_divisibility)
        b, _, _, hp, wp = images.tensor.shape
        masks = torch.ones((b, hp, wp), dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            masks[i, :h, :w] = False
        return images.tensor, masks, [(int(h), int(w)) for h, w in images.image_sizes]

    def preprocess(
        self, batched_inputs: List[Dict]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
        """Clips of exactly the model's T frames, normalized and padded.

        A T = 1 model takes each input's key frame; a still image fed to a video model is a
        clip that does not move (the frame repeated T times).

        Returns:
            images (B, T, 3, Hp, Wp), masks (B, Hp, Wp), image sizes [(h, w)] unpadded.
        """
        clips = []
        for d in batched_inputs:
            image, where = d["image"], f"input {d.get('video_id', d.get('file_name', '?'))}"
            if image.dim() not in (3, 4):
                raise ValueError(
                    f"{where}: 'image' must be (3, H, W) or (T, 3, H, W), got {tuple(image.shape)}"
                )
            clip = image[None] if image.dim() == 3 else image
            key = clip_key_index(d)
            if not 0 <= key < clip.shape[0]:
                raise ValueError(f"{where}: key_index {key} outside T={clip.shape[0]}")
            if clip.shape[1] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"{where}: image has {clip.shape[1]} channels, MODEL.PIXEL_MEAN has "
                    f"{self.pixel_mean.shape[0]}"
                )
            if self.num_frames == 1:
                clip = clip[key : key + 1]
            elif clip.shape[0] == 1:
                clip = clip.expand(self.num_frames, -1, -1, -1)
            elif clip.shape[0] != self.num_frames:
                raise ValueError(
                    f"{type(self).__name__} is built for clips of T={self.num_frames} frames "
                    f"(1 + len(INPUT.CLIP.OFFSETS)); {where} has {clip.shape[0]}"
                )
            elif key != self.key_index:
                raise ValueError(
                    f"{where} (frame {d.get('key_frame_id', '?')}): key_index {key}, but the "
                    f"model's frame order puts the key frame at {self.key_index} "
                    "(INPUT.CLIP.OFFSETS sorted, 0 included)"
                )
            clips.append(clip)
        return self.normalize_and_pad(clips)

    # ------------------------------------------------------------------ encoding
    def embed(self, images: torch.Tensor, masks: torch.Tensor) -> Dict[str, torch.Tensor]:
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

    def embed_clips(
        self, images: torch.Tensor, masks: torch.Tensor, image_sizes: List[Tuple[int, int]]
    ) -> ClipMemory:
        """The backbone on the B * T frames as one batch: tokens with their ``pos``.

        Args:
            images: (B, T, 3, Hp, Wp) normalized; masks: (B, Hp, Wp); image_sizes: B (h, w).
        """
        b, t = images.shape[:2]
        # Frames fold into the batch by reshaping the contiguous (B, T, ...) tensor: frame t of
        # clip b is row b * T + t (strided folding x[t::T] mixes up the orders).
        frames = images.contiguous().reshape(b * t, *images.shape[2:])
        frame_masks = masks[:, None].expand(b, t, *masks.shape[1:]).reshape(b * t, *masks.shape[1:])
        emb = self.embed(frames, frame_masks)

        def per_clip(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, *x.shape[1:])

        return ClipMemory(
            memory=per_clip(emb["src"]),
            padding_mask=per_clip(emb["padding_mask"]),
            spatial_shapes=emb["spatial_shapes"],
            level_start_index=emb["level_start_index"],
            valid_ratios=per_clip(emb["valid_ratios"]),
            image_sizes=list(image_sizes),
            pos=per_clip(emb["pos"]),
        )

    def encode_frame_tokens(self, clip: ClipMemory) -> ClipMemory:
        """The per-frame part of encoding (a stream caches its result): the spatial encoder on
        every frame on its own, one batched call."""
        frames = clip.fold_time()
        memory = self.encoder(
            frames.memory[:, 0],
            frames.pos[:, 0],
            frames.spatial_shapes,
            frames.level_start_index,
            frames.valid_ratios[:, 0],
            frames.padding_mask[:, 0],
        )
        return ClipMemory(
            memory=memory.view(clip.num_clips, clip.num_frames, *memory.shape[1:]),
            padding_mask=clip.padding_mask,
            spatial_shapes=clip.spatial_shapes,
            level_start_index=clip.level_start_index,
            valid_ratios=clip.valid_ratios,
            image_sizes=clip.image_sizes,
        )

    def encode_window(self, clip: ClipMemory) -> ClipMemory:
        """The part of encoding that needs the whole window (none here)."""
        return clip

    def encode(
        self, images: torch.Tensor, masks: torch.Tensor, image_sizes: List[Tuple[int, int]]
    ) -> ClipMemory:
        """Pixels (B, T, 3, Hp, Wp) -> encoded clips."""
        return self.encode_window(
            self.encode_frame_tokens(self.embed_clips(images, masks, image_sizes))
        )

    # ------------------------------------------------------------------ the flow
    def predict(self, clip: ClipMemory) -> Dict:
        """The model's stages on encoded clips.

        Returns:
            ``proposals`` (the proposal head's dict, or None), ``pose_layers`` (per pose-decoder
            layer ``poses`` (B, T, N, K, 2), ``logits`` (B, N), ``sigmas`` (B, N, K, 2)), and
            ``final``: the poses to output, a dict of the same three (the last pose layer, or
            what stands in for it).
        """
        raise NotImplementedError

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: Clip dicts (docs/INTERNALS.md).

        Returns:
            training: dict of weighted scalar losses; inference: [{"instances": Instances}]
            per input, the key frame's poses in its original ``height`` x ``width``.
        """
        images, masks, sizes = self.preprocess(batched_inputs)
        clip = self.encode(images, masks, sizes)
        out = self.predict(clip)
        if self.training:
            return self.losses(out, clip, batched_inputs)
        output_sizes = [
            (d.get("height", h), d.get("width", w)) for d, (h, w) in zip(batched_inputs, sizes)
        ]
        return [{"instances": r} for r in self.inference(out, clip, output_sizes)]

    def losses(self, out: Dict, clip: ClipMemory, batched_inputs: List[Dict]) -> Dict:
        """Key-frame losses (:meth:`set_losses`) and the auxiliary heatmap."""
        targets = frame_targets(batched_inputs, clip.image_sizes, self.num_keypoints, self.device)
        losses = self.set_losses(out, clip, targets)
        if self.heatmap_head is not None:
            key = clip.frame(self.key_index)
            losses["loss_heatmap"] = self.heatmap_weight * self.heatmap_head.loss(
                key.memory[:, 0],
                key.padding_mask[:, 0],
                key.spatial_shapes,
                key.valid_ratios[:, 0],
                targets,
            )
        return losses
