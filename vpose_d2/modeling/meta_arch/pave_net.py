"""PAVE-Net: the Pose-Aware Video transformEr Network (papers/pave_net.md, section 3).

clip (B, T frames) -> backbone + spatial encoder on every frame (one (B*T) batch) ->
pose proposals from the key frame's tokens (top N) -> spatiotemporal pose decoder (shared
queries, every frame starts from the key-frame reference, per-frame offsets / weights /
refinement, one softmax over T*L*K samples) -> spatiotemporal joint decoder (K joint queries
per person, sampling all T frames) -> key-frame poses in original pixels. No NMS.

A small composition of the image model's parts: :class:`ImagePoseTransformer` supplies
preprocessing, the backbone embedding, targets, the losses, joint-person selection, the joint
decoder's run and post-processing; the decoders are the same classes built with
``num_frames = T``. With ``T = 1`` PAVE-Net *is* the image model: the
parameter names and shapes coincide, so one model's ``state_dict`` loads into the other.

Because the spatial encoder sees one frame at a time, its output can be cached:
:meth:`PAVENet.encode_frames` gives one :class:`FrameMemory` per frame and
:meth:`PAVENet.decode` runs only the decoders on a window of them, so a sliding window over
a video encodes each frame once (``vpose_d2.engine.VideoPosePredictor`` does this). The
decoders' value projections are per frame too: ``encode_frames`` also keeps every decoder
layer's projection of the frame (:attr:`FrameMemory.values`), and ``decode`` concatenates them
instead of projecting the T frames' memory again in every window.

Ablations (``cfg.MODEL.PAVE``, the paper's Tables 3-5): ``USE_STPD`` / ``USE_STJD`` drop the
decoders (without both, the key-frame proposals are the output: the image-only regression of
Table 4's first row); ``REFERENCE: "random"`` replaces the key-frame proposals by learned
reference poses and query contents (Table 5a); ``SPATIOTEMPORAL_ENCODER`` is the video
transformer baseline of section 3.1 / "PAVE-Net-STE": the encoder's deformable self-attention
reads all T*L maps of the clip.
"""

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import ImageList, Instances
from torch import nn

from ..criterion import PoseSetCriterion
from ..transformer import DeformableEncoder, JointDecoder, PoseDecoder, PoseProposalHead
from .image_pose_transformer import ImagePoseTransformer

__all__ = ["PAVENet", "FrameMemory", "clip_offsets"]

logger = logging.getLogger(__name__)

REFERENCE_MODES = ("pose_aware", "random")


def clip_offsets(offsets: Sequence[int]) -> Tuple[List[int], int]:
    """The clip's frame order and key position, as the clip mapper stacks frames.

    Args:
        offsets: ``cfg.INPUT.CLIP.OFFSETS``, the neighbours around the key frame.

    Returns:
        (sorted offsets with 0 added, index of 0): ``[-1, 1] -> ([-1, 0, 1], 1)``.
    """
    ordered = sorted(set(int(o) for o in offsets) | {0})
    return ordered, ordered.index(0)


@dataclass
class FrameMemory:
    """What PAVE-Net keeps of one encoded frame (everything the decoders read from it).

    Attributes:
        memory: (S, C) spatial-encoder output over the frame's L maps (flattened, level-major).
            For the spatiotemporal-encoder ablation (``encoded`` False) these are the embedded
            backbone tokens before the encoder, which then runs on the whole window.
        padding_mask: (S,) bool, True at padded tokens.
        spatial_shapes: (L, 2) int64 [H_l, W_l] of the padded maps.
        level_start_index: (L,) int64 offset of each level in S.
        valid_ratios: (L, 2) [w, h] fraction of each map holding image content.
        image_size: (h, w) of the frame fed to the network, before padding.
        pos: (S, C) position + level embedding; kept only when ``encoded`` is False.
        encoded: whether ``memory`` is the spatial encoder's output.
        values: the frame's values for the decoders' cross-attentions, ``(pose decoder
            layers, joint decoder layers)``: per layer one (S, M, C / M) projection of
            ``memory`` (zero at padded tokens), an empty tuple for a decoder the model lacks.
            ``decode`` concatenates the window's instead of projecting its memory anew. None
            when not cached: the spatiotemporal encoder (the memory depends on the window), a
            model without decoders, or ``encode_frames(..., cache_values=False)``.

    The key frame's memory, padding mask, shapes and valid ratios are also the proposal
    head's inputs, so a cached key frame needs nothing else.
    """

    memory: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor
    image_size: Tuple[int, int]
    pos: Optional[torch.Tensor] = None
    encoded: bool = True
    values: Optional[Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]] = None


