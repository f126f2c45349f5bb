"""VPoseTrainer: optimizer groups, clipping, AMP, checkpoints, resume, CPU launch, errors."""

import itertools
import json
import math
from pathlib import Path
from typing import Dict, List

import pytest

# vpose_d2 first: its compat module must run before Detectron2 imports its missing ops.
import vpose_d2  # noqa: F401  isort: skip
import torch
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from script_loader import load_script
from torch import nn

from vpose_d2.config import add_vpose_config
from vpose_d2.engine import (
    ConfigKeyError,
    MixedPrecisionTrainer,
    StrictShapeCheckpointer,
    VPoseTrainer,
    build_vpose_optimizer,
    launch,
    merge_config_file,
    merge_config_opts,
)

# ------------------------------------------------------------------------------------------
# A toy model and loader: the trainer's mechanics, independent of the real models' cost.
# ------------------------------------------------------------------------------------------


@META_ARCH_REGISTRY.register()
class EngineToyModel(nn.Module):
    """Parameter names mimic the real models': ``backbone.bottom_up.*`` (the pretrained
    trunk), ``backbone.input_proj.*`` (the neck), ``*.sampling_offsets.*``."""

    def __init__(self, cfg=None):
        super().__init__()
        self.backbone = nn.ModuleDict({"bottom_up": nn.Linear(4, 8), "input_proj": nn.Linear(8, 8)})
        self.norm = nn.LayerNorm(8)
        self.attn = nn.ModuleDict({"sampling_offsets": nn.Linear(8, 8)})
        self.reference_points = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.last_dtype = None

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        device = self.head.weight.device
        x = torch.stack([b["x"] for b in batched_inputs]).to(device)
        h = self.norm(self.backbone["input_proj"](self.backbone["bottom_up"](x))).relu()
        h = self.reference_points(self.attn["sampling_offsets"](h))
        out = self.head(h)
        self.last_dtype = out.dtype
        if not self.training:
            return out
        y = torch.stack([b["y"] for b in batched_inputs]).to(device)
        return {"loss_toy": ((out.float() - y) ** 2).mean()}


class ToyTrainer(VPoseTrainer):
    """The same batch every iteration (seeded by rank), so runs are comparable."""

    @classmethod
    def build_train_loader(cls, cfg):
        g = torch.Generator().manual_seed(cfg.SEED + 1000 * comm.get_rank())
        batch = [
            {"x": torch.randn(4, generator=g), "y": torch.randn(2, generator=g)}
            for _ in range(cfg.SOLVER.IMS_PER_BATCH)
        ]
        return itertools.repeat(batch)


def toy_cfg(output_dir, **solver):
    cfg = get_cfg()
    add_vpose_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "EngineToyModel"
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 1e-2
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.STEPS = (4,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 3
    cfg.SEED = 3
    cfg.OUTPUT_DIR = str(output_dir)
    for k, v in solver.items():
        cfg.merge_from_list([f"SOLVER.{k}", v])
    return cfg


def flat_weights(model: nn.Module) -> torch.Tensor:
    model = getattr(model, "module", model)
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


# ------------------------------------------------------------------------------------------
# Optimizer
# ------------------------------------------------------------------------------------------


def test_param_groups_lr_multipliers_and_decay():
    cfg = toy_cfg("unused")
    cfg.SOLVER.BASE_LR = 2e-4
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.5
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    model = EngineToyModel()
    model.head.bias.requires_grad_(False)
    opt = build_vpose_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    setting = {}
    for group in opt.param_groups:
        for p in group["params"]:
            setting[p] = (group["lr"], group["weight_decay"])
    assert setting[model.backbone["bottom_up"].weight] == pytest.approx((2e-5, 1e-4))
    assert setting[model.backbone["input_proj"].weight] == pytest.approx((2e-4, 1e-4))
    assert setting[model.attn["sampling_offsets"].weight] == pytest.approx((1e-4, 1e-4))
    assert setting[model.reference_points.bias] == pytest.approx((1e-4, 1e-4))
    assert setting[model.head.weight] == pytest.approx((2e-4, 1e-4))
    assert setting[model.norm.weight] == pytest.approx((2e-4, 0.0))
    assert model.head.bias not in setting  # frozen
    assert sum(len(g["params"]) for g in opt.param_groups) == 11  # each parameter once
    assert len(opt.param_groups) <= 4  # merged by hyper-parameters


def _sgd_step_norm(clip_type: str, clip_value: float) -> torch.Tensor:
    """Norm of the update of SGD(lr=1) on a gradient of total norm 100, per parameter."""
    cfg = toy_cfg("unused")
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.WEIGHT_DECAY = cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = cfg.SOLVER.LINEAR_PROJ_MULTIPLIER = 1.0
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    model = EngineToyModel()
    opt = build_vpose_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    n = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0 / n**0.5)
    opt.step()
    return torch.stack([(b - p.detach()).norm() for b, p in zip(before, model.parameters())])


