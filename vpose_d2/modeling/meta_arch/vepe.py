"""VEPE: Video End-to-end Pose Estimation (the VEPE paper, section 3, Fig. 2).

clip (B, T frames) -> spatial phase on every frame, one (B*T) batch: the image model's backbone,
spatial encoder, proposals and pose decoder (per frame its memory, N pose queries with poses
and scores) -> pose query selection (PQS, score >= threshold, padded to M slots with a mask)
-> instance queries (an embedding per selected query) -> STPE (key-frame queries: self-attention,
then cross-attention to the other frames' selected queries under the instance mask) -> STDME (the
key frame's memory: in-frame deformable attention, then one softmax over all T*L maps, eq. 1)
-> STPD (3 pose-decoder layers on STDME's memory from the STPE queries and the selected key-frame
poses, eqs. 2-4) -> PETR's joint decoder on the key frame -> key-frame poses and instance
embeddings in original pixels. No NMS.

The spatial phase's modules carry the image model's names (``backbone``, ``level_embed``,
``encoder``, ``proposal_head``, ``pose_decoder``, ``joint_decoder``), so an
:class:`ImagePoseTransformer` checkpoint loads into it as it is; the temporal modules are
``instance_queries``, ``stpe``, ``stdme`` and ``temporal_pose_decoder``. Everything up to the
instance embeddings depends on one frame only: it is :meth:`encode_frame_tokens`' work, kept in
the frames' :attr:`ClipMemory.extras`, so a stream runs it once per frame and only STPE, STDME,
STPD and the joint decoder per window.

Switches (``cfg.MODEL.VEPE``, Table 2): ``USE_STPE``, ``USE_ICM``, ``USE_STDME``, ``USE_STPD``;
with all off VEPE is the image model on the key frame (the baseline row). Without STPD the
spatial pose decoder decodes the temporal inputs. ``FREEZE_SPATIAL`` fixes the spatial phase.

Losses: the spatial phase's (proposals, pose-decoder and joint-decoder layers, auxiliary
heatmap) on every labeled frame, matched frame by frame; the temporal decoder's layers and the
joint decoder on the key frame (``temporal_`` prefix); the instance consistency loss (eq. 5,
``loss_instance``) over the Hungarian-matched selected queries of the labeled frames.
"""

from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Instances
from torch import nn

from vpose_d2.data.clip import clip_offsets

from ..clip_memory import ClipMemory
from ..losses.instance_consistency import MINING_MODES, instance_consistency_loss
from ..targets import frame_targets
from ..transformer import (
    InstanceQueries,
    JointDecoder,
    PoseDecoder,
    PoseQuerySelection,
    SpatioTemporalDeformableMemoryEncoder,
    SpatioTemporalPoseEncoder,
)
from .base import PoseModelBase
from .petr_stages import put_scalars

__all__ = ["VEPE"]

#: Per-query outputs of a spatial pose-decoder layer, as kept per frame.
_LAYER_FIELDS = ("poses", "logits", "sigmas", "queries")


