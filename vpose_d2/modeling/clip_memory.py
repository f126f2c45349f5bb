"""One bundle for encoded frames: what every stage after the encoder reads.

A :class:`ClipMemory` holds B clips of T frames with an explicit time axis. The same object
is a training batch, a streaming window (:meth:`ClipMemory.stack` of per-frame entries) and one
cached frame (B = T = 1), so the models and the predictor pass one thing around instead of
loose tensors shaped by caller.
"""

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["ClipMemory", "level_start_index"]


def level_start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """(L',) start of each level in the flattened token axis of ``spatial_shapes`` (L', 2)."""
    return torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))


@dataclass
class ClipMemory:
    """Encoded frames of B clips.

    Attributes:
        memory: (B, T, S, C) tokens over each frame's L maps (flattened, level-major): the
            spatial encoder's output, or, while ``pos`` is set, the embedded backbone tokens
            an encoder has yet to read.
        padding_mask: (B, T, S) bool, True at padded tokens.
        spatial_shapes: (L, 2) int64 [H_l, W_l] of one frame's padded maps.
        level_start_index: (L,) int64 offset of each level in S.
        valid_ratios: (B, T, L, 2) [w, h] fraction of each map holding image content.
        image_sizes: B (h, w) of the frames fed to the network, before padding.
        pos: (B, T, S, C) position + level embeddings, kept only until an encoder has run.
        values: per decoder name, one (B, T, S, M, C / M) value projection per layer of that
            decoder's cross-attentions (zero at padded tokens), computed once per frame so a
            sliding window does not project its frames again; empty when not cached.
        extras: per-frame tensors a model keeps beside the memory, (B, T, ...) each (e.g. a
            spatial stage's pose queries), stacked and sliced with it.
    """

    memory: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor
    image_sizes: List[Tuple[int, int]]
    pos: Optional[torch.Tensor] = None
    values: Dict[str, Tuple[torch.Tensor, ...]] = field(default_factory=dict)
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_clips(self) -> int:
        return self.memory.shape[0]

    @property
    def num_frames(self) -> int:
        return self.memory.shape[1]

    def _map(self, fn) -> "ClipMemory":
        """A copy with ``fn`` applied to every (B, T, ...) tensor."""
        return replace(
            self,
            memory=fn(self.memory),
            padding_mask=fn(self.padding_mask),
            valid_ratios=fn(self.valid_ratios),
            pos=None if self.pos is None else fn(self.pos),
            values={k: tuple(fn(v) for v in layers) for k, layers in self.values.items()},
            extras={k: fn(v) for k, v in self.extras.items()},
        )

    def frame(self, t: int) -> "ClipMemory":
        """Frame ``t`` of every clip, as clips of one frame (T = 1)."""
        return self._map(lambda x: x[:, t : t + 1])

    def fold_time(self) -> "ClipMemory":
        """The B * T frames as B * T one-frame clips (frame t of clip b is row b * T + t)."""
        b, t = self.num_clips, self.num_frames
        folded = self._map(lambda x: x.reshape(b * t, 1, *x.shape[2:]))
        return replace(folded, image_sizes=[s for s in self.image_sizes for _ in range(t)])

    def unfold_time(self, num_frames: int) -> "ClipMemory":
        """Inverse of :meth:`fold_time`."""
        b = self.num_clips // num_frames
        unfolded = self._map(lambda x: x.reshape(b, num_frames, *x.shape[2:]))
        return replace(unfolded, image_sizes=list(self.image_sizes[::num_frames]))

    def split_frames(self) -> List["ClipMemory"]:
        """B * T entries of one frame each, clip-major (what a streaming cache keeps)."""
        folded = self.fold_time()
        return [
            replace(folded._map(lambda x: x[i : i + 1]), image_sizes=[folded.image_sizes[i]])
            for i in range(folded.num_clips)
        ]

    def flatten_time(self) -> Dict[str, torch.Tensor]:
        """The T frames of each clip as one token sequence of T * L levels, the decoders' and
        the temporal attentions' memory: one deformable-attention call then samples every
        frame, with one softmax over all of them.

        Returns:
            ``memory`` (B, T * S, C) frame-major, ``padding_mask`` (B, T * S),
            ``spatial_shapes`` (T * L, 2) (the L shapes repeated T times),
            ``level_start_index`` (T * L,), ``valid_ratios`` (B, T * L, 2).
        """
        b, t, s, c = self.memory.shape
        shapes = self.spatial_shapes.repeat(t, 1)
        return {
            "memory": self.memory.reshape(b, t * s, c),
            "padding_mask": self.padding_mask.reshape(b, t * s),
            "spatial_shapes": shapes,
            "level_start_index": level_start_index(shapes),
            "valid_ratios": self.valid_ratios.reshape(b, -1, 2),
        }

    def flat_values(self, name: str) -> Optional[List[torch.Tensor]]:
        """Decoder ``name``'s cached projections as one (B, T * S, M, C / M) per layer, the
        layout of :meth:`flatten_time`; None when they are not cached."""
        layers = self.values.get(name)
        if layers is None:
            return None
        return [v.reshape(v.shape[0], -1, *v.shape[3:]) for v in layers]

    @staticmethod
    def stack(windows: Sequence[Sequence["ClipMemory"]]) -> "ClipMemory":
        """B windows of T one-frame entries (from :meth:`split_frames`) as one batch.

        Frames of one batch must share one padded size; the value cache and the extras are
        kept only where every frame holds them (else they are recomputed by the caller).

        Raises:
            ValueError: windows of different lengths, or frames of different map sizes.
        """
        if not windows or not windows[0]:
            raise ValueError("ClipMemory.stack: no frames")
        first = windows[0][0]
        t = len(windows[0])
        for c, window in enumerate(windows):
            if len(window) != t:
                raise ValueError(
                    f"ClipMemory.stack: window {c} holds {len(window)} frames, window 0 {t}"
                )
            for i, m in enumerate(window):
                if m.num_clips != 1 or m.num_frames != 1:
                    raise ValueError(
                        f"ClipMemory.stack: frame {i} of window {c} holds "
                        f"{m.num_clips} x {m.num_frames} frames, expected one"
                    )
                if not torch.equal(m.spatial_shapes, first.spatial_shapes):
                    raise ValueError(
                        f"ClipMemory.stack: frame {i} of window {c} has maps "
                        f"{m.spatial_shapes.tolist()}, frame 0 of window 0 has "
                        f"{first.spatial_shapes.tolist()}: frames of one batch need one size"
                    )
                if (m.pos is None) != (first.pos is None):
                    raise ValueError(
                        f"ClipMemory.stack: frame {i} of window {c} was encoded by another "
                        "model (encoder output mixed with unencoded tokens)"
                    )
        frames = [m for window in windows for m in window]

        def cat(get) -> torch.Tensor:
            # One cat over all B * T frames, then split the windows apart: one copy.
            x = torch.cat([get(m) for m in frames])
            return x.reshape(len(windows), t, *x.shape[2:])

        values = {}
        for name, layers in first.values.items():
            if all(len(m.values.get(name, ())) == len(layers) for m in frames):
                values[name] = tuple(
                    cat(lambda m, j=j, name=name: m.values[name][j]) for j in range(len(layers))
                )
        extras = {
            k: cat(lambda m, k=k: m.extras[k])
            for k in first.extras
            if all(k in m.extras for m in frames)
        }
        return ClipMemory(
            memory=cat(lambda m: m.memory),
            padding_mask=cat(lambda m: m.padding_mask),
            spatial_shapes=first.spatial_shapes,
            level_start_index=first.level_start_index,
            valid_ratios=cat(lambda m: m.valid_ratios),
            image_sizes=[w[0].image_sizes[0] for w in windows],
            pos=None if first.pos is None else cat(lambda m: m.pos),
            values=values,
            extras=extras,
        )