def test_full_model_clipping_clips_the_global_norm():
    deltas = _sgd_step_norm("full_model", 0.1)
    assert deltas.norm().item() == pytest.approx(0.1, rel=1e-4)
    # Detectron2's per-parameter "norm" clipping still works: each tensor clipped alone.
    deltas = _sgd_step_norm("norm", 0.1)
    assert torch.allclose(deltas, torch.full_like(deltas, 0.1), rtol=1e-4)


def test_unknown_clip_type_is_rejected():
    cfg = toy_cfg("unused")
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "global"
    with pytest.raises(ValueError, match="CLIP_TYPE='global'"):
        build_vpose_optimizer(cfg, EngineToyModel())


# ------------------------------------------------------------------------------------------
# Mixed precision
# ------------------------------------------------------------------------------------------


_DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_trainer(precision, dtype, device):
    torch.manual_seed(0)
    model = EngineToyModel().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = ToyTrainer.build_train_loader(toy_cfg("unused"))
    trainer = MixedPrecisionTrainer(model, loader, opt, precision=precision)
    assert (trainer.grad_scaler is not None) == (precision == "fp16")
    before = flat_weights(model)
    with EventStorage(0) as storage:
        for trainer.iter in range(2):
            storage.iter = trainer.iter
            trainer.run_step()
    assert model.last_dtype == dtype
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert not torch.equal(before, flat_weights(model))
    assert torch.isfinite(flat_weights(model)).all()
    assert ("grad_scaler" in trainer.state_dict()) == (precision == "fp16")


def test_mixed_precision_rejects_unknown_precision():
    model = EngineToyModel()
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION='fp8'"):
        MixedPrecisionTrainer(model, [], torch.optim.SGD(model.parameters(), 0.1), precision="fp8")


# ------------------------------------------------------------------------------------------
# Checkpoints and resume
# ------------------------------------------------------------------------------------------


def test_strict_shapes_names_first_mismatched_key(tmp_path):
    source = EngineToyModel()
    state = source.state_dict()
    state["attn.sampling_offsets.weight"] = torch.zeros(8, 3)
    state["head.weight"] = torch.zeros(5, 8)
    torch.save({"model": state}, tmp_path / "bad.pth")

    model = EngineToyModel()
    with pytest.raises(ValueError) as err:
        StrictShapeCheckpointer(model).load(str(tmp_path / "bad.pth"))
    msg = str(err.value)
    assert "bad.pth" in msg and "'attn.sampling_offsets.weight'" in msg
    assert "(8, 3)" in msg and "(8, 8)" in msg and "2 mismatched" in msg
    assert "MODEL.WEIGHTS_STRICT_SHAPES" in msg

    # Opted out: the fitting tensors load, the others keep their initialization.
    model = EngineToyModel()
    init_head = model.head.weight.detach().clone()
    StrictShapeCheckpointer(model, strict_shapes=False).load(str(tmp_path / "bad.pth"))
    assert torch.equal(model.backbone["bottom_up"].weight, source.backbone["bottom_up"].weight)
    assert torch.equal(model.head.weight, init_head)


def test_trainer_rejects_mismatched_model_weights(tmp_path):
    state = EngineToyModel().state_dict()
    state["backbone.bottom_up.weight"] = torch.zeros(8, 5)
    torch.save({"model": state}, tmp_path / "w.pth")
    cfg = toy_cfg(tmp_path / "out")
    cfg.MODEL.WEIGHTS = str(tmp_path / "w.pth")
    trainer = ToyTrainer(cfg)
    with pytest.raises(ValueError, match=r"'backbone.bottom_up.weight' has shape \(8, 5\)"):
        trainer.resume_or_load(resume=False)


