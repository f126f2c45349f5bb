"""timm feature extractors (Swin-L, HRNet-W48, ...) as pose backbones."""

import logging
import os
from typing import Dict, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .neck import MultiScalePoseBackbone

__all__ = ["TimmBackbone", "build_timm_pose_backbone"]

logger = logging.getLogger(__name__)


class TimmBackbone(Backbone):
    """A timm ``features_only`` model as a Detectron2 Backbone, always NCHW.

    Weights are never downloaded (``pretrained=False``); load them through
    ``MODEL.WEIGHTS`` and Detectron2's checkpointer.
    """

    def __init__(
        self,
        *,
        name: str,
        out_indices: Sequence[int],
        drop_path_rate: float = 0.0,
        freeze_at: int = 0,
        size_divisibility: int = 32,
        feature_location: Optional[str] = None,
        model_kwargs: Optional[Dict] = None,
        pretrained_file: Optional[str] = None,
    ):
        """
        Args:
            name: timm model name, e.g. "swin_large_patch4_window12_384", "hrnet_w48".
            out_indices: timm feature indices used as C3-C5.
            drop_path_rate: stochastic depth (ignored by models without it).
            freeze_at: freeze the stem and the first ``freeze_at - 1`` returned stages
                (0 freezes nothing, like Detectron2's FREEZE_AT).
            size_divisibility: pad inputs to a multiple of this.
            feature_location: timm's ``feature_location`` ("" raw HRNet branches, "incre");
                None leaves timm's default (models without the option need None).
            model_kwargs: extra ``timm.create_model`` arguments (e.g. a smaller
                ``embed_dim`` / ``depths`` in tests).
            pretrained_file: a local timm / ImageNet checkpoint (.pth, .bin, .safetensors)
                for the plain timm model. timm loads it itself, before wrapping the model
                for features, so its key remapping (e.g. Swin's ``layers.0`` ->
                ``layers_0``) and head filtering apply; Detectron2's name matching cannot do
                that. Nothing is downloaded.
        """
        super().__init__()
        import timm

        kwargs = {"pretrained": False, "features_only": True, "out_indices": tuple(out_indices)}
        if pretrained_file:
            if not os.path.isfile(pretrained_file):
                raise FileNotFoundError(
                    f"MODEL.TIMM.PRETRAINED_FILE: no checkpoint at {pretrained_file!r}"
                )
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": pretrained_file})
        if "swin" in name:
            # Swin in timm fixes the input size unless told otherwise.
            kwargs.update(strict_img_size=False, dynamic_img_size=True)
        if feature_location is not None:
            kwargs["feature_location"] = feature_location
        kwargs.update(model_kwargs or {})
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        try:
            self.model = timm.create_model(name, **kwargs)
        except TypeError as e:
            if "drop_path_rate" not in kwargs:
                raise
            logger.warning("timm model %s takes no drop_path_rate (%s); building without", name, e)
            kwargs.pop("drop_path_rate")
            self.model = timm.create_model(name, **kwargs)
        info = self.model.feature_info
        channels, reductions = info.channels(), info.reduction()
        # Detectron2's Backbone.output_shape reads the three _out_* attributes.
        self._out_features = [f"c{i}" for i in range(len(channels))]
        self._out_feature_channels = dict(zip(self._out_features, channels))
        self._out_feature_strides = dict(zip(self._out_features, reductions))
        self._size_divisibility = size_divisibility
        if freeze_at > 0:
            self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        # Parameters are frozen in the order timm registers them, up to the end of stage
        # freeze_at - 1 (the stem counts as stage 0): good enough for Swin and HRNet whose
        # modules are registered stem first.
        modules = list(self.model.named_children())
        n_frozen = 0
        for _, module in modules[: max(freeze_at, 1)]:
            for p in module.parameters():
                p.requires_grad_(False)
            n_frozen += 1
        logger.info("TimmBackbone: froze the first %d top-level modules", n_frozen)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {"c0": (B, C0, H/s0, W/s0), ...} in NCHW."""
        outs = {}
        for name, feat in zip(self._out_features, self.model(x)):
            c = self._out_feature_channels[name]
            # Some timm versions return Swin maps channels-last.
            if feat.shape[1] != c and feat.shape[-1] == c:
                feat = feat.permute(0, 3, 1, 2)
            outs[name] = feat.contiguous()
        return outs


@BACKBONE_REGISTRY.register()
def build_timm_pose_backbone(cfg, input_shape: ShapeSpec) -> MultiScalePoseBackbone:
    """timm model ``cfg.MODEL.TIMM.NAME``; its maps ``OUT_INDICES`` are C3-C5."""
    t = cfg.MODEL.TIMM
    bottom_up = TimmBackbone(
        name=t.NAME,
        out_indices=t.OUT_INDICES,
        drop_path_rate=t.DROP_PATH_RATE,
        freeze_at=t.FREEZE_AT,
        size_divisibility=t.SIZE_DIVISIBILITY,
        # Only HRNet-style models take feature_location.
        feature_location=t.FEATURE_LOCATION if t.NAME.startswith("hrnet") else None,
        pretrained_file=t.PRETRAINED_FILE or None,
    )
    return MultiScalePoseBackbone(
        bottom_up=bottom_up,
        in_features=bottom_up._out_features,
        out_channels=cfg.MODEL.VPOSE.HIDDEN_DIM,
        num_levels=cfg.MODEL.VPOSE.NUM_FEATURE_LEVELS,
        num_groups=cfg.MODEL.VPOSE.NECK_NUM_GROUPS,
    )
