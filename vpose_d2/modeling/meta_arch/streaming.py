"""The streaming halves of :meth:`PoseModelBase.forward`: :meth:`encode_frames` does the
per-frame work once per frame, :meth:`decode` the per-window work on cached frames."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import nn

from ..clip_memory import ClipMemory

__all__ = ["StreamingMixin"]


class StreamingMixin:
    """For :class:`PoseModelBase`: frames encoded once, windows decoded from the cache."""

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
