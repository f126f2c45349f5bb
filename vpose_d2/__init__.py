"""vpose_d2: end-to-end multi-person 2D pose estimation in video, as a Detectron2 plug-in.

``import vpose_d2`` registers everything with Detectron2's registries: the meta-architectures
and backbones (META_ARCH_REGISTRY, BACKBONE_REGISTRY), the PoseTrack / COCO / synthetic
datasets (DatasetCatalog, MetadataCatalog), the trackers (TRACKER_REGISTRY) and the compiled
deformable-attention op.
"""

# compat first: Detectron2 without its compiled ops must import before anything else does.
from . import compat  # noqa: F401  isort: skip
from . import data, engine, evaluation, layers, modeling, tracking  # noqa: F401
from .config import add_vpose_config, get_vpose_cfg

__version__ = "0.1.0"
__all__ = ["add_vpose_config", "get_vpose_cfg"]