def test_resume_continues_at_the_same_iteration(tmp_path):
    """An uninterrupted 6-iteration run checkpoints at iteration 3; a fresh trainer resumes
    there with the saved weights, and its 3 more iterations end where the uninterrupted run
    ended (weights, AdamW moments and lr schedule all restored)."""
    cfg = toy_cfg(tmp_path, MAX_ITER=6, CHECKPOINT_PERIOD=3)
    full = ToyTrainer(cfg)
    full.resume_or_load(resume=False)
    full.train()
    w6 = flat_weights(full.model)
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=False)
    assert saved["iteration"] == 2

    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    resumed = ToyTrainer(cfg.clone())
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    for name, p in resumed.model.state_dict().items():
        assert torch.equal(p, saved["model"][name]), name
    assert resumed.scheduler.last_epoch == 3
    assert len(resumed.optimizer.state) > 0  # AdamW moments came back
    resumed.train()
    assert resumed.iter == 6
    assert torch.allclose(flat_weights(resumed.model), w6, rtol=0, atol=1e-7)
    assert not torch.allclose(
        w6, torch.cat([v.double().flatten() for v in saved["model"].values()])
    )


# ------------------------------------------------------------------------------------------
# Clear errors
# ------------------------------------------------------------------------------------------


def test_unknown_key_in_config_file_names_key_and_file(tmp_path):
    base = tmp_path / "Base.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.1\nMODEL:\n  VPOSE:\n    NUM_QUERYS: 10\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: Base.yaml\nSOLVER:\n  MAX_ITER: 5\n")
    cfg = get_cfg()
    add_vpose_config(cfg)
    with pytest.raises(KeyError) as err:
        merge_config_file(cfg, str(child))
    assert isinstance(err.value, ConfigKeyError)
    assert "MODEL.VPOSE.NUM_QUERYS" in str(err.value) and str(base) in str(err.value)

    good = tmp_path / "good.yaml"
    good.write_text("SOLVER:\n  MAX_ITER: 5\n")
    merge_config_file(cfg, str(good))
    assert cfg.SOLVER.MAX_ITER == 5


def test_unknown_key_in_opts_says_opts():
    cfg = get_cfg()
    add_vpose_config(cfg)
    with pytest.raises(ConfigKeyError, match=r"SOLVER.BASE_LRR .*--opts"):
        merge_config_opts(cfg, ["SOLVER.BASE_LRR", "0.1"])
    merge_config_opts(cfg, ["SOLVER.BASE_LR", "0.5"])
    assert cfg.SOLVER.BASE_LR == 0.5


def test_unregistered_dataset_is_named(tmp_path):
    cfg = toy_cfg(tmp_path)
    cfg.DATASETS.TRAIN = ("posetrack_does_not_exist",)
    with pytest.raises(KeyError, match="DATASETS.TRAIN: dataset 'posetrack_does_not_exist'"):
        VPoseTrainer.build_train_loader(cfg)
    with pytest.raises(KeyError, match="Registered datasets: .*coco"):
        VPoseTrainer.build_test_loader(cfg, "posetrack_does_not_exist")


# ------------------------------------------------------------------------------------------
# The real quick config on a tiny synthetic set
# ------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
QUICK_CONFIG = REPO / "configs" / "quick" / "petr_synthetic.yaml"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from vpose_d2.data.datasets.synthetic import make_synthetic_posetrack

    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_posetrack(
        root,
        num_train_videos=2,
        num_val_videos=1,
        frames_per_video=4,
        size=128,
        max_persons=2,
        val_label_every=2,
    )


def quick_cfg(synthetic_root, output_dir, extra=None):
    """The quick config, shrunk to 128-pixel frames and batches of 2 (model unchanged)."""
    if not QUICK_CONFIG.is_file():
        pytest.skip(f"{QUICK_CONFIG} is missing")
    cfg = get_cfg()
    add_vpose_config(cfg)
    merge_config_file(cfg, str(QUICK_CONFIG))
    opts = {
        "DATASETS.SYNTHETIC_ROOT": str(synthetic_root),
        "OUTPUT_DIR": str(output_dir),
        "MODEL.DEVICE": "cpu",
        "INPUT.MIN_SIZE_TRAIN": "(128,)",
        "INPUT.MAX_SIZE_TRAIN": "128",
        "INPUT.MIN_SIZE_TEST": "128",
        "INPUT.MAX_SIZE_TEST": "128",
        "SOLVER.IMS_PER_BATCH": "2",
        "SOLVER.WARMUP_ITERS": "1",
        "SEED": "5",
        "DATALOADER.NUM_WORKERS": "0",
        **(extra or {}),
    }
    merge_config_opts(cfg, [str(x) for kv in opts.items() for x in kv])
    return cfg


