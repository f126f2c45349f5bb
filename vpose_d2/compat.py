"""Lets vpose_d2 (and Detectron2 projects) run on a Detectron2 without its compiled ops.

Imported first by ``vpose_d2/__init__.py``. Where ``detectron2._C`` is missing (the PyPI
sdist of Detectron2 v0.6, ``pb1-detectron2``, ships no C++ sources, so ``detectron2.layers``
and hence ``detectron2.modeling`` fail at import) it does three things; a real
``detectron2._C`` (Detectron2 built from source) disables all three:

1. ``detectron2._C``: a placeholder module. Importing it works, and every op on it raises an
   ImportError that names the op, the Detectron2 feature that needs it, and how to get it.
2. ``torch.ops.detectron2``: the four ops a source build registers there (``nms_rotated``,
   ``box_iou_rotated``, ``roi_align_rotated_forward/backward``) get their schemas and a kernel
   that raises the same ImportError, so eager calls fail clearly instead of with an
   AttributeError, and TorchScript code that calls them compiles (running it raises a
   RuntimeError carrying the same message).
3. ``COCOEvaluator(use_fast_impl=...)`` defaults to False: the fast evaluator
   (``COCOeval_opt``) is compiled code; the official pycocotools one computes the same metrics
   (it is what papers report). Passing ``use_fast_impl=True`` raises the clear ImportError.

vpose_d2 itself calls none of these ops. Independently of Detectron2's build, it also aliases
``PIL.Image.LINEAR`` (removed in Pillow 10; Detectron2 v0.6 uses it as a default argument at
import time) to ``Image.BILINEAR``, the same filter.
"""

import importlib.machinery
import importlib.util
import logging
import sys
import types

__all__ = ["MissingDetectron2Ops", "install", "detectron2_has_compiled_ops"]

logger = logging.getLogger(__name__)

_HOW_TO = (
    "this Detectron2 was installed without its compiled ops (e.g. the PyPI sdist "
    "pb1-detectron2 used by `make setup`). vpose_d2 does not need them; to use this op, "
    "build Detectron2 from source: `pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'` (see README, 'Using a full "
    "Detectron2 build')."
)

_FAST_COCO_EVAL = "COCOeval_opt, the fast COCO evaluator (COCOEvaluator(use_fast_impl=True))"
# Name prefix of each compiled op -> the Detectron2 feature that calls it.
_FEATURES = {
    "deform_conv": "deformable convolution, DeformConv",
    "modulated_deform_conv": "deformable convolution, ModulatedDeformConv",
    "box_iou_rotated": "rotated-box IoU, pairwise_iou_rotated / RotatedBoxes",
    "nms_rotated": "rotated-box NMS, nms_rotated / batched_nms_rotated",
    "roi_align_rotated": "ROIAlignRotated",
    "roi_align_": "the compiled ROIAlign (detectron2.layers.ROIAlign uses torchvision's)",
    "COCOeval": _FAST_COCO_EVAL,
    "InstanceAnnotation": _FAST_COCO_EVAL,
    "ImageEvaluation": _FAST_COCO_EVAL,
}

# The ops a source build registers with TORCH_LIBRARY(detectron2, ...) (v0.6's
# detectron2/layers/csrc/vision.cpp), with the schemas their C++ signatures give.
_TORCH_OPS = {
    "nms_rotated": "nms_rotated(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align_rotated_forward": (
        "roi_align_rotated_forward(Tensor input, Tensor rois, float spatial_scale, "
        "int pooled_height, int pooled_width, int sampling_ratio) -> Tensor"
    ),
    "roi_align_rotated_backward": (
        "roi_align_rotated_backward(Tensor grad, Tensor rois, float spatial_scale, "
        "int pooled_height, int pooled_width, int batch_size, int channels, int height, "
        "int width, int sampling_ratio) -> Tensor"
    ),
}

# The registrations live as long as this library object does.
_torch_ops_library = None