@META_ARCH_REGISTRY.register()
class VEPE(PoseModelBase):
    """End-to-end multi-person pose estimation in video with instance embeddings: poses of the
    key frame of each clip.

    Inputs follow the Clip contract (docs/INTERNALS.md) with ``T = 1 + len(OFFSETS)`` frames
    and their per-frame ``labeled`` flags; a single image is a static clip.
    """

    @configurable
    def __init__(
        self,
        *,
        pose_decoder: PoseDecoder,
        pqs: PoseQuerySelection,
        instance_queries: Optional[InstanceQueries] = None,
        stpe: Optional[SpatioTemporalPoseEncoder] = None,
        stdme: Optional[SpatioTemporalDeformableMemoryEncoder] = None,
        temporal_pose_decoder: Optional[PoseDecoder] = None,
        icl_margin: float = 0.3,
        icl_mining: str = "hard",
        icl_weight: float = 1.0,
        freeze_spatial: bool = False,
        **kwargs,
    ):
        """
        Args:
            pose_decoder: the spatial phase's one-frame pose decoder (at least one layer).
            pqs: the pose query selection.
            instance_queries: the instance branch (the instance consistency mechanism), or None.
            stpe: the spatio-temporal pose encoder, or None.
            stdme: the spatio-temporal deformable memory encoder, or None.
            temporal_pose_decoder: STPD, a one-frame :class:`PoseDecoder`, or None (then the
                spatial ``pose_decoder`` decodes the temporal inputs, if any).
            icl_margin, icl_mining, icl_weight: the instance consistency loss.
            freeze_spatial: fix the spatial phase (no gradients, eval mode, no spatial losses).
            kwargs: :class:`PoseModelBase`'s arguments (``frame_offsets`` the clip's frames,
                ``joint_decoder`` PETR's one-frame joint decoder or None).
        """
        super().__init__(pose_decoder=pose_decoder, **kwargs)
        t = self.num_frames
        decoders = {
            "pose_decoder": (pose_decoder, "MODEL.VPOSE.DEC_LAYERS"),
            "temporal_pose_decoder": (temporal_pose_decoder, "MODEL.VEPE.STPD_LAYERS"),
            "joint_decoder": (self.joint_decoder, "MODEL.VPOSE.JOINT_DEC_LAYERS"),
        }
        for name, (part, key) in decoders.items():
            if part is not None and (part.num_frames != 1 or len(part.layers) == 0):
                raise ValueError(
                    f"VEPE: {name} must be a one-frame decoder with layers ({key} > 0)"
                )
        for name, part in (("stpe", stpe), ("stdme", stdme)):
            if part is not None and part.num_frames != t:
                raise ValueError(
                    f"VEPE: {name} is built for {part.num_frames} frames, the clip has {t} "
                    "(1 + len(INPUT.CLIP.OFFSETS))"
                )
        if instance_queries is not None and stpe is None:
            raise ValueError(
                "MODEL.VEPE.USE_ICM needs MODEL.VEPE.USE_STPE: the instance mask is STPE's"
            )
        if icl_mining not in MINING_MODES:
            raise ValueError(f"MODEL.VEPE.ICL_MINING={icl_mining!r} is not one of {MINING_MODES}")
        self.pqs = pqs
        self.instance_queries = instance_queries
        self.stpe = stpe
        self.stdme = stdme
        self.temporal_pose_decoder = temporal_pose_decoder
        self.icl_margin = icl_margin
        self.icl_mining = icl_mining
        self.icl_weight = icl_weight
        self.freeze_spatial = freeze_spatial
        if freeze_spatial and not self.temporal:
            raise ValueError(
                "MODEL.VEPE.FREEZE_SPATIAL with every temporal part off leaves nothing to train"
            )
        if freeze_spatial:
            for module in self.spatial_modules():
                module.requires_grad_(False)
            self.level_embed.requires_grad_(False)

    @classmethod
    def build_decoders(cls, cfg, num_keypoints: int) -> Dict:
        # The image model's spatial decoders, built where it builds them: one seed gives the
        # same spatial phase.
        joint = cfg.MODEL.VPOSE.JOINT_DEC_LAYERS > 0
        return {
            "pose_decoder": PoseDecoder(cfg, num_keypoints=num_keypoints),
            "joint_decoder": JointDecoder(cfg, num_keypoints=num_keypoints) if joint else None,
        }

    @classmethod
    def from_config(cls, cfg) -> Dict:
        e = cfg.MODEL.VEPE
        ret = super().from_config(cfg)
        offsets, _ = clip_offsets(cfg.INPUT.CLIP.OFFSETS)
        t, k = len(offsets), ret["num_keypoints"]
        ret.update(
            {
                "frame_offsets": offsets,
                "pqs": PoseQuerySelection(cfg),
                "instance_queries": InstanceQueries(cfg, num_keypoints=k) if e.USE_ICM else None,
                "stpe": (
                    SpatioTemporalPoseEncoder(cfg, num_keypoints=k, num_frames=t)
                    if e.USE_STPE
                    else None
                ),
                "stdme": (
                    SpatioTemporalDeformableMemoryEncoder(cfg, num_frames=t)
                    if e.USE_STDME
                    else None
                ),
                "temporal_pose_decoder": (
                    PoseDecoder(cfg, num_keypoints=k, num_layers=e.STPD_LAYERS)
                    if e.USE_STPD
                    else None
                ),
                "icl_margin": e.ICL_MARGIN,
                "icl_mining": e.ICL_MINING,
                "icl_weight": e.ICL_WEIGHT,
                "freeze_spatial": e.FREEZE_SPATIAL,
            }
        )
        return ret

    # ------------------------------------------------------------------ parts
    @property
    def temporal(self) -> bool:
        """Whether any temporal part runs (else the baseline: the spatial phase's outputs)."""
        return any(p is not None for p in (self.stpe, self.stdme, self.temporal_pose_decoder))

    def spatial_modules(self) -> List[nn.Module]:
        """The spatial phase's modules (with ``level_embed``, what FREEZE_SPATIAL fixes)."""
        parts = [self.backbone, self.encoder, self.proposal_head, self.pose_decoder]
        return [p for p in parts + [self.heatmap_head] if p is not None]

    def train(self, mode: bool = True) -> "VEPE":
        super().train(mode)
        if self.freeze_spatial:
            # A fixed feature extractor: no dropout, no batch statistics.
            for module in self.spatial_modules():
                module.eval()
        return self

    def temporal_decoder(self) -> PoseDecoder:
        """The decoder of the temporal phase: STPD, else the spatial pose decoder."""
        if self.temporal_pose_decoder is not None:
            return self.temporal_pose_decoder
        return self.pose_decoder

    # ------------------------------------------------------------------ per-frame work
    def _layer_key(self, i: int, name: str) -> str:
        return f"spatial/dec{i}/{name}"

    def frame_keys(self) -> List[str]:
        """The extras every encoded frame holds at test time (what :meth:`predict` reads)."""
        last = len(self.pose_decoder.layers) - 1
        keys = [self._layer_key(last, n) for n in _LAYER_FIELDS]
        if self.temporal:
            keys += [f"pqs/{n}" for n in ("index", "valid") + _LAYER_FIELDS]
            if self.instance_queries is not None:
                keys.append("pqs/embeds")
        return keys

    def encode_frame_tokens(self, clip: ClipMemory) -> ClipMemory:
        """The spatial encoder, then the rest of the per-frame work: the spatial stage, PQS and
        the instance embeddings of every frame, one batched call, kept in ``extras``."""
        return self.frame_work(super().encode_frame_tokens(clip))

    def frame_work(self, clip: ClipMemory) -> ClipMemory:
        """Spatial stage, pose query selection and instance embeddings of every frame of
        encoded clips, added to their ``extras`` (B, T, ...): the last spatial layer's
        ``spatial/dec{i}/*`` and the selection's ``pqs/*`` (index, valid, poses, logits,
        sigmas, queries, embeds), and in training every spatial layer and the proposals
        (``spatial/proposals/*``, for the losses)."""
        b, t = clip.num_clips, clip.num_frames

        def per_clip(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, t, *x.shape[1:])

        spatial = self.spatial_stage(clip)
        layers = spatial["pose_layers"]
        keep_all = self.training and not self.freeze_spatial
        extras = dict(clip.extras)
        for i, layer in enumerate(layers):
            if keep_all or i == len(layers) - 1:
                extras.update({self._layer_key(i, n): per_clip(layer[n]) for n in _LAYER_FIELDS})
        if keep_all:
            extras.update({f"spatial/proposals/{n}": per_clip(x)
                           for n, x in spatial["proposals"].items()})  # fmt: skip
        if self.temporal:
            last = layers[-1]
            fields = {n: last[n] for n in _LAYER_FIELDS}
            fields["poses"] = last["poses"][:, 0]  # (B * T, N, K, 2): one frame per row
            sel = self.pqs(last["logits"], fields)
            if self.instance_queries is not None:
                sel["embeds"] = self.instance_queries(
                    sel["index"], sel["queries"], sel["poses"], sel["valid"], clip.fold_time()
                )
            extras.update({f"pqs/{n}": per_clip(x) for n, x in sel.items()})
        return replace(clip, extras=extras)

    def check_cached_frame(self, m: ClipMemory, where: str) -> None:
        super().check_cached_frame(m, where)
        missing = [k for k in self.frame_keys() if k not in m.extras]
        if missing:
            raise ValueError(
                f"decode: {where} lacks VEPE's per-frame results ({', '.join(missing[:3])}): "
                "it was encoded by another model or by a VEPE with other switches"
            )

    def value_cache_decoders(self) -> Dict[str, nn.Module]:
        """Decoders whose values a stream projects once per frame: those reading a frame's
        spatial memory per window (the joint decoder; STPD without STDME). The spatial pose
        decoder runs once per frame anyway."""
        named = {"joint_decoder": self.joint_decoder}
        if self.stdme is None:
            named["temporal_pose_decoder"] = self.temporal_pose_decoder
        return {name: d for name, d in named.items() if d is not None}

    def frame_pos(self, frame: ClipMemory) -> torch.Tensor:
        """(B, S, C) position + level embeddings of one-frame clips' tokens, from their padding
        masks (what the backbone's tokens got; the encoded memory does not keep them)."""
        mask = frame.padding_mask[:, 0]
        pos = []
        shapes = frame.spatial_shapes.tolist()
        starts = frame.level_start_index.tolist()
        for lvl, ((h, w), start) in enumerate(zip(shapes, starts)):
            m = mask[:, start : start + h * w].view(-1, h, w)
            p = self.position_embedding(m).to(frame.memory.dtype)
            p = p + self.level_embed[lvl].view(1, -1, 1, 1).to(p.dtype)
            pos.append(p.flatten(2).transpose(1, 2))
        return torch.cat(pos, 1)

    # ------------------------------------------------------------------ the window
    def predict(self, clip: ClipMemory) -> Dict:
        """The key frame's poses from the frames' spatial stage (``extras``).

        Returns:
            ``proposals`` None, ``pose_layers`` the temporal decoder's layers on the key frame
            (poses (B, 1, M, K, 2), logits, sigmas, ``valid`` (B, M)) or [] for the baseline,
            ``final`` (invalid slots' logits at -inf), and with the instance branch
            ``person_fields`` {"pred_instance_embeds": (B, M, E)}.
        """
        key = self.key_index
        if not self.temporal:
            last = len(self.pose_decoder.layers) - 1
            final = {n: clip.extras[self._layer_key(last, n)][:, key] for n in _LAYER_FIELDS}
            return {"proposals": None, "pose_layers": [], "final": final}
        sel = {n: clip.extras[f"pqs/{n}"] for n in ("valid",) + _LAYER_FIELDS}
        embeds = clip.extras.get("pqs/embeds")
        valid = sel["valid"][:, key]
        queries = sel["queries"][:, key]
        if self.stpe is not None:
            queries = self.stpe(sel["queries"], sel["poses"], sel["valid"], key, embeds)
        key_clip = clip.frame(key)
        decoder = self.temporal_decoder()
        values = None
        if self.stdme is not None:
            memory = self.stdme(clip, self.frame_pos(key_clip), key)
        else:
            memory = key_clip
            if self.temporal_pose_decoder is not None:
                values = key_clip.flat_values("temporal_pose_decoder")
        layers = decoder(
            queries,
            sel["poses"][:, key, None].detach(),
            memory,
            key_index=0,
            values=values,
            query_padding_mask=~valid,
        )
        for layer in layers:
            layer["valid"] = valid
        final = dict(layers[-1], logits=layers[-1]["logits"].masked_fill(~valid, float("-inf")))
        out = {"proposals": None, "pose_layers": layers, "final": final}
        if embeds is not None:
            out["person_fields"] = {"pred_instance_embeds": embeds[:, key]}
        return out

    def inference(
        self, out: Dict, clip: ClipMemory, output_sizes: Sequence[Tuple[int, int]]
    ) -> List[Instances]:
        """The base's inference on the key frame alone (the final poses have one frame; the
        joint decoder reads the key frame's spatial memory)."""
        return super().inference(out, clip.frame(self.key_index), output_sizes, key_index=0)

    # ------------------------------------------------------------------ losses
    def labeled_rows(self, batched_inputs: Sequence[Dict]) -> List[Tuple[int, int]]:
        """(clip, frame) pairs with labels: the clip's ``labeled`` flags; without them every
        frame of a per-frame ``instances`` list, else the key frame only."""
        t, rows = self.num_frames, []
        for b, d in enumerate(batched_inputs):
            flags = d.get("labeled")
            if flags is None:
                per_frame = isinstance(d.get("instances"), (list, tuple))
                flags = [per_frame or i == self.key_index for i in range(t)]
            if len(flags) != t:
                raise ValueError(
                    f"input {d.get('video_id', '?')}: {len(flags)} 'labeled' flags for T={t}"
                )
            rows += [(b, i) for i in range(t) if flags[i]]
        return rows

    def losses(self, out: Dict, clip: ClipMemory, batched_inputs: List[Dict]) -> Dict:
        """Spatial losses on every labeled frame, the temporal decoder's on the key frame, and
        the instance consistency loss."""
        rows = self.labeled_rows(batched_inputs)
        k = self.num_keypoints
        per_frame = {
            i: frame_targets(batched_inputs, clip.image_sizes, k, self.device, frame=i)
            for i in sorted({i for _, i in rows})
        }
        targets = [per_frame[i][b] for b, i in rows]
        index = torch.as_tensor([b * self.num_frames + i for b, i in rows], device=self.device)
        losses: Dict[str, torch.Tensor] = {}
        if not self.freeze_spatial and rows:
            losses.update(self.spatial_losses(clip, index, targets))
        if self.temporal:
            key_targets = frame_targets(batched_inputs, clip.image_sizes, k, self.device)
            losses.update(
                self.set_losses(out, clip.frame(self.key_index), key_targets, "temporal_", 0)
            )
            valid = clip.extras["pqs/valid"]
            put_scalars(selected_queries=float(valid.sum(-1).float().mean()))
            if self.instance_queries is not None:
                icl = self.instance_loss(clip, index, targets, [b for b, _ in rows])
                losses["loss_instance"] = self.icl_weight * icl
        return losses

    def _select_frames(self, clip: ClipMemory, index: torch.Tensor) -> ClipMemory:
        """Rows ``index`` of the B * T frames, as one-frame clips."""
        frames = clip.fold_time()
        if index.numel() == frames.num_clips and bool(
            (index == torch.arange(frames.num_clips, device=index.device)).all()
        ):
            return frames
        split = frames.split_frames()
        return ClipMemory.stack([[split[i]] for i in index.tolist()])

    def spatial_losses(
        self, clip: ClipMemory, index: torch.Tensor, targets: List[Dict]
    ) -> Dict[str, torch.Tensor]:
        """The image model's losses on the labeled frames ``index`` (rows of the B * T), each
        frame matched on its own; the heatmap too."""

        def rows(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, *x.shape[2:])[index]

        ex = clip.extras
        prefix = "spatial/proposals/"
        proposals = {k[len(prefix) :]: rows(x) for k, x in ex.items() if k.startswith(prefix)}
        layers = [
            {n: rows(ex[self._layer_key(i, n)]) for n in _LAYER_FIELDS}
            for i in range(len(self.pose_decoder.layers))
        ]
        frames = self._select_frames(clip, index)
        out = {"proposals": proposals, "pose_layers": layers}
        losses = self.set_losses(out, frames, targets, "", 0)
        if self.heatmap_head is not None:
            losses["loss_heatmap"] = self.heatmap_weight * self.heatmap_head.loss(
                frames.memory[:, 0],
                frames.padding_mask[:, 0],
                frames.spatial_shapes,
                frames.valid_ratios[:, 0],
                targets,
            )
        return losses

    def instance_loss(
        self, clip: ClipMemory, index: torch.Tensor, targets: List[Dict], clips: List[int]
    ) -> torch.Tensor:
        """Eq. 5 over the selected queries Hungarian-matched to the labeled frames' persons
        with a track id; positives share the track id in another frame of the clip."""

        def rows(name: str) -> torch.Tensor:
            x = clip.extras[f"pqs/{name}"]
            return x.reshape(-1, *x.shape[2:])[index]

        stage = {"logits": rows("logits"), "poses": rows("poses")}
        valid = rows("valid")
        indices = self.criterion.match(stage, targets, valid) if len(targets) else []
        embeds, track_ids, frames, groups = [], [], [], []
        embeds_rows = rows("embeds")
        for r, (src, tgt) in enumerate(indices):
            src, tgt = src.to(self.device), tgt.to(self.device)
            ids = targets[r]["track_ids"][tgt]
            keep = ids >= 0
            embeds.append(embeds_rows[r, src[keep]])
            track_ids.append(ids[keep])
            frame = int(index[r]) % self.num_frames
            frames.append(torch.full_like(ids[keep], frame))
            groups.append(torch.full_like(ids[keep], clips[r]))
        if not embeds:
            return embeds_rows.sum() * 0.0
        embeds = torch.cat(embeds)
        put_scalars(instance_candidates=float(embeds.shape[0]))
        return instance_consistency_loss(
            embeds,
            torch.cat(track_ids),
            torch.cat(frames),
            torch.cat(groups),
            self.icl_margin,
            self.icl_mining,
        )