def test_quick_config_trains_checkpoints_and_resumes_exactly(synthetic_root, tmp_path):
    """The real model: 3 iterations with a checkpoint after the 2nd; a fresh trainer resumes
    there with the saved weights, and its last iteration ends where the uninterrupted run did.

    Both see the same batch every iteration: Detectron2 does not checkpoint the loader's
    position (a resumed run draws a new shuffle), so only then are the runs comparable.
    """
    batch = []

    class FixedBatchTrainer(VPoseTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            if not batch:
                batch.append(next(iter(super().build_train_loader(cfg))))
            return itertools.repeat(batch[0])

    extra = {"SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 2, "DATASETS.TEST": "()"}
    cfg = quick_cfg(synthetic_root, tmp_path, extra)
    full = FixedBatchTrainer(cfg)
    full.resume_or_load(resume=False)
    before = flat_weights(full.model)
    full.train()
    after = flat_weights(full.model)
    assert not torch.equal(before, after) and torch.isfinite(after).all()
    metrics = json.loads((tmp_path / "metrics.json").read_text().splitlines()[-1])
    assert metrics["iteration"] == 2 and math.isfinite(metrics["total_loss"])
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)

    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    resumed = FixedBatchTrainer(cfg.clone())
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name
    assert len(resumed.optimizer.state) == len(full.optimizer.state) > 0
    resumed.train()
    assert torch.equal(flat_weights(resumed.model), after)


def _two_process_main(synthetic_root: str, output_dir: str) -> None:
    cfg = quick_cfg(synthetic_root, output_dir, {"SOLVER.MAX_ITER": 2, "DATASETS.TEST": "()"})
    trainer = VPoseTrainer(cfg)
    trainer.resume_or_load(resume=False)
    init = flat_weights(trainer.model)
    trainer.train()
    final = flat_weights(trainer.model)
    gathered = comm.all_gather((comm.get_world_size(), final.sum().item(), final.tolist()))
    if comm.is_main_process():
        result = {
            "world_sizes": [g[0] for g in gathered],
            "checksums": [g[1] for g in gathered],
            "equal": all(g[2] == gathered[0][2] for g in gathered),
            "moved": not torch.equal(init, final),
            "ddp": type(trainer.model).__name__,
        }
        Path(output_dir, "result.json").write_text(json.dumps(result))


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) launch path")
def test_two_process_cpu_launch_keeps_ranks_identical(synthetic_root, tmp_path):
    """Each rank draws other clips; DDP's all-reduced gradients keep the weights equal."""
    if not QUICK_CONFIG.is_file():
        pytest.skip(f"{QUICK_CONFIG} is missing")
    launch(_two_process_main, 2, dist_url="auto", args=(str(synthetic_root), str(tmp_path)))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_sizes"] == [2, 2]
    assert result["ddp"] == "DistributedDataParallel"
    assert result["moved"]
    assert result["equal"], result["checksums"]


def test_train_net_eval_only_prints_posetrack_results(synthetic_root, tmp_path):
    """tools/train_net.py's main (untrained weights): loader, evaluator, results table."""
    if not QUICK_CONFIG.is_file():
        pytest.skip(f"{QUICK_CONFIG} is missing")
    from detectron2.engine import default_argument_parser

    train_net = load_script("tools/train_net.py")
    opts = [
        "DATASETS.SYNTHETIC_ROOT", str(synthetic_root), "OUTPUT_DIR", str(tmp_path),
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    ]  # fmt: skip
    parser = default_argument_parser()
    args = parser.parse_args(["--eval-only", "--config-file", str(QUICK_CONFIG)] + opts)
    results = train_net.main(args)
    assert 0.0 <= results["posetrack"]["mAP"] <= 100.0
    assert any((tmp_path / "inference").rglob("*.json")), "no prediction files written"
    log = (tmp_path / "log.txt").read_text()
    assert "copypaste: mAP,Head,Shoulder,Elbow,Wrist,Hip,Knee,Ankle,Total" in log

    args = parser.parse_args(["--config-file", str(QUICK_CONFIG), "SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ConfigKeyError, match=r"SOLVER.BASE_LRR \(given on the command line"):
        train_net.main(args)
