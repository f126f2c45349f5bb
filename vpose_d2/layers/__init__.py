"""Layers: the multi-scale deformable attention op and module, position encodings, MLP."""

from .mlp import MLP
from .ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference
from .position_encoding import *  # noqa: F401,F403

__all__ = [k for k in globals().keys() if not k.startswith("_")]
