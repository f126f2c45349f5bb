"""vpose_d2.compat: Detectron2 without its compiled ops, and Pillow >= 10.

The import-time cases run in a fresh interpreter (compat acts once per process); the rest in
this one.
"""

import inspect
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import vpose_d2  # noqa: F401  isort: skip  (compat shims before Detectron2's structures)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import nms_rotated
from detectron2.structures import Boxes, BoxMode, Instances, RotatedBoxes, pairwise_iou_rotated


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


# The tests below run in this process: conftest imported vpose_d2, so compat has acted.
requires_placeholder = pytest.mark.skipif(
    vpose_d2.compat.detectron2_has_compiled_ops(),
    reason="Detectron2 has its compiled ops (a source build): no placeholder to test",
)


def _assert_names_op(err: BaseException, op: str) -> None:
    assert op in str(err) and "from source" in str(err), str(err)


@requires_placeholder
def test_torch_ops_answer_with_the_placeholder_error():
    """detectron2.layers.nms_rotated calls torch.ops.detectron2.nms_rotated, which a source
    build registers: without one it raises the same clear ImportError, eager and scripted."""
    boxes = torch.tensor([[10.0, 10, 4, 4, 0], [11, 10, 4, 4, 30]])
    scores = torch.tensor([0.9, 0.8])
    calls = {
        "nms_rotated": lambda: nms_rotated(boxes, scores, 0.5),
        "box_iou_rotated": lambda: pairwise_iou_rotated(RotatedBoxes(boxes), RotatedBoxes(boxes)),
        "roi_align_rotated_forward": lambda: torch.ops.detectron2.roi_align_rotated_forward(
            torch.rand(1, 2, 8, 8), torch.rand(1, 6), 1.0, 2, 2, 0
        ),
    }
    for op, call in calls.items():
        with pytest.raises(ImportError) as err:
            call()
        _assert_names_op(err.value, op)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(_scripted_nms_rotated)
    # TorchScript re-raises every error of an op as a RuntimeError; the message is kept.
    with pytest.raises(RuntimeError, match="ImportError") as err:
        scripted(boxes, scores)
    _assert_names_op(err.value, "nms_rotated")


def _scripted_nms_rotated(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return torch.ops.detectron2.nms_rotated(boxes, scores, 0.5)


@pytest.fixture(scope="module")
def tiny_coco() -> str:
    """A one-image COCO-style dataset with two boxes."""
    name = "vpose_test_compat_tiny_coco"

    def dataset():
        boxes = ([10, 10, 20, 20], [50, 50, 30, 40])
        anns = [
            {"bbox": list(b), "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
            for b in boxes
        ]
        return [{"file_name": "a.jpg", "image_id": 1, "height": 100, "width": 100,
                 "annotations": anns}]  # fmt: skip

    DatasetCatalog.register(name, dataset)
    MetadataCatalog.get(name).thing_classes = ["thing"]
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _evaluate(dataset: str, tmp_path, **kwargs) -> dict:
    pred = Instances((100, 100))
    pred.pred_boxes = Boxes(torch.tensor([[10.0, 10, 30, 30], [0, 0, 5, 5]]))
    pred.scores = torch.tensor([0.9, 0.8])
    pred.pred_classes = torch.tensor([0, 0])
    evaluator = COCOEvaluator(dataset, output_dir=str(tmp_path), **kwargs)
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": pred}])
    return evaluator.evaluate()


@requires_placeholder
def test_coco_evaluator_defaults_to_the_official_api(tiny_coco, tmp_path):
    """COCOeval_opt is compiled: where it is missing, COCOEvaluator's default is pycocotools.
    One of the two boxes is found exactly, by the top-scoring prediction: precision 1 up to
    recall 0.5, i.e. on 51 of COCO's 101 recall points."""
    assert inspect.signature(COCOEvaluator).parameters["use_fast_impl"].default is False
    assert _evaluate(tiny_coco, tmp_path)["bbox"]["AP50"] == pytest.approx(100 * 51 / 101)


@requires_placeholder
def test_fast_coco_evaluator_names_what_is_missing(tiny_coco, tmp_path):
    with pytest.raises(ImportError) as err:
        _evaluate(tiny_coco, tmp_path, use_fast_impl=True)
    _assert_names_op(err.value, "COCOeval_opt")
