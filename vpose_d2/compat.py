"""Lets vpose_d2 run on a Detectron2 without its compiled ops, and on Pillow >= 10.

Imported first by ``vpose_d2/__init__.py``. It patches exactly two things and nothing else:

1. ``detectron2._C``: the PyPI sdist of Detectron2 v0.6 (``pb1-detectron2``) ships no C++
   sources, so the extension is missing and ``detectron2.layers`` (hence
   ``detectron2.modeling``) fails at import. Where it is missing we register a placeholder
   module: importing it works, and every op on it raises an ImportError that names the op and
   says how to get it. vpose_d2 itself calls none of these ops. A real ``detectron2._C``
   (Detectron2 built from source) is never touched.
2. ``PIL.Image.LINEAR``: removed in Pillow 10; Detectron2 v0.6 uses it as a default argument
   at import time. It is the same filter as ``Image.BILINEAR``.
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
        raise ImportError(f"detectron2._C.{name} is not available: {_HOW_TO}")


def detectron2_has_compiled_ops() -> bool:
    """True when the installed Detectron2 has a real compiled ``detectron2._C``."""
    mod = sys.modules.get("detectron2._C")
    if mod is not None:
        return not getattr(mod, "is_vpose_placeholder", False)
    return importlib.util.find_spec("detectron2._C") is not None


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
    logger.debug("detectron2._C is missing: registered vpose_d2's placeholder")


def _patch_pillow() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def install() -> None:
    """Apply both accommodations (idempotent)."""
    # Pillow first: importing detectron2 must not reach Image.LINEAR before it exists.
    _patch_pillow()
    _patch_detectron2_ops()


install()
