"""Training and inference: ``VPoseTrainer`` (optimizer, AMP, checkpoints), a CPU-capable
``launch``, config ``setup``, and the ``VideoPosePredictor``."""

from .checkpoint import CheckpointFileError, StrictShapeCheckpointer
from .defaults import ConfigKeyError, merge_config_file, merge_config_opts, setup
from .launch import launch
from .optim import build_vpose_optimizer, get_vpose_param_groups
from .predictor import PredictedFrame, VideoPosePredictor
from .trainer import MixedPrecisionTrainer, VPoseTrainer

__all__ = [
    "CheckpointFileError",
    "ConfigKeyError",
    "MixedPrecisionTrainer",
    "PredictedFrame",
    "StrictShapeCheckpointer",
    "VPoseTrainer",
    "VideoPosePredictor",
    "build_vpose_optimizer",
    "get_vpose_param_groups",
    "launch",
    "merge_config_file",
    "merge_config_opts",
    "setup",
]
