"""PAVE-Net: the Pose-Aware Video transformEr Network (the PAVE-Net paper, section 3).

clip (B, T frames) -> backbone + spatial encoder on every frame (one (B*T) batch) -> pose
proposals from the key frame's tokens (top N) -> spatiotemporal pose decoder (shared queries,
every frame starts from the key-frame reference, per-frame offsets / weights / refinement, one
softmax over T*L*K samples) -> spatiotemporal joint decoder (K joint queries per person,
sampling all T frames) -> key-frame poses in original pixels. No NMS.

The decoders are the image model's classes built with ``num_frames = T``; with ``T = 1`` the
parameter names and shapes coincide with the image model's, so one model's ``state_dict`` loads
into the other. Because the spatial encoder sees one frame at a time, a stream encodes each
frame once (:meth:`PoseModelBase.encode_frames`) and runs only the decoders per window.

Ablations (``cfg.MODEL.PAVE``, the paper's Tables 3-5): ``USE_STPD`` / ``USE_STJD`` drop the
decoders (without both, the key-frame proposals are the output: the image-only regression of
Table 4's first row); ``REFERENCE: "random"`` replaces the key-frame proposals by learned
reference poses and query contents (Table 5a); ``SPATIOTEMPORAL_ENCODER`` is the video
transformer baseline of section 3.1 / "PAVE-Net-STE": the encoder reads all T*L maps.
"""

from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from vpose_d2.data.clip import clip_offsets

from ..clip_memory import ClipMemory
from ..transformer import JointDecoder, PoseDecoder, SpatiotemporalEncoder
from .base import PoseModelBase

__all__ = ["PAVENet"]

REFERENCE_MODES = ("pose_aware", "random")