def _level_start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """(L',) start of each level in the flattened token axis of ``spatial_shapes`` (L', 2)."""
    return torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))


@META_ARCH_REGISTRY.register()
class PAVENet(ImagePoseTransformer):
    """End-to-end multi-person pose estimation in video: poses of the key frame of each clip.

    Inputs follow the Clip contract (docs/INTERNALS.md) with ``T = 1 + len(OFFSETS)`` frames
    in the mapper's order and ``key_index`` at the model's key position; a single image
    ((3, H, W) or T = 1) is treated as a static clip (the frame repeated T times).
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
        num_frames: int,
        key_index: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        num_feature_levels: int = 4,
        num_queries: int = 300,
        reference: str = "pose_aware",
        spatiotemporal_encoder: bool = False,
        neighbour_reference_grad: bool = True,
        num_joint_persons_test: int = 20,
        detections_per_image: int = 100,
        sigma_scores: bool = True,
        heatmap_head: Optional[nn.Module] = None,
        heatmap_weight: float = 0.0,
    ):
        """
        Args:
            backbone: gives L maps of C channels.
            encoder: the spatial encoder over one frame's L levels, or (with
                ``spatiotemporal_encoder``) the encoder over the clip's T*L levels.
            proposal_head: token-wise pose proposals on the key frame (None only with
                ``reference="random"``).
            pose_decoder: the spatiotemporal pose decoder (``num_frames = T``), or None for
                the image-only ablation (the proposals are the output).
            joint_decoder: the spatiotemporal joint decoder (``num_frames = T``), or None.
            criterion: the set criterion (matching on the key frame).
            num_keypoints: joints K.
            num_frames: frames T of a clip.
            key_index: position of the key frame on the T axis.
            pixel_mean, pixel_std: per-channel normalization, in the input's channel order.
            num_feature_levels: L per frame.
            num_queries: pose queries N (for the learned references of ``reference="random"``;
                the proposal head keeps its own top N otherwise).
            reference: "pose_aware" (key-frame proposals as every frame's reference poses) or
                "random" (learned reference poses and query contents, Table 5a).
            spatiotemporal_encoder: the encoder attends across all frames (section 3.1).
            neighbour_reference_grad: neighbour frames' refined poses keep their gradient
                into the next layer's sampling locations (only the key frame is supervised).
            num_joint_persons_test: top persons refined by the joint decoder at test time.
            detections_per_image: persons returned per clip.
            sigma_scores: joint scores from the RLE sigmas (else the pose score).
        """
        if reference not in REFERENCE_MODES:
            raise ValueError(f"MODEL.PAVE.REFERENCE={reference!r} is not one of {REFERENCE_MODES}")
        if not 0 <= key_index < num_frames:
            raise ValueError(f"PAVENet: key_index {key_index} outside T={num_frames}")
        if pose_decoder is None and reference == "random":
            raise ValueError(
                "MODEL.PAVE.REFERENCE='random' needs the pose decoder (MODEL.PAVE.USE_STPD): "
                "without it there is nothing to read the learned references"
            )
        if proposal_head is None and reference == "pose_aware":
            raise ValueError("PAVENet: pose-aware references need a proposal head")
        for name, part in (("pose_decoder", pose_decoder), ("joint_decoder", joint_decoder)):
            if part is not None and part.num_frames != num_frames:
                raise ValueError(
                    f"PAVENet: {name} is built for {part.num_frames} frames, the clip has "
                    f"{num_frames} (1 + len(INPUT.CLIP.OFFSETS))"
                )
        expected_levels = num_feature_levels * (num_frames if spatiotemporal_encoder else 1)
        enc_levels = encoder.layers[0].self_attn.num_levels if len(encoder.layers) else None
        if enc_levels is not None and enc_levels != expected_levels:
            raise ValueError(
                f"PAVENet: the encoder attends over {enc_levels} levels, expected "
                f"{expected_levels} (spatiotemporal_encoder={spatiotemporal_encoder})"
            )
        super().__init__(
            backbone=backbone,
            encoder=encoder,
            proposal_head=proposal_head,
            pose_decoder=pose_decoder,
            joint_decoder=joint_decoder,
            criterion=criterion,
            num_keypoints=num_keypoints,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            num_feature_levels=num_feature_levels,
            num_joint_persons_test=num_joint_persons_test,
            detections_per_image=detections_per_image,
            sigma_scores=sigma_scores,
            heatmap_head=heatmap_head,
            heatmap_weight=heatmap_weight,
        )
        self.num_frames = num_frames
        self.key_index = key_index
        self.reference = reference
        self.spatiotemporal_encoder = spatiotemporal_encoder
        self.neighbour_reference_grad = neighbour_reference_grad
        for part in (pose_decoder, joint_decoder):
            if part is not None:
                part.neighbour_reference_grad = neighbour_reference_grad
        hidden_dim = self.level_embed.shape[1]
        if reference == "random":
            # PETR's learned queries; "reference_points" gets the optimizer's 0.1 lr factor.
            self.query_content = nn.Embedding(num_queries, hidden_dim)
            self.reference_points = nn.Embedding(num_queries, 2 * num_keypoints)
        if spatiotemporal_encoder:
            # Tokens of different frames share positions and level embeddings; this tells the
            # joint encoder which frame a token comes from.
            self.frame_embed = nn.Parameter(torch.empty(num_frames, hidden_dim))
            nn.init.normal_(self.frame_embed)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        ret = super().from_config(cfg)
        v, p = cfg.MODEL.VPOSE, cfg.MODEL.PAVE
        offsets, key_index = clip_offsets(cfg.INPUT.CLIP.OFFSETS)
        t, k = len(offsets), ret["num_keypoints"]
        if p.SPATIOTEMPORAL_ENCODER:
            ret["encoder"] = DeformableEncoder(
                num_layers=v.ENC_LAYERS,
                embed_dim=v.HIDDEN_DIM,
                num_heads=v.NHEADS,
                num_levels=v.NUM_FEATURE_LEVELS * t,
                num_points=v.ENC_N_POINTS,
                dim_feedforward=v.DIM_FEEDFORWARD,
                dropout=v.DROPOUT,
                attn_impl=v.ATTN_IMPL,
            )
        # A decoder without layers is the ablation without it.
        use_stpd = p.USE_STPD and v.DEC_LAYERS > 0
        use_stjd = p.USE_STJD and v.JOINT_DEC_LAYERS > 0
        ret.update(
            {
                "proposal_head": ret["proposal_head"] if p.REFERENCE == "pose_aware" else None,
                "pose_decoder": (
                    PoseDecoder(cfg, num_keypoints=k, num_frames=t) if use_stpd else None
                ),
                "joint_decoder": (
                    JointDecoder(cfg, num_keypoints=k, num_frames=t) if use_stjd else None
                ),
                "num_frames": t,
                "key_index": key_index,
                "num_queries": v.NUM_QUERIES,
                "reference": p.REFERENCE,
                "spatiotemporal_encoder": p.SPATIOTEMPORAL_ENCODER,
                "neighbour_reference_grad": p.NEIGHBOUR_REFERENCE_GRAD,
            }
        )
        return ret

    # ------------------------------------------------------------------ encoding
    def _encode_single_frames(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """Frames as one batch through the backbone and (unless the encoder is the
        spatiotemporal one) the spatial encoder.

        Args:
            images: (N, 3, Hp, Wp); masks: (N, Hp, Wp).

        Returns:
            :meth:`encode`'s dict; for the spatiotemporal encoder, which needs the whole clip,
            :meth:`_embed`'s dict with ``memory`` None.
        """
        if self.spatiotemporal_encoder:
            return dict(self._embed(images, masks), memory=None)
        return self.encode(images, masks)

    def _spatiotemporal_encode(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: torch.Tensor,
        valid_ratios: torch.Tensor,
    ) -> torch.Tensor:
        """The video transformer baseline's encoder: every token attends to all T*L maps.

        Args:
            src, pos: (B, T, S, C); padding_mask: (B, T, S); spatial_shapes: (L, 2);
            valid_ratios: (B, T, L, 2).

        Returns:
            (B, T, S, C) memory.
        """
        b, t, s, c = src.shape
        pos = pos + self.frame_embed.view(1, t, 1, c).to(pos.dtype)
        shapes = spatial_shapes.repeat(t, 1)
        memory = self.encoder(
            src.reshape(b, t * s, c),
            pos.reshape(b, t * s, c),
            shapes,
            _level_start_index(shapes),
            valid_ratios.reshape(b, t * valid_ratios.shape[2], 2),
            padding_mask.reshape(b, t * s),
        )
        return memory.view(b, t, s, c)

    def encode_clips(self, images: torch.Tensor, masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-frame encoder memories of B clips.

        Args:
            images: (B, T, 3, Hp, Wp) normalized, one padding per clip; masks: (B, Hp, Wp).

        Returns:
            ``memory`` (B, T, S, C), ``padding_mask`` (B, T, S), ``spatial_shapes`` (L, 2),
            ``level_start_index`` (L,), ``valid_ratios`` (B, T, L, 2).
        """
        b, t = images.shape[:2]
        # Fold frames into the batch by reshaping the contiguous (B, T, ...) tensor: frame t of
        # clip b is row b * T + t (strided folding x[t::T] is what mixed up orders upstream).
        frames = images.contiguous().reshape(b * t, *images.shape[2:])
        frame_masks = masks[:, None].expand(b, t, *masks.shape[1:]).reshape(b * t, *masks.shape[1:])
        emb = self._encode_single_frames(frames, frame_masks)

        def per_clip(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, *x.shape[1:])

        enc = {
            "padding_mask": per_clip(emb["padding_mask"]),
            "spatial_shapes": emb["spatial_shapes"],
            "level_start_index": emb["level_start_index"],
            "valid_ratios": per_clip(emb["valid_ratios"]),
        }
        if self.spatiotemporal_encoder:
            enc["memory"] = self._spatiotemporal_encode(
                per_clip(emb["src"]),
                per_clip(emb["pos"]),
                enc["padding_mask"],
                enc["spatial_shapes"],
                enc["valid_ratios"],
            )
        else:
            enc["memory"] = per_clip(emb["memory"])
        return enc

    @staticmethod
    def video_memory(enc: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The T frames' memories as one value sequence for the decoders' attention.

        Args:
            enc: :meth:`encode_clips`' dict.

        Returns:
            ``memory`` (B, T * S, C) frame-major, ``padding_mask`` (B, T * S),
            ``spatial_shapes`` (T * L, 2) (the L shapes repeated T times),
            ``level_start_index`` (T * L,), ``valid_ratios`` (B, T * L, 2); and enc's
            ``joint_values`` when :meth:`decode` found them cached (the inherited
            ``run_joint_decoder`` reads them).
        """
        b, t, s, c = enc["memory"].shape
        shapes = enc["spatial_shapes"].repeat(t, 1)
        video = {
            "memory": enc["memory"].reshape(b, t * s, c),
            "padding_mask": enc["padding_mask"].reshape(b, t * s),
            "spatial_shapes": shapes,
            "level_start_index": _level_start_index(shapes),
            "valid_ratios": enc["valid_ratios"].reshape(b, -1, 2),
        }
        if enc.get("joint_values") is not None:
            video["joint_values"] = enc["joint_values"]
        return video

    # ------------------------------------------------------------------ decoding
    @staticmethod
    def key_frame(enc: Dict[str, torch.Tensor], key: int) -> Dict[str, torch.Tensor]:
        """The key frame's own encoding out of :meth:`encode_clips`' dict: ``memory`` (B, S, C),
        ``padding_mask`` (B, S), ``spatial_shapes`` (L, 2), ``valid_ratios`` (B, L, 2) (what
        the proposal head and the auxiliary heatmap read)."""
        return {
            "memory": enc["memory"][:, key],
            "padding_mask": enc["padding_mask"][:, key],
            "spatial_shapes": enc["spatial_shapes"],
            "valid_ratios": enc["valid_ratios"][:, key],
        }

    def decode_clips(self, enc: Dict[str, torch.Tensor], key: int) -> Dict:
        """Proposals on the key frame and the spatiotemporal pose decoder.

        Args:
            enc: :meth:`encode_clips`' dict (B clips of T frames); from :meth:`decode` also
                ``pose_values`` / ``joint_values``, each decoder's per-layer (B, T * S, M,
                C / M) values when the frames' projections were cached (else absent or None).
            key: key position on the T axis.

        Returns:
            ``proposals`` (the proposal head's dict, or None), ``video`` (:meth:`video_memory`),
            ``dec``: per pose-decoder layer ``poses`` (B, T, N, K, 2), ``logits`` (B, N),
            ``sigmas`` (B, N, K, 2) (without the decoder: one entry, the top-N proposals).
        """
        b, t = enc["memory"].shape[:2]
        k = self.num_keypoints
        video = self.video_memory(enc)
        prop = None
        if self.proposal_head is not None:
            kf = self.key_frame(enc, key)
            prop = self.proposal_head(
                kf["memory"], kf["padding_mask"], kf["spatial_shapes"], kf["valid_ratios"]
            )
        if self.pose_decoder is None:
            # Image-only ablation: the key frame's top-N proposals are the poses.
            top = prop["topk_indices"]
            n = top.shape[1]
            poses = torch.gather(prop["poses"], 1, top[:, :, None, None].expand(-1, -1, k, 2))
            sigmas = torch.gather(prop["sigmas"], 1, top[:, :, None, None].expand(-1, -1, k, 2))
            dec = [
                {
                    "poses": poses[:, None].expand(b, t, n, k, 2),
                    "logits": torch.gather(prop["logits"], 1, top),
                    "sigmas": sigmas,
                }
            ]
            return {"proposals": prop, "video": video, "dec": dec}
        if self.reference == "pose_aware":
            tgt, ref = prop["query_content"], prop["reference_poses"]
        else:
            n = self.query_content.num_embeddings
            tgt = self.query_content.weight[None].expand(b, -1, -1)
            ref = self.reference_points.weight.sigmoid().view(1, n, k, 2).expand(b, -1, -1, -1)
        # Every frame starts from the key frame's reference (a person moves little between
        # neighbouring frames); the per-frame refinements then let them drift apart.
        refs = ref[:, None].expand(-1, t, -1, -1, -1)
        dec = self.pose_decoder(
            tgt,
            refs,
            video["memory"],
            video["spatial_shapes"],
            video["level_start_index"],
            video["valid_ratios"],
            video["padding_mask"],
            key_index=key,
            values=enc.get("pose_values"),
        )
        return {"proposals": prop, "video": video, "dec": dec}

    # ------------------------------------------------------------------ entry points
    def _clip_images(
        self, batched_inputs: List[Dict]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
        """Normalized, padded (B, T, 3, Hp, Wp) clips checked against the model's T / key."""
        images, masks, sizes, keys = self.preprocess(batched_inputs, key_only=False)
        t_in = images.shape[1]
        if t_in == 1 and self.num_frames > 1:
            # A still image is a clip that does not move.
            images = images.expand(-1, self.num_frames, -1, -1, -1)
            keys = [self.key_index] * len(keys)
        elif t_in != self.num_frames:
            raise ValueError(
                f"PAVENet is built for clips of T={self.num_frames} frames (1 + "
                f"len(INPUT.CLIP.OFFSETS)); input {batched_inputs[0].get('video_id', '?')} "
                f"has {t_in}"
            )
        for d, key in zip(batched_inputs, keys):
            if key != self.key_index:
                raise ValueError(
                    f"input {d.get('video_id', '?')} (frame {d.get('key_frame_id', '?')}): "
                    f"key_index {key}, but PAVENet's frame order puts the key frame at "
                    f"{self.key_index} (INPUT.CLIP.OFFSETS sorted, 0 included)"
                )
        return images, masks, sizes

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: Clip dicts (docs/INTERNALS.md), ``image`` (T, 3, H, W).

        Returns:
            training: dict of weighted scalar losses; inference: [{"instances": Instances}]
            per input, the key frame's poses in its original ``height`` x ``width``.
        """
        images, masks, sizes = self._clip_images(batched_inputs)
        enc = self.encode_clips(images, masks)
        out = self.decode_clips(enc, self.key_index)
        if self.training:
            key = self.key_index
            return self.losses(
                out["proposals"],
                out["dec"],
                out["video"],
                batched_inputs,
                sizes,
                key,
                self.key_frame(enc, key),
            )
        return self.inference(out["dec"], out["video"], batched_inputs, sizes, self.key_index)

    def encode_frames(
        self,
        frames: Union[torch.Tensor, Sequence[Dict]],
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        cache_values: bool = True,
    ) -> List[FrameMemory]:
        """Run the spatial encoder on frames, one batched call, for later :meth:`decode`.

        Args:
            frames: (T', 3, Hp, Wp) frames already normalized and padded, or T' dicts with
                ``image`` uint8 (3, H, W) in ``INPUT.FORMAT`` (the predictor's items). Frames
                that will share a window must have one size.
            image_sizes: (h, w) of each tensor frame before padding (default: no padding);
                ignored for dicts.
            cache_values: also project each frame's memory for every decoder layer
                (:attr:`FrameMemory.values`), so that :meth:`decode` projects nothing: one
                projection per frame instead of one per window the frame is in, at the price
                of keeping (number of decoder layers) times the memory's size per frame.
                Ignored with the spatiotemporal encoder.

        Returns:
            T' :class:`FrameMemory`, in order. With the spatiotemporal encoder they hold the
            embedded backbone tokens and the encoder runs in :meth:`decode`.
        """
        if isinstance(frames, torch.Tensor):
            if frames.dim() != 4 or frames.shape[1] != 3:
                raise ValueError(
                    f"encode_frames: expected frames (T, 3, H, W), got {tuple(frames.shape)}"
                )
            images = frames.to(self.device)
            hp, wp = images.shape[-2:]
            sizes = list(image_sizes) if image_sizes is not None else [(hp, wp)] * len(images)
            if len(sizes) != len(images):
                raise ValueError(
                    f"encode_frames: {len(sizes)} image_sizes for {len(images)} frames"
                )
        else:
            tensors = []
            for i, d in enumerate(frames):
                image = d.get("image") if isinstance(d, dict) else None
                if not isinstance(image, torch.Tensor) or image.dim() != 3:
                    shape = tuple(image.shape) if isinstance(image, torch.Tensor) else image
                    name = d.get("file_name", "?") if isinstance(d, dict) else type(d).__name__
                    raise ValueError(
                        f"encode_frames: frame {i} ({name}) needs 'image' (3, H, W), got {shape}"
                    )
                tensors.append((image.to(self.device).float() - self.pixel_mean) / self.pixel_std)
            if not tensors:
                return []
            image_list = ImageList.from_tensors(tensors, self.backbone.size_divisibility)
            images, sizes = image_list.tensor, list(image_list.image_sizes)
            hp, wp = images.shape[-2:]
        masks = torch.ones((len(images), hp, wp), dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(sizes):
            masks[i, :h, :w] = False
        emb = self._encode_single_frames(images, masks)
        encoded = emb["memory"] is not None
        memory = emb["memory"] if encoded else emb["src"]
        values = None
        decoders = (self.pose_decoder, self.joint_decoder)
        if encoded and cache_values and any(d is not None for d in decoders):
            per_decoder = [
                () if d is None else d.project_values(memory, emb["padding_mask"]) for d in decoders
            ]
            values = [
                tuple(tuple(v[i] for v in layers) for layers in per_decoder)
                for i in range(len(images))
            ]
        return [
            FrameMemory(
                memory=memory[i],
                padding_mask=emb["padding_mask"][i],
                spatial_shapes=emb["spatial_shapes"],
                level_start_index=emb["level_start_index"],
                valid_ratios=emb["valid_ratios"][i],
                image_size=(int(sizes[i][0]), int(sizes[i][1])),
                pos=None if encoded else emb["pos"][i],
                encoded=encoded,
                values=None if values is None else values[i],
            )
            for i in range(len(images))
        ]

    def _stack_memories(self, clips: List[Sequence[FrameMemory]]) -> Dict[str, Any]:
        """B windows of T :class:`FrameMemory` (one padded size) as :meth:`encode_clips`'
        dict, plus ``pose_values`` / ``joint_values`` (per layer (B, T * S, M, C / M), or None)
        when every frame has its projections cached."""
        first = clips[0][0]
        decoders = {"pose_values": self.pose_decoder, "joint_values": self.joint_decoder}
        num_layers = tuple(0 if d is None else len(d.layers) for d in decoders.values())
        for c, clip in enumerate(clips):
            if len(clip) != self.num_frames:
                raise ValueError(
                    f"decode: window {c} holds {len(clip)} frames, PAVENet needs T="
                    f"{self.num_frames}"
                )
            for t, m in enumerate(clip):
                if not torch.equal(m.spatial_shapes, first.spatial_shapes):
                    raise ValueError(
                        f"decode: frame {t} of window {c} has maps "
                        f"{m.spatial_shapes.tolist()}, frame 0 of window 0 has "
                        f"{first.spatial_shapes.tolist()}: frames of one batch need one size"
                    )
                if m.encoded == self.spatiotemporal_encoder:
                    raise ValueError(
                        f"decode: frame {t} of window {c} was encoded by another model "
                        f"(encoded={m.encoded}, spatiotemporal_encoder="
                        f"{self.spatiotemporal_encoder})"
                    )
                if m.values is not None and tuple(len(v) for v in m.values) != num_layers:
                    raise ValueError(
                        f"decode: frame {t} of window {c} holds values of "
                        f"{tuple(len(v) for v in m.values)} (pose, joint) decoder layers, this "
                        f"model has {num_layers}: it was encoded by another model"
                    )

        def stack(field: str) -> torch.Tensor:
            return torch.stack([torch.stack([getattr(m, field) for m in c]) for c in clips])

        enc = {
            "padding_mask": stack("padding_mask"),
            "spatial_shapes": first.spatial_shapes,
            "level_start_index": first.level_start_index,
            "valid_ratios": stack("valid_ratios"),
        }
        if self.spatiotemporal_encoder:
            enc["memory"] = self._spatiotemporal_encode(
                stack("memory"),
                stack("pos"),
                enc["padding_mask"],
                enc["spatial_shapes"],
                enc["valid_ratios"],
            )
        else:
            enc["memory"] = stack("memory")
        if all(m.values is not None for c in clips for m in c):
            for i, (name, n) in enumerate(zip(decoders, num_layers)):
                # Frame-major along the tokens, as video_memory lays out the memory; one cat
                # over all B * T frames, then split the windows apart, copies the values once.
                layers = [
                    torch.cat([m.values[i][j] for c in clips for m in c]).unflatten(
                        0, (len(clips), -1)
                    )
                    for j in range(n)
                ]
                enc[name] = layers if layers else None
        return enc

    def decode(
        self,
        memories: Union[Sequence[FrameMemory], Sequence[Sequence[FrameMemory]]],
        key_index: Optional[int] = None,
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> List[Instances]:
        """Poses in the key frame of cached windows (inference only).

        The decoders sample the frames' cached projections (:attr:`FrameMemory.values`)
        when every frame of every window has them, and project the memory otherwise.

        Args:
            memories: one window of T :class:`FrameMemory` in the model's frame order, or a
                list of B such windows (all frames of one size).
            key_index: key position in the window; must be the model's (default).
            image_sizes: (height, width) of each window's original key frame, the size the
                poses are returned in (default: the size the key frame was encoded at).

        Returns:
            B Instances (docs/INTERNALS.md's model output), one per window.
        """
        if len(memories) == 0:
            return []
        clips = [memories] if isinstance(memories[0], FrameMemory) else list(memories)
        key = self.key_index if key_index is None else int(key_index)
        if key != self.key_index:
            raise ValueError(
                f"decode: key_index {key}, but PAVENet's key frame is at {self.key_index}"
            )
        if image_sizes is None:
            image_sizes = [c[key].image_size for c in clips]
        if len(image_sizes) != len(clips):
            raise ValueError(f"decode: {len(image_sizes)} image_sizes for {len(clips)} windows")
        enc = self._stack_memories(clips)
        out = self.decode_clips(enc, key)
        inputs = [{"height": int(h), "width": int(w)} for h, w in image_sizes]
        sizes = [c[key].image_size for c in clips]
        results = self.inference(out["dec"], out["video"], inputs, sizes, key)
        return [r["instances"] for r in results]
