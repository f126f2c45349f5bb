"""What every pose model here shares: pixels -> encoded frames -> PETR's stages -> Instances.

:class:`PoseModelBase` holds the PETR parts (backbone, position and level embeddings, spatial
encoder, pose proposals, pose decoder, joint decoder, criterion) and runs any model through
one flow, for training, evaluation and streaming alike::

    preprocess -> embed_clips -> encode_frame_tokens -> encode_window -> predict
               -> losses (training) | inference (test)

A sibling model says what differs by overriding :meth:`predict` (and, where it supervises
more, :meth:`losses`); :meth:`encode_frame_tokens` is the per-frame work a stream caches and
:meth:`encode_window` the work that needs the whole window. :meth:`encode_frames` and
:meth:`decode` are the streaming halves of :meth:`forward`.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from vpose_d2.layers.position_encoding import PositionEmbeddingSine

from ..clip_memory import ClipMemory
from ..criterion import PoseSetCriterion
from ..losses.heatmap import KeypointHeatmapHead
from ..postprocess import to_instances
from ..targets import clip_key_index, frame_targets
from ..transformer import (
    DeformableEncoder,
    JointDecoder,
    PoseDecoder,
    PoseProposalHead,
    flatten_levels,
    next_references,
)

__all__ = ["PoseModelBase", "resolve_keypoint_meta"]

logger = logging.getLogger(__name__)


def resolve_keypoint_meta(cfg) -> Tuple[int, List[float]]:
    """K and the OKS sigmas from the config, else the first training dataset's metadata.

    Returns:
        (K, K OKS sigmas).
    """
    from vpose_d2.data.keypoints import COCO, POSETRACK

    k = cfg.MODEL.VPOSE.NUM_KEYPOINTS
    sigmas = list(cfg.MODEL.VPOSE.OKS_SIGMAS)
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if len(cfg.DATASETS.TRAIN) else None
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


def put_scalars(**values: float) -> None:
    """Diagnostics to the trainer's event storage; nothing outside a trainer."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalars(**values)


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


class PoseModelBase(nn.Module):
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
        """The shared parts, built in a fixed order (backbone, encoder, proposals first), so one
        seed gives every model the same initial weights for them."""
        k, sigmas = resolve_keypoint_meta(cfg)
        v = cfg.MODEL.VPOSE
        return {
            "backbone": build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))),
            "encoder": DeformableEncoder(cfg),
            "proposal_head": PoseProposalHead(cfg, num_keypoints=k),
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

    # ------------------------------------------------------------------ PETR's stages
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

    # ------------------------------------------------------------------ streaming
    def value_cache_decoders(self) -> Dict[str, nn.Module]:
        """Decoders whose cross-attention values a stream projects once per frame (their
        memory is the per-frame encoder output)."""
        named = {"pose_decoder": self.pose_decoder, "joint_decoder": self.joint_decoder}
        return {name: d for name, d in named.items() if d is not None}

    def encode_frames(self, frames: Sequence[Dict], cache_values: bool = True) -> List[ClipMemory]:
        """The per-frame work on frames, one batched call, for later :meth:`decode`.

        Args:
            frames: dicts with ``image`` uint8 (3, H, W) in ``INPUT.FORMAT`` (the predictor's
                items). Frames that will share a window must have one size.
            cache_values: also project each frame's memory for every decoder layer of
                :meth:`value_cache_decoders`, so that :meth:`decode` projects nothing: one
                projection per frame instead of one per window the frame is in, at the price
                of keeping (number of decoder layers) times the memory's size per frame.

        Returns:
            One one-frame :class:`ClipMemory` per frame, in order.
        """
        images = []
        for i, d in enumerate(frames):
            image = d.get("image") if isinstance(d, dict) else None
            if not isinstance(image, torch.Tensor) or image.dim() != 3:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else image
                name = d.get("file_name", "?") if isinstance(d, dict) else type(d).__name__
                raise ValueError(
                    f"encode_frames: frame {i} ({name}) needs 'image' (3, H, W), got {shape}"
                )
            images.append(image[None])
        if not images:
            return []
        clip = self.encode_frame_tokens(self.embed_clips(*self.normalize_and_pad(images)))
        if cache_values and clip.pos is None:
            mask = clip.padding_mask[:, 0]
            values = {}
            for name, decoder in self.value_cache_decoders().items():
                layers = decoder.project_values(clip.memory[:, 0], mask)
                values[name] = tuple(v[:, None] for v in layers)
            clip.values = values
        return clip.split_frames()

    def check_cached_frame(self, m: ClipMemory, where: str) -> None:
        """Refuse a cached frame another model encoded."""
        cached = {n: len(v) for n, v in m.values.items()}
        mine = {n: len(d.layers) for n, d in self.value_cache_decoders().items()}
        if (m.pos is None) != self.frames_encoded:
            raise ValueError(
                f"decode: {where} was encoded by another model (encoder output: "
                f"{m.pos is None}, this model caches encoder output: {self.frames_encoded})"
            )
        if cached and cached != mine:
            raise ValueError(
                f"decode: {where} holds values of {cached} decoder layers, this model has "
                f"{mine}: it was encoded by another model"
            )

    @property
    def frames_encoded(self) -> bool:
        """Whether :meth:`encode_frame_tokens` leaves encoder output (else tokens + pos)."""
        return True

    def decode(
        self,
        windows: Sequence[Sequence[ClipMemory]],
        output_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> List[Instances]:
        """Poses in the key frame of cached windows (inference only).

        Args:
            windows: B windows of T one-frame :class:`ClipMemory` from :meth:`encode_frames`,
                in the model's frame order, all frames of one size.
            output_sizes: (height, width) of each window's original key frame, the size the
                poses are returned in (default: the size the key frame was encoded at).

        Returns:
            B Instances (docs/INTERNALS.md's model output), one per window.
        """
        if len(windows) == 0:
            return []
        for c, window in enumerate(windows):
            if len(window) != self.num_frames:
                raise ValueError(
                    f"decode: window {c} holds {len(window)} frames, {type(self).__name__} "
                    f"needs T={self.num_frames}"
                )
            for t, m in enumerate(window):
                self.check_cached_frame(m, f"frame {t} of window {c}")
        if output_sizes is None:
            output_sizes = [w[self.key_index].image_sizes[0] for w in windows]
        if len(output_sizes) != len(windows):
            raise ValueError(f"decode: {len(output_sizes)} output sizes for {len(windows)} windows")
        clip = self.encode_window(ClipMemory.stack(windows))
        return self.inference(self.predict(clip), clip, output_sizes)