@META_ARCH_REGISTRY.register()
class PAVENet(PoseModelBase):
    """End-to-end multi-person pose estimation in video: poses of the key frame of each clip.

    Inputs follow the Clip contract (docs/INTERNALS.md) with ``T = 1 + len(OFFSETS)`` frames
    in the mapper's order and ``key_index`` at the model's key position; a single image
    ((3, H, W) or T = 1) is treated as a static clip (the frame repeated T times).
    """

    @configurable
    def __init__(
        self,
        *,
        num_queries: int = 300,
        reference: str = "pose_aware",
        spatiotemporal_encoder: bool = False,
        **kwargs,
    ):
        """
        Args:
            num_queries: pose queries N of the learned references (``reference="random"``;
                the proposal head keeps its own top N otherwise).
            reference: "pose_aware" (key-frame proposals as every frame's reference poses) or
                "random" (learned reference poses and query contents, Table 5a).
            spatiotemporal_encoder: the encoder (a :class:`SpatiotemporalEncoder`) attends
                across all frames (section 3.1).
            kwargs: :class:`PoseModelBase`'s arguments: ``pose_decoder`` is the spatiotemporal
                pose decoder (``num_frames = T``) or None (the proposals are the output),
                ``joint_decoder`` the spatiotemporal joint decoder or None, ``proposal_head``
                None only with ``reference="random"``, ``frame_offsets`` the clip's frames.
        """
        super().__init__(**kwargs)
        if reference not in REFERENCE_MODES:
            raise ValueError(f"MODEL.PAVE.REFERENCE={reference!r} is not one of {REFERENCE_MODES}")
        if self.pose_decoder is None and reference == "random":
            raise ValueError(
                "MODEL.PAVE.REFERENCE='random' needs the pose decoder (MODEL.PAVE.USE_STPD): "
                "without it there is nothing to read the learned references"
            )
        if self.proposal_head is None and reference == "pose_aware":
            raise ValueError("PAVENet: pose-aware references need a proposal head")
        for name in ("pose_decoder", "joint_decoder"):
            part = getattr(self, name)
            if part is not None and part.num_frames != self.num_frames:
                raise ValueError(
                    f"PAVENet: {name} is built for {part.num_frames} frames, the clip has "
                    f"{self.num_frames} (1 + len(INPUT.CLIP.OFFSETS))"
                )
        if spatiotemporal_encoder != isinstance(self.encoder, SpatiotemporalEncoder):
            raise ValueError(
                f"PAVENet: spatiotemporal_encoder={spatiotemporal_encoder} needs "
                f"{'a' if spatiotemporal_encoder else 'no'} SpatiotemporalEncoder"
            )
        expected_levels = self.num_feature_levels * (
            self.num_frames if spatiotemporal_encoder else 1
        )
        enc_levels = (
            self.encoder.layers[0].self_attn.num_levels if len(self.encoder.layers) else None
        )
        if enc_levels is not None and enc_levels != expected_levels:
            raise ValueError(
                f"PAVENet: the encoder attends over {enc_levels} levels, expected "
                f"{expected_levels} (spatiotemporal_encoder={spatiotemporal_encoder})"
            )
        self.reference = reference
        self.spatiotemporal_encoder = spatiotemporal_encoder
        hidden_dim = self.level_embed.shape[1]
        if reference == "random":
            # PETR's learned queries; "reference_points" gets the optimizer's 0.1 lr factor.
            self.query_content = nn.Embedding(num_queries, hidden_dim)
            self.reference_points = nn.Embedding(num_queries, 2 * self.num_keypoints)
        if spatiotemporal_encoder:
            self.frame_embed = nn.Parameter(torch.empty(self.num_frames, hidden_dim))
            nn.init.normal_(self.frame_embed)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        p = cfg.MODEL.PAVE
        ret = super().from_config(cfg)
        offsets, _ = clip_offsets(cfg.INPUT.CLIP.OFFSETS)
        if p.SPATIOTEMPORAL_ENCODER:
            ret["encoder"] = SpatiotemporalEncoder(cfg, num_frames=len(offsets))
        ret.update(
            {
                "proposal_head": ret["proposal_head"] if p.REFERENCE == "pose_aware" else None,
                "frame_offsets": offsets,
                "num_queries": cfg.MODEL.VPOSE.NUM_QUERIES,
                "reference": p.REFERENCE,
                "spatiotemporal_encoder": p.SPATIOTEMPORAL_ENCODER,
            }
        )
        return ret

    @classmethod
    def build_decoders(cls, cfg, num_keypoints: int) -> Dict:
        v, p = cfg.MODEL.VPOSE, cfg.MODEL.PAVE
        t = len(clip_offsets(cfg.INPUT.CLIP.OFFSETS)[0])
        kw = dict(num_keypoints=num_keypoints, num_frames=t)
        kw["neighbour_reference_grad"] = p.NEIGHBOUR_REFERENCE_GRAD
        # A decoder without layers is the ablation without it.
        stpd, stjd = p.USE_STPD and v.DEC_LAYERS > 0, p.USE_STJD and v.JOINT_DEC_LAYERS > 0
        return {
            "pose_decoder": PoseDecoder(cfg, **kw) if stpd else None,
            "joint_decoder": JointDecoder(cfg, **kw) if stjd else None,
        }

    # ------------------------------------------------------------------ encoding
    @property
    def frames_encoded(self) -> bool:
        return not self.spatiotemporal_encoder

    def encode_frame_tokens(self, clip: ClipMemory) -> ClipMemory:
        # The spatiotemporal encoder needs the whole window: nothing to do per frame.
        return clip if self.spatiotemporal_encoder else super().encode_frame_tokens(clip)

    def encode_window(self, clip: ClipMemory) -> ClipMemory:
        if self.spatiotemporal_encoder:
            return self.encoder.encode_clip(clip, self.frame_embed)
        return clip

    # ------------------------------------------------------------------ decoding
    def predict(self, clip: ClipMemory) -> Dict:
        """Proposals on the key frame and the spatiotemporal pose decoder."""
        b, t, k = clip.num_clips, clip.num_frames, self.num_keypoints
        prop = None
        if self.proposal_head is not None:
            prop = self.propose(clip, self.key_index)
        if self.pose_decoder is None:
            # Image-only ablation: the key frame's top-N proposals are the poses.
            top = prop["topk_indices"]
            index = top[:, :, None, None].expand(-1, -1, k, 2)
            final = {
                "poses": torch.gather(prop["poses"], 1, index)[:, None].expand(b, t, -1, k, 2),
                "logits": torch.gather(prop["logits"], 1, top),
                "sigmas": torch.gather(prop["sigmas"], 1, index),
            }
            return {"proposals": prop, "pose_layers": [], "final": final}
        if self.reference == "pose_aware":
            tgt, ref = prop["query_content"], prop["reference_poses"]
        else:
            n = self.query_content.num_embeddings
            tgt = self.query_content.weight[None].expand(b, -1, -1)
            ref = self.reference_points.weight.sigmoid().view(1, n, k, 2).expand(b, -1, -1, -1)
        # Every frame starts from the key frame's reference (a person moves little between
        # neighbouring frames); the per-frame refinements then let them drift apart.
        layers = self.pose_decoder(
            tgt,
            ref[:, None].expand(-1, t, -1, -1, -1),
            clip,
            key_index=self.key_index,
            values=clip.flat_values("pose_decoder"),
        )
        return {"proposals": prop, "pose_layers": layers, "final": layers[-1]}