def _missing_op_error(qualname: str, name: str) -> ImportError:
    feature = next((f for prefix, f in _FEATURES.items() if name.startswith(prefix)), None)
    used_by = f" (used by {feature})" if feature else ""
    return ImportError(f"{qualname} is not available{used_by}: {_HOW_TO}")


class MissingDetectron2Ops(types.ModuleType):
    """Stands in for ``detectron2._C``: every op raises an ImportError that says what to do.

    ``detectron2.utils.collect_env`` (called by ``default_setup``) asks the module for the
    compilers it was built with; those three informational calls answer that nothing was
    built instead of failing, so the environment report still prints.
    """

    is_vpose_placeholder = True

    def __init__(self) -> None:
        super().__init__("detectron2._C", "placeholder for Detectron2's missing compiled ops")
        # A spec lets importlib.util.find_spec("detectron2._C") answer rather than crash.
        self.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", loader=None)

    @staticmethod
    def get_compiler_version() -> str:
        return "not built (vpose_d2 placeholder for detectron2._C)"

    @staticmethod
    def get_cuda_version() -> str:
        return "not built (vpose_d2 placeholder for detectron2._C)"

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            # importlib, pickle and inspect probe dunders; they must see a plain module.
            raise AttributeError(name)
        raise _missing_op_error(f"detectron2._C.{name}", name)


def detectron2_has_compiled_ops() -> bool:
    """True when the installed Detectron2 has a real compiled ``detectron2._C``."""
    mod = sys.modules.get("detectron2._C")
    if mod is not None:
        return not getattr(mod, "is_vpose_placeholder", False)
    return importlib.util.find_spec("detectron2._C") is not None


def _register_missing_torch_ops() -> None:
    """Gives ``torch.ops.detectron2.*`` the source build's schemas and a clear-error kernel."""
    global _torch_ops_library
    if _torch_ops_library is not None:
        return
    import torch

    # FRAGMENT, not DEF: another library may already own the namespace; its ops are kept.
    library = torch.library.Library("detectron2", "FRAGMENT")
    for name, schema in _TORCH_OPS.items():
        try:
            getattr(torch.ops.detectron2, name)
            continue
        except AttributeError:
            pass
        library.define(schema)

        def kernel(*args, _name=name, **kwargs):
            raise _missing_op_error(f"torch.ops.detectron2.{_name}", _name)

        # CompositeExplicitAutograd: one kernel for every device, also under autograd.
        library.impl(name, kernel, "CompositeExplicitAutograd")
    _torch_ops_library = library


def _default_to_official_coco_eval() -> None:
    """COCOEvaluator's ``use_fast_impl`` defaults to False (``COCOeval_opt`` is compiled)."""
    from detectron2.evaluation.coco_evaluation import COCOEvaluator

    # A keyword-only default: changing it leaves every explicit argument as the caller gave it.
    COCOEvaluator.__init__.__kwdefaults__["use_fast_impl"] = False


def _patch_detectron2_ops() -> None:
    if "detectron2._C" in sys.modules:
        return
    try:
        import detectron2
    except ImportError as e:  # pragma: no cover - the environment is broken
        raise ImportError(
            "vpose_d2 needs Detectron2: run `make setup` (installs it into .venv), or build "
            "it from source (README, 'Using a full Detectron2 build')."
        ) from e
    if importlib.util.find_spec("detectron2._C") is not None:
        return
    placeholder = MissingDetectron2Ops()
    sys.modules["detectron2._C"] = placeholder
    # `from detectron2 import _C` reads the attribute of the package, not sys.modules.
    detectron2._C = placeholder
    _register_missing_torch_ops()
    _default_to_official_coco_eval()
    logger.debug("detectron2._C is missing: registered vpose_d2's placeholder")


def _patch_pillow() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def install() -> None:
    """Apply the accommodations (idempotent)."""
    # Pillow first: importing detectron2 must not reach Image.LINEAR before it exists.
    _patch_pillow()
    _patch_detectron2_ops()


install()
