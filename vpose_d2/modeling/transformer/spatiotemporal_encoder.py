"""The video transformer baseline's encoder (PAVE-Net section 3.1, "PAVE-Net-STE"): every token
of a clip attends to all T*L maps of the clip, so the encoder cannot run frame by frame."""

from dataclasses import replace
from typing import Dict

import torch

from ..clip_memory import ClipMemory
from .encoder import DeformableEncoder

__all__ = ["SpatiotemporalEncoder"]


class SpatiotemporalEncoder(DeformableEncoder):
    """A :class:`DeformableEncoder` over the T*L maps of a clip (same layers, same parameter
    names, T times the levels)."""

    @classmethod
    def from_config(cls, cfg, num_frames: int) -> Dict:
        ret = super().from_config(cfg)
        ret["num_levels"] = cfg.MODEL.VPOSE.NUM_FEATURE_LEVELS * num_frames
        return ret

    def encode_clip(self, clip: ClipMemory, frame_embed: torch.Tensor) -> ClipMemory:
        """Encode embedded tokens (``clip.pos`` set) of B clips.

        Args:
            clip: B clips of T frames of backbone tokens with their ``pos``.
            frame_embed: (T, C) learned frame embeddings: tokens of different frames share
                positions and level embeddings, this tells the encoder which frame a token is in.

        Returns:
            ``clip`` with the (B, T, S, C) encoder output as memory and ``pos`` dropped.
        """
        if clip.pos is None:
            raise ValueError("SpatiotemporalEncoder: the clip is encoded already (no pos)")
        b, t, s, c = clip.memory.shape
        pos = clip.pos + frame_embed.view(1, t, 1, c).to(clip.pos.dtype)
        flat = clip.flatten_time()
        memory = self(
            flat["memory"],
            pos.reshape(b, t * s, c),
            flat["spatial_shapes"],
            flat["level_start_index"],
            flat["valid_ratios"],
            flat["padding_mask"],
        )
        return replace(clip, memory=memory.view(b, t, s, c), pos=None)
