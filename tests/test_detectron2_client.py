"""An existing Detectron2 project beside vpose_d2: the model zoo, FLOP counting, and a
model-zoo Keypoint R-CNN trained and served with Detectron2's own engine."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import vpose_d2  # noqa: F401  isort: skip  (a client imports vpose_d2 first, then Detectron2)
from detectron2 import model_zoo
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
)
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from vpose_d2.config import get_vpose_cfg
from vpose_d2.engine import merge_config_file

KEYPOINT_RCNN = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml"
REPO = Path(__file__).resolve().parents[1]


def test_model_zoo_has_every_config_it_names():
    """Every config in Detectron2's model-zoo table resolves to an installed file, and both
    config systems (yacs .yaml, LazyConfig .py) load a keypoint model from it."""
    table = model_zoo.model_zoo._ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX  # names without suffix
    root = Path(model_zoo.get_config_file(KEYPOINT_RCNN)).parents[1]
    missing = [c for c in table if not any((root / (c + s)).is_file() for s in (".yaml", ".py"))]
    assert not missing, f"model-zoo configs not installed under {root}: {missing}"
    cfg = model_zoo.get_config(KEYPOINT_RCNN)
    assert cfg.MODEL.KEYPOINT_ON and cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == 17
    lazy = LazyConfig.load(model_zoo.get_config_file(KEYPOINT_RCNN.replace(".yaml", ".py")))
    assert lazy.model.roi_heads.num_classes == 1


def test_flop_count_of_a_vpose_model():
    """detectron2.utils.analysis imports (no caffe2) and counts a vpose_d2 model's FLOPs; the
    stem's count is checked against the convolution's arithmetic."""
    try:
        from detectron2.utils.analysis import FlopCountAnalysis
    except ImportError as e:
        if vpose_d2.compat.detectron2_has_compiled_ops():
            pytest.skip(f"a source build of Detectron2 that needs caffe2 for analysis: {e}")
        raise
    cfg = get_vpose_cfg()
    merge_config_file(cfg, str(REPO / "configs/quick/petr_synthetic.yaml"))
    v = cfg.MODEL.VPOSE
    v.HIDDEN_DIM, v.DIM_FEEDFORWARD, v.REFINE_HIDDEN_DIM = 32, 64, 32
    v.ENC_LAYERS = v.DEC_LAYERS = v.JOINT_DEC_LAYERS = 1
    v.NUM_QUERIES, v.NUM_JOINT_PERSONS_TEST, cfg.TEST.DETECTIONS_PER_IMAGE = 6, 3, 3
    v.NECK_NUM_GROUPS = 8
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    h, w = 64, 128  # no padding (multiples of the size divisibility): the stem sees h x w
    assert h % model.backbone.size_divisibility == 0 == w % model.backbone.size_divisibility
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    flops = FlopCountAnalysis(model, [{"image": image}])
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = flops.by_module()  # names under "model.": the analysis wraps the model
    stem = "model.backbone.bottom_up.stem.conv1"
    conv = model.backbone.bottom_up.stem.conv1
    # A 7 x 7 stride-2 convolution; fvcore counts one FLOP per multiply-add.
    expected = (h // 2) * (w // 2) * conv.out_channels * conv.in_channels * 7 * 7
    assert by_module[stem] - by_module[stem + ".norm"] == expected
    assert flops.total() > by_module["model.backbone"] > by_module[stem]
    # The transformer parts run after the backbone: the trace reached them.
    assert all(by_module[f"model.{m}"] > 0 for m in ("encoder", "pose_decoder", "joint_decoder"))


@pytest.fixture(scope="module")
def person_keypoints(tmp_path_factory) -> str:
    """Two 64 x 80 images with one annotated person each, registered like a COCO dataset."""
    import cv2

    root = tmp_path_factory.mktemp("person_keypoints")
    rng = np.random.default_rng(0)
    records = []
    for i in range(2):
        path = root / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
        xy = rng.uniform([20, 12], [60, 52], (17, 2))
        kpts = np.concatenate([xy, np.full((17, 1), 2.0)], 1)
        x0, y0 = xy.min(0)
        x1, y1 = xy.max(0)
        ann = {
            "bbox": [x0, y0, x1, y1],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": 0,
            "iscrowd": 0,
            "keypoints": kpts.reshape(-1).tolist(),
        }
        records.append(
            {"file_name": str(path), "image_id": i, "height": 64, "width": 80, "annotations": [ann]}
        )
    name = "vpose_test_client_person_keypoints"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        thing_classes=["person"],
        keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
        keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP,
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_keypoint_rcnn_from_the_model_zoo_trains_and_predicts(person_keypoints, tmp_path):
    """The first lines of most Detectron2 projects, with vpose_d2 imported: a model-zoo
    Keypoint R-CNN (R50-FPN, random weights, CPU, tiny images) trains one step with
    DefaultTrainer, is checkpointed, and DefaultPredictor serves that checkpoint."""
    cfg = model_zoo.get_config(KEYPOINT_RCNN)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    # Random weights: FrozenBN would be the identity and the activations of 50 layers explode
    # (every score underflows to 0), so GroupNorm, as in the model zoo's from-scratch configs.
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    cfg.DATASETS.TRAIN = (person_keypoints,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.MAX_ITER = 1
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.STEPS = ()
    cfg.OUTPUT_DIR = str(tmp_path)
    torch.manual_seed(0)

    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    losses = trainer.storage.latest()
    assert np.isfinite(losses["loss_keypoint"][0]) and losses["loss_keypoint"][0] > 0
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("roi_heads.keypoint_head") for k in changed), "no keypoint update"

    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert PathManager.isfile(cfg.MODEL.WEIGHTS)
    predictor = DefaultPredictor(cfg)
    import cv2

    image = cv2.imread(DatasetCatalog.get(person_keypoints)[0]["file_name"])
    out = predictor(image)["instances"]
    assert out.image_size == (64, 80)
    assert out.pred_keypoints.shape == (len(out), 17, 3) and len(out) > 0
    # The predictor serves the trained weights: the trainer's model gives the same output.
    trainer.model.eval()
    with torch.no_grad():
        resized = predictor.aug.get_transform(image).apply_image(image)
        inputs = {"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))}
        inputs.update(height=64, width=80)
        ref = trainer.model([inputs])[0]["instances"]
    torch.testing.assert_close(out.pred_keypoints, ref.pred_keypoints)
    torch.testing.assert_close(out.scores, ref.scores)
