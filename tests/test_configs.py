"""Every YAML under configs/ loads with add_vpose_config and builds its model on CPU."""

from pathlib import Path

import pytest

# vpose_d2 first: its compat module must run before Detectron2 imports its missing ops.
import vpose_d2  # noqa: F401  isort: skip
import torch
from detectron2.config import get_cfg

from vpose_d2.config import add_vpose_config
from vpose_d2.engine import VPoseTrainer, merge_config_file

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def _load(path: Path):
    cfg = get_cfg()
    add_vpose_config(cfg)
    merge_config_file(cfg, str(path))
    cfg.MODEL.DEVICE = "cpu"
    # Construction only: never read MODEL.WEIGHTS (e.g. a detectron2:// download).
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert any(n.startswith("Base-") for n in names), names
    assert len(CONFIGS) >= 4, names


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_config_loads_and_builds_its_model(path):
    cfg = _load(path)
    assert cfg.SOLVER.MAX_ITER > 0 and cfg.SOLVER.IMS_PER_BATCH > 0
    assert cfg.SOLVER.AMP.PRECISION in ("bf16", "fp16")
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE in ("full_model", "value", "norm")
    assert len(cfg.DATASETS.TRAIN) > 0, "no training dataset"

    model = VPoseTrainer.build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 1_000_000
    assert all(p.device.type == "cpu" for p in model.parameters())
    # The optimizer groups must cover every trainable parameter exactly once.
    opt = VPoseTrainer.build_optimizer(cfg, model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(trainable)
    # lr multipliers reach the real parameter names (not just the toy ones of test_engine).
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    offsets = [p for n, p in named if "sampling_offsets" in n]
    trunk = [p for n, p in named if n.startswith("backbone.bottom_up.")]
    assert offsets, "no deformable sampling_offsets parameter found"
    base = cfg.SOLVER.BASE_LR
    assert {lr_of[id(p)] for p in offsets} == {base * cfg.SOLVER.LINEAR_PROJ_MULTIPLIER}
    assert {lr_of[id(p)] for p in trunk} <= {base * cfg.SOLVER.BACKBONE_MULTIPLIER}
