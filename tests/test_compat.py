"""vpose_d2.compat: Detectron2 without its compiled ops, and Pillow >= 10.

Each case runs in a fresh interpreter: compat acts at import time, once per process.
"""

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_missing_ops_get_a_placeholder_that_explains():
    out = _run("""
        import importlib.util, sys
        real = importlib.util.find_spec("detectron2._C") is not None
        import vpose_d2
        from detectron2 import _C
        import detectron2.modeling, detectron2.layers  # would fail without the placeholder
        if real:
            assert not getattr(_C, "is_vpose_placeholder", False)
            print("REAL")
        else:
            assert _C.is_vpose_placeholder
            try:
                _C.deform_conv_forward
            except ImportError as e:
                msg = str(e)
                assert "deform_conv_forward" in msg and "from source" in msg, msg
                print("PLACEHOLDER")
            else:
                raise AssertionError("a missing op did not raise")
        """)
    assert out.strip() in {"REAL", "PLACEHOLDER"}


def test_real_compiled_ops_are_left_untouched():
    out = _run("""
        import sys, types
        import detectron2
        real = types.ModuleType("detectron2._C")
        real.deform_conv_forward = lambda *a: "real op"
        sys.modules["detectron2._C"] = real
        import vpose_d2
        from detectron2 import _C
        assert sys.modules["detectron2._C"] is real
        assert vpose_d2.compat.detectron2_has_compiled_ops()
        print(_C.deform_conv_forward())
        """)
    assert out.strip() == "real op"


def test_environment_report_prints_with_the_placeholder():
    out = _run("""
        import vpose_d2
        from detectron2.utils.collect_env import collect_env_info
        info = collect_env_info()
        assert "detectron2" in info
        print("OK")
        """)
    assert out.strip().endswith("OK")


@pytest.mark.parametrize("had_linear", [False, True])
def test_pillow_linear_alias(had_linear: bool):
    out = _run(f"""
        from PIL import Image
        sentinel = object()
        if {had_linear}:
            Image.LINEAR = sentinel          # an old Pillow: must be left as it is
        elif hasattr(Image, "LINEAR"):
            del Image.LINEAR                 # Pillow >= 10 removed it
        import vpose_d2
        from detectron2.data import transforms as T
        if {had_linear}:
            assert Image.LINEAR is sentinel
        else:
            assert Image.LINEAR == Image.BILINEAR
        print("OK")
        """)
    assert out.strip() == "OK"
