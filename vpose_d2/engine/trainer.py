"""``VPoseTrainer``: Detectron2's DefaultTrainer with what the pose transformers need.

What differs from ``DefaultTrainer`` (Detectron2 0.6):

- clip loaders (``vpose_d2.data.build``) and the PoseTrack evaluator (with COCO OKS AP);
- AdamW with lr multipliers and full-model gradient clipping (:mod:`vpose_d2.engine.optim`);
- AMP in "bf16" (autocast, no scaler; also on CPU) or "fp16" (autocast + GradScaler), where
  Detectron2's AMPTrainer is fp16 + CUDA only;
- the optimizer (and grad scaler) state is checkpointed, so ``--resume`` continues exactly
  (0.6 saves only the iteration and the scheduler);
- checkpoints are written atomically and record the clip layout the weights assume;
  ``--resume`` takes the newest checkpoint that loads (:mod:`vpose_d2.engine.checkpoint`);
- DDP works on CPU processes (gloo, see :mod:`vpose_d2.engine.launch`);
- ``MODEL.WEIGHTS`` whose shapes do not fit the model raise (``MODEL.WEIGHTS_STRICT_SHAPES``);
- a dataset name that is not registered is named, with the registered ones.

``setup(args)`` and the config-merging helpers live in :mod:`vpose_d2.engine.defaults`.
"""

import logging
import os
import time
import weakref
from typing import Any, Dict, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.build import build_clip_test_loader, build_clip_train_loader, check_registered
from ..evaluation import COCOKeypointEvaluator, PoseTrackEvaluator
from ..tracking import build_tracker
from .checkpoint import MetricsJSONWriter, StrictShapeCheckpointer
from .optim import build_vpose_optimizer

__all__ = [
    "VPoseTrainer",
    "MixedPrecisionTrainer",
    "StrictShapeCheckpointer",
]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecisionTrainer(SimpleTrainer):
    """SimpleTrainer under ``torch.autocast``: bf16 without loss scaling, fp16 with a scaler.

    bf16 has fp32's exponent range, so gradients do not underflow and need no GradScaler.
    The autocast device follows the model's parameters (CPU autocast supports bf16).
    """

    def __init__(self, model: nn.Module, data_loader, optimizer, *, precision: str = "bf16"):
        if precision not in _AMP_DTYPES:
            raise ValueError(f"SOLVER.AMP.PRECISION={precision!r} is not one of 'bf16', 'fp16'.")
        super().__init__(model, data_loader, optimizer)
        self.dtype = _AMP_DTYPES[precision]
        self.device_type = next(model.parameters()).device.type
        self.grad_scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None

    def run_step(self) -> None:
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        # Sum in fp32: low-precision partial sums of many loss terms lose digits.
        losses = sum(v.float() for v in loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is None:
            losses.backward()
        else:
            self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Detectron2's create_ddp_model, minus ``device_ids`` for CPU models (DDP rejects it)."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)


class VPoseTrainer(DefaultTrainer):
    """DefaultTrainer for clip-based pose transformers (see the module docstring)."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ hard-codes its step trainer, create_ddp_model and checkpointer;
        # this is the same sequence with ours.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _create_ddp_model(
            model,
            broadcast_buffers=False,
            find_unused_parameters=cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS,
        )
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer = MixedPrecisionTrainer(
                model, data_loader, optimizer, precision=cfg.SOLVER.AMP.PRECISION
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = StrictShapeCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            strict_shapes=cfg.MODEL.WEIGHTS_STRICT_SHAPES,
            check_layout=cfg.MODEL.WEIGHTS_CHECK_LAYOUT,
            cfg=cfg,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """As DefaultTrainer's, with :class:`StrictShapeCheckpointer`'s resume: the newest
        checkpoint of OUTPUT_DIR that loads, broken ones skipped and named; training continues
        after the iteration it holds, or starts at 0 when there was none."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.resumed_from is not None:
            # The checkpoint holds the iteration that had just finished.
            self.start_iter = self.iter + 1

    def build_writers(self):
        """Detectron2's default writers, with ``metrics.json`` by :class:`MetricsJSONWriter`
        (created with its first record; a torn last line is cut before appending)."""
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            MetricsJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("Checkpoint has no optimizer state: the optimizer starts afresh.")

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_vpose_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_clip_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_clip_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        check_registered([dataset_name], "DATASETS.TEST")
        output_folder = output_folder or f"{cfg.OUTPUT_DIR}/inference/{dataset_name}"
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "posetrack":
            return PoseTrackEvaluator(
                dataset_name,
                output_folder,
                track=cfg.TEST.POSETRACK_TRACKING,
                coco_oks_ap=cfg.TEST.COCO_OKS_AP,
                tracker=build_tracker(cfg) if cfg.TEST.POSETRACK_TRACKING else None,
            )
        if evaluator_type == "coco_keypoints":
            return COCOKeypointEvaluator(dataset_name)
        raise NotImplementedError(
            f"No evaluator for dataset '{dataset_name}' (metadata evaluator_type="
            f"{evaluator_type!r}; expected 'posetrack' or 'coco_keypoints')."
        )
