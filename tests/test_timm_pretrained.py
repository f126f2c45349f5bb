"""MODEL.TIMM.PRETRAINED_FILE: a plain timm checkpoint lands in the features-only backbone."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from vpose_d2.config import get_vpose_cfg


def _cfg(name: str, out_indices, pretrained_file: str = ""):
    cfg = get_vpose_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_timm_pose_backbone"
    cfg.MODEL.TIMM.NAME = name
    cfg.MODEL.TIMM.OUT_INDICES = list(out_indices)
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    cfg.MODEL.TIMM.PRETRAINED_FILE = pretrained_file
    return cfg


def test_swin_checkpoint_is_remapped_and_loaded(tmp_path):
    timm = pytest.importorskip("timm")
    # The plain model, as an ImageNet checkpoint is saved: "layers.0...", with a head.
    plain = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    ckpt = tmp_path / "swin_tiny.pth"
    torch.save(plain.state_dict(), ckpt)

    cfg = _cfg("swin_tiny_patch4_window7_224", (1, 2, 3), str(ckpt))
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    features = backbone.bottom_up.model.state_dict()
    # timm's features-only wrapper renames "layers.1" to "layers_1"; the weights must follow.
    assert "layers_1.blocks.0.attn.qkv.weight" in features
    ref = plain.state_dict()
    assert torch.equal(
        features["layers_1.blocks.0.attn.qkv.weight"], ref["layers.1.blocks.0.attn.qkv.weight"]
    )
    assert torch.equal(features["patch_embed.proj.weight"], ref["patch_embed.proj.weight"])

    # Without the file the weights are random, i.e. the test above is not vacuous.
    fresh = build_backbone(_cfg("swin_tiny_patch4_window7_224", (1, 2, 3)), ShapeSpec(channels=3))
    assert not torch.equal(
        fresh.bottom_up.model.state_dict()["patch_embed.proj.weight"],
        ref["patch_embed.proj.weight"],
    )


def test_missing_pretrained_file_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone(_cfg("resnet18", (2, 3, 4), str(missing)), ShapeSpec(channels=3))
