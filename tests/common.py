"""The one tiny model, config and inputs every model test uses: three strided convolutions
for a backbone, a 16-channel transformer, K = 5 joints (nothing may assume 15 or 17)."""

from typing import Dict
from unittest import mock

import torch

import vpose_d2  # noqa: F401  isort: skip  (compat shims before Detectron2's structures)
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.structures import Boxes, Instances
from torch import nn

from vpose_d2.config import get_vpose_cfg
from vpose_d2.modeling.backbone.neck import MultiScalePoseBackbone
from vpose_d2.modeling.meta_arch import base as base_module

K = 5  # joints: nothing may assume 15 or 17
H, W = 48, 64


class TinyBottomUp(Backbone):
    """Three strided convs standing in for C3-C5 (strides 8, 16, 32): keeps the tests fast."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.c4 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c5 = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        c3 = torch.relu(self.stem(x))
        c4 = torch.relu(self.c4(c3))
        return {"res3": c3, "res4": c4, "res5": torch.relu(self.c5(c4))}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            "res3": ShapeSpec(channels=8, stride=8),
            "res4": ShapeSpec(channels=8, stride=16),
            "res5": ShapeSpec(channels=16, stride=32),
        }


def tiny_backbone(cfg, input_shape=None) -> Backbone:
    return MultiScalePoseBackbone(
        bottom_up=TinyBottomUp(),
        in_features=["res3", "res4", "res5"],
        out_channels=cfg.MODEL.VPOSE.HIDDEN_DIM,
        num_levels=cfg.MODEL.VPOSE.NUM_FEATURE_LEVELS,
        num_groups=4,
    )


def tiny_cfg(offsets=(-1, 1), **pave):
    cfg = get_vpose_cfg()
    cfg.MODEL.META_ARCHITECTURE = "PAVENet"
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ()
    cfg.INPUT.CLIP.OFFSETS = list(offsets)
    v = cfg.MODEL.VPOSE
    v.NUM_KEYPOINTS = K
    v.HIDDEN_DIM = 16
    v.NHEADS = 2
    v.DIM_FEEDFORWARD = 32
    v.DROPOUT = 0.0
    v.ENC_LAYERS = 1
    v.NUM_QUERIES = 6
    v.DEC_LAYERS = 2
    v.JOINT_DEC_LAYERS = 2
    v.JOINT_DEC_N_POINTS = 2
    v.NUM_JOINT_PERSONS_TEST = 3
    v.REFINE_HIDDEN_DIM = 16
    v.REFINE_NUM_LAYERS = 2
    cfg.TEST.DETECTIONS_PER_IMAGE = 4
    for key, value in pave.items():
        setattr(cfg.MODEL.PAVE, key, value)
    return cfg


def build(cfg, cls=None, seed: int = 0) -> nn.Module:
    """The model of ``cfg`` (or class ``cls``) on the tiny backbone, seeded."""
    from detectron2.modeling import META_ARCH_REGISTRY

    cls = cls or META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    torch.manual_seed(seed)
    with mock.patch.object(base_module, "build_backbone", tiny_backbone):
        return cls(cfg)


def perturb(model: nn.Module, seed: int = 1) -> nn.Module:
    """Move every parameter off its (often zero) initialization, so that comparisons and
    softmax checks are not trivially satisfied by zero offsets and uniform weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def frames(t: int, seed: int, h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), generator=g, dtype=torch.uint8)


def instances(seed: int, n: int = 2, h: int = H, w: int = W) -> Instances:
    g = torch.Generator().manual_seed(seed)
    kpts = torch.rand(n, K, 3, generator=g) * torch.tensor([w * 0.8, h * 0.8, 1.0])
    kpts[..., :2] += torch.tensor([w * 0.1, h * 0.1])
    kpts[..., 2] = 2.0
    kpts[0, 0, 2] = 0.0  # an unannotated joint
    inst = Instances((h, w))
    inst.gt_keypoints = kpts
    xy = kpts[..., :2]
    inst.gt_boxes = Boxes(torch.cat([xy.amin(1), xy.amax(1)], -1))
    inst.gt_classes = torch.zeros(n, dtype=torch.int64)
    inst.gt_track_ids = torch.arange(n)
    return inst


def clip(t: int, key: int, seed: int, h: int = H, w: int = W) -> Dict:
    return {
        "image": frames(t, seed, h, w),
        "key_index": key,
        "instances": [instances(seed + i, h=h, w=w) for i in range(t)],
        "labeled": [True] * t,
        "video_id": f"video{seed}",
        "frame_ids": list(range(t)),
        "key_frame_id": key,
        "height": h * 2,
        "width": w * 2,
    }
