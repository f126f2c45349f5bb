"""A two-stage top-down video pose peer for the latency benchmark, from maintained parts.

What two-stage video systems (DCPose, the papers' "two-stage" rows) run for every output
frame, assembled from parts nobody wrote for this benchmark:

1. Person detection on the full key frame: Detectron2's Faster R-CNN R50-FPN
   (``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml``, one class), run by Detectron2's own
   ``DefaultPredictor`` at the same input size as the end-to-end models.
2. Per person, a 256x192 crop of each of the T frames of the window around the key frame
   (the key frame's box, enlarged by 1.25 to the 3:4 aspect ratio, as SimpleBaseline / HRNet
   / DCPose crop), cut for all P persons x T frames in one ``torchvision.ops.roi_align`` and
   run as ONE batch of P*T crops through a SimpleBaseline pose network (torchvision's
   ResNet-50 + three 4x4 stride-2 deconvolutions + a 1x1 head: heatmaps at 1/4 of the crop).
3. The T heatmaps of a person averaged (the simplest temporal fusion; DCPose's PTM/PRF/PAM
   modules cost more, so this peer is a lower bound on a two-stage video model's cost), decoded
   by argmax with SimpleBaseline's quarter-pixel shift, and an OKS-NMS over the frame's poses.

Weights are random (the benchmark times, it does not score). With ``person_boxes`` given, the
pose stage sees exactly those boxes (the synthetic scenes' persons) while the detector still
runs on every key frame; without, it takes the detector's boxes over the score threshold.

Batch norms are folded into the convolutions before them (``fold_bn=True``), the same
inference-time fold the end-to-end models get, so neither side is timed with a pass the
other skipped.

Example::

    peer = TwoStagePeer((480, 800), device="cpu")
    for index, instances in peer(frames, person_boxes):  # boxes: per frame (P, 4) XYXY
        print(index, instances.pred_keypoints.shape)
"""

import copy
import logging
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import roi_align

import vpose_d2  # noqa: F401  isort: skip  (compat before Detectron2)
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.structures import Boxes, Instances

from vpose_d2.data.keypoints import POSETRACK
from vpose_d2.engine.predictor import window_indices
from vpose_d2.modeling.backbone import fold_frozen_batchnorm

__all__ = [
    "SimpleBaselinePose",
    "TwoStagePeer",
    "crop_boxes",
    "cut_crops",
    "decode_heatmaps",
    "detector_config",
    "oks_nms",
]

logger = logging.getLogger("vpose_d2.two_stage_peer")

DETECTOR_ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
#: torchvision's ImageNet statistics (RGB, [0, 1]), what torchvision's ResNet expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------
# Stage 1: the person detector
# ------------------------------------------------------------------------------------------
def _zoo_config(cfg: CfgNode) -> bool:
    """Merge the model zoo's Faster R-CNN config into ``cfg``; False where model_zoo cannot
    load (e.g. a Python without ``pkg_resources``, or a Detectron2 without its configs)."""
    try:
        from detectron2 import model_zoo

        cfg.merge_from_file(model_zoo.get_config_file(DETECTOR_ZOO_CONFIG))
    except (ImportError, RuntimeError, FileNotFoundError) as e:
        logger.info("detectron2.model_zoo unavailable (%s); Faster R-CNN config built in code", e)
        return False
    return True


def _faster_rcnn_r50_fpn_keys(cfg: CfgNode) -> None:
    """The MODEL keys of the zoo's Base-RCNN-FPN.yaml + faster_rcnn_R_50_FPN_3x.yaml, on
    Detectron2's defaults (the rest of those files is the training schedule)."""
    m = cfg.MODEL
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.MASK_ON = False
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.RESNETS.DEPTH = 50
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.RPN.PRE_NMS_TOPK_TRAIN = 2000
    m.RPN.PRE_NMS_TOPK_TEST = 1000
    m.RPN.POST_NMS_TOPK_TRAIN = 1000
    m.RPN.POST_NMS_TOPK_TEST = 1000
    m.ROI_HEADS.NAME = "StandardROIHeads"
    m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    m.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    m.ROI_BOX_HEAD.NUM_FC = 2
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7


def detector_config(size: Tuple[int, int], device: str, depth: int = 50) -> CfgNode:
    """Faster R-CNN R-``depth``-FPN person detector (one class, random weights) at ``size``.

    Args:
        size: (H, W) of the frames; test-time resizing keeps them at that size.
        device: "cpu" or "cuda[:i]".
        depth: ResNet depth (50 is the zoo model; 18 for fast tests).
    """
    cfg = get_cfg()
    if not _zoo_config(cfg):
        _faster_rcnn_r50_fpn_keys(cfg)
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1  # persons only
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.INPUT.MIN_SIZE_TEST = min(size)
    cfg.INPUT.MAX_SIZE_TEST = max(size)
    cfg.freeze()
    return cfg


# ------------------------------------------------------------------------------------------
# Stage 2: the top-down pose network
# ------------------------------------------------------------------------------------------
class SimpleBaselinePose(nn.Module):
    """SimpleBaseline (Xiao et al. 2018): ResNet + 3 deconvolutions + 1x1 heatmap head.

    Args:
        num_keypoints: K heatmaps.
        depth: torchvision ResNet depth (18, 34, 50, 101, 152).
        deconv_channels: channels of the three deconvolution layers (256 in the paper).
    """

    def __init__(self, num_keypoints: int, depth: int = 50, deconv_channels: int = 256):
        super().__init__()
        resnets = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101",
                   152: "resnet152"}  # fmt: skip
        if depth not in resnets:
            raise ValueError(f"depth must be one of {sorted(resnets)}, got {depth}")
        resnet = getattr(torchvision.models, resnets[depth])(weights=None)
        in_channels = resnet.fc.in_features
        self.backbone = nn.Sequential(*list(resnet.children())[:-2])  # up to C5, stride 32
        layers: List[nn.Module] = []
        for _ in range(3):
            layers += [
                nn.ConvTranspose2d(in_channels, deconv_channels, 4, 2, 1, bias=False),
                nn.BatchNorm2d(deconv_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = deconv_channels
        self.deconv = nn.Sequential(*layers)
        self.head = nn.Conv2d(deconv_channels, num_keypoints, 1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """
        Args:
            crops: (N, 3, h, w) normalised RGB crops.

        Returns:
            (N, K, h / 4, w / 4) heatmaps.
        """
        return self.head(self.deconv(self.backbone(crops)))


def fold_pose_batchnorm(net: SimpleBaselinePose) -> SimpleBaselinePose:
    """An eval copy of ``net`` with every BatchNorm folded into its convolution: torch's fx
    ``fuse`` for the ResNet (conv + bn pairs), ``fuse_conv_bn_eval(transpose=True)`` for the
    deconvolutions, which fx's patterns do not cover."""
    from torch.fx.experimental.optimization import fuse

    net = copy.deepcopy(net).eval()
    net.backbone = fuse(net.backbone, inplace=True)
    layers = list(net.deconv)
    fused: List[nn.Module] = []
    i = 0
    while i < len(layers):
        if (
            i + 1 < len(layers)
            and isinstance(layers[i], nn.ConvTranspose2d)
            and isinstance(layers[i + 1], nn.BatchNorm2d)
        ):
            fused.append(fuse_conv_bn_eval(layers[i], layers[i + 1], transpose=True))
            i += 2
        else:
            fused.append(layers[i])
            i += 1
    net.deconv = nn.Sequential(*fused)
    return net


def crop_boxes(
    boxes: torch.Tensor, aspect: float = 192 / 256, padding: float = 1.25
) -> torch.Tensor:
    """Person boxes as the top-down crop windows: same centre, widened or heightened to
    ``aspect`` (w / h), then scaled by ``padding``.

    Args:
        boxes: (P, 4) XYXY.

    Returns:
        (P, 4) XYXY crop windows (they may reach outside the image; roi_align pads with 0).
    """
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    w, h = torch.maximum(w, h * aspect), torch.maximum(h, w / aspect)
    w, h = w * padding, h * padding
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def cut_crops(
    frames: torch.Tensor, windows: torch.Tensor, crop_size: Tuple[int, int]
) -> torch.Tensor:
    """Every person's window cut from every frame, as one batch.

    Args:
        frames: (T, 3, H, W) normalised frames.
        windows: (P, 4) XYXY crop windows.
        crop_size: (h, w) of the crops.

    Returns:
        (P*T, 3, h, w): person p's crop of frame t at index ``p * T + t``.
    """
    t = frames.shape[0]
    num = windows.shape[0]
    frame_ids = torch.arange(t, device=windows.device, dtype=windows.dtype).repeat(num)
    rois = torch.cat([frame_ids[:, None], windows.repeat_interleave(t, 0)], 1)
    return roi_align(frames, rois, crop_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def decode_heatmaps(heatmaps: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Argmax decoding with SimpleBaseline's shift of a quarter cell towards the higher
    neighbour, mapped back through each person's crop window.

    Args:
        heatmaps: (P, K, h, w).
        windows: (P, 4) XYXY crop windows the heatmaps cover.

    Returns:
        (P, K, 3): x, y in image pixels and the heatmap maximum as the joint's score.
    """
    p, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(p, k, h * w)
    score, index = flat.max(-1)
    y = torch.div(index, w, rounding_mode="floor")
    x = index - y * w

    def at(dy: int, dx: int) -> torch.Tensor:
        # Clamped at the border, where the shift below is masked off anyway.
        yy = (y + dy).clamp(0, h - 1)
        xx = (x + dx).clamp(0, w - 1)
        return flat.gather(-1, (yy * w + xx).unsqueeze(-1))[..., 0]

    # No shift for a maximum on the border (one neighbour is missing), as SimpleBaseline.
    inner_x = ((x > 0) & (x < w - 1)).to(heatmaps.dtype)
    inner_y = ((y > 0) & (y < h - 1)).to(heatmaps.dtype)
    fx = x.to(heatmaps.dtype) + 0.25 * torch.sign(at(0, 1) - at(0, -1)) * inner_x
    fy = y.to(heatmaps.dtype) + 0.25 * torch.sign(at(1, 0) - at(-1, 0)) * inner_y
    x0, y0 = windows[:, 0:1], windows[:, 1:2]
    bw = (windows[:, 2:3] - x0) / w
    bh = (windows[:, 3:4] - y0) / h
    # Heatmap cell (i + 0.5) covers window pixels as roi_align(aligned=True) sampled them.
    return torch.stack([x0 + (fx + 0.5) * bw, y0 + (fy + 0.5) * bh, score], -1)


def oks_nms(
    keypoints: torch.Tensor,
    scores: torch.Tensor,
    areas: torch.Tensor,
    sigmas: Sequence[float],
    threshold: float = 0.9,
) -> torch.Tensor:
    """Greedy non-maximum suppression of poses by object keypoint similarity.

    Args:
        keypoints: (P, K, 3) x, y, score.
        scores: (P,) pose scores.
        areas: (P,) box areas (the OKS scale s^2).
        sigmas: K per-joint OKS sigmas.
        threshold: a pose overlapping a higher-scored kept pose by OKS > this is dropped
            (0.9 in SimpleBaseline / HRNet's test config).

    Returns:
        Indices of the kept poses, highest score first.
    """
    if keypoints.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=keypoints.device)
    var = (2 * torch.as_tensor(sigmas, dtype=keypoints.dtype, device=keypoints.device)) ** 2
    xy = keypoints[..., :2]
    d2 = ((xy[:, None] - xy[None]) ** 2).sum(-1)  # (P, P, K)
    scale = areas[None, :, None].clamp(min=1.0) * var + 1e-9
    oks = torch.exp(-d2 / (2 * scale)).mean(-1)  # (P, P): against the other pose's area
    order = scores.argsort(descending=True)
    oks = oks[order][:, order].cpu()
    keep: List[int] = []
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= oks[i] > threshold
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


# ------------------------------------------------------------------------------------------
# The video pipeline
# ------------------------------------------------------------------------------------------
class TwoStagePeer:
    """Detector + top-down pose network over a sliding window of T frames.

    Attributes:
        offsets (list[int]): window offsets around the key frame (0 included).
        detector (DefaultPredictor): the person detector.
        pose_net (SimpleBaselinePose): the pose network (BatchNorm folded with ``fold_bn``).
        last_num_crops (int): crops the pose network ran on for the last key frame (P*T).
    """

    def __init__(
        self,
        size: Tuple[int, int],
        *,
        device: str = "cpu",
        offsets: Sequence[int] = (-1, 1),
        depth: int = 50,
        crop_size: Tuple[int, int] = (256, 192),
        num_keypoints: int = POSETRACK.num_keypoints,
        oks_sigmas: Optional[Sequence[float]] = None,
        score_threshold: float = 0.5,
        oks_threshold: float = 0.9,
        max_persons: Optional[int] = None,
        fold_bn: bool = True,
    ):
        """
        Args:
            size: (H, W) of the frames (the detector runs at this size).
            device: where both networks run.
            offsets: the window's neighbours of the key frame (PAVE-Net's INPUT.CLIP.OFFSETS).
            depth: ResNet depth of the detector's and the pose network's backbones.
            crop_size: (h, w) of the pose network's input crops.
            num_keypoints: K joints (PoseTrack's 15 by default).
            oks_sigmas: K sigmas for OKS-NMS (PoseTrack's by default; K must match).
            score_threshold: detector score for a detected person (without ``person_boxes``).
            oks_threshold: OKS-NMS threshold.
            max_persons: without ``person_boxes``, at most this many detections (the highest
                scored) go to the pose stage; None: all over ``score_threshold``.
            fold_bn: fold the networks' batch norms into their convolutions.
        """
        if len(crop_size) != 2 or min(crop_size) < 32 or any(c % 32 for c in crop_size):
            raise ValueError(f"crop_size must be (h, w), multiples of 32, got {crop_size}")
        sigmas = oks_sigmas if oks_sigmas is not None else POSETRACK.oks_sigmas
        if len(sigmas) != num_keypoints:
            raise ValueError(f"{len(sigmas)} oks_sigmas for num_keypoints={num_keypoints}")
        self.offsets = sorted(set(int(o) for o in offsets) | {0})
        self.key_index = self.offsets.index(0)
        self.device = torch.device(device)
        self.size = tuple(size)
        self.crop_size = tuple(crop_size)
        self.sigmas = list(sigmas)
        self.score_threshold = score_threshold
        self.oks_threshold = oks_threshold
        self.max_persons = max_persons
        self.detector = DefaultPredictor(detector_config(size, device, depth))
        pose_net = SimpleBaselinePose(num_keypoints, depth).to(self.device).eval()
        if fold_bn:
            fold_frozen_batchnorm(self.detector.model)
            pose_net = fold_pose_batchnorm(pose_net)
        self.pose_net = pose_net
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1) * 255
        self.last_num_crops = 0

    @property
    def window_size(self) -> int:
        return len(self.offsets)

    def _to_tensor(self, frame: np.ndarray, index: int) -> torch.Tensor:
        """(H, W, 3) uint8 BGR -> (3, H, W) normalised RGB on the device."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", type(frame).__name__)
            raise ValueError(f"Frame {index}: expected an HxWx3 BGR numpy array, got {shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"Frame {index}: expected dtype uint8, got {frame.dtype}")
        image = torch.as_tensor(np.ascontiguousarray(frame[:, :, ::-1].transpose(2, 0, 1)))
        return (image.to(self.device).float() - self.mean) / self.std

    @torch.no_grad()
    def _predict_key(
        self, key_frame: np.ndarray, window: List[torch.Tensor], boxes: Optional[np.ndarray]
    ) -> Instances:
        height, width = key_frame.shape[:2]
        detections = self.detector(key_frame)["instances"]
        if boxes is None:
            # Detectron2 returns detections sorted by score: the first ones are the best.
            keep = (detections.scores > self.score_threshold).nonzero()[:, 0]
            keep = keep[: self.max_persons]
            person_boxes = detections.pred_boxes.tensor[keep]
            box_scores = detections.scores[keep]
        else:
            person_boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
            box_scores = torch.ones(len(person_boxes), device=self.device)
        result = Instances((height, width))
        num = len(person_boxes)
        t = len(window)
        self.last_num_crops = num * t
        if num == 0:
            result.pred_boxes = Boxes(torch.zeros(0, 4))
            result.scores = torch.zeros(0)
            result.pred_keypoints = torch.zeros(0, len(self.sigmas), 3)
            return result
        windows = crop_boxes(person_boxes, self.crop_size[1] / self.crop_size[0])
        heatmaps = self.pose_net(cut_crops(torch.stack(window), windows, self.crop_size))
        # Temporal fusion: the mean of each person's T heatmaps.
        heatmaps = heatmaps.view(num, t, *heatmaps.shape[1:]).mean(1)
        keypoints = decode_heatmaps(heatmaps, windows)
        scores = keypoints[..., 2].mean(-1) * box_scores
        areas = (person_boxes[:, 2] - person_boxes[:, 0]) * (
            person_boxes[:, 3] - person_boxes[:, 1]
        )
        kept = oks_nms(keypoints, scores, areas, self.sigmas, self.oks_threshold)
        result.pred_boxes = Boxes(person_boxes[kept])
        result.scores = scores[kept]
        result.pred_keypoints = keypoints[kept]
        return result.to("cpu")

    def __call__(
        self,
        frames: Iterable[np.ndarray],
        person_boxes: Optional[Sequence[np.ndarray]] = None,
    ) -> Iterator[Tuple[int, Instances]]:
        """Predict every frame of a video, streaming (each frame converted once).

        Args:
            frames: (H, W, 3) uint8 BGR frames of one video.
            person_boxes: optional, per frame a (P, 4) XYXY array: the persons the pose stage
                sees for that key frame (the detector still runs); None: the detector's.

        Yields:
            ``(frame_index, Instances)`` per frame, in order: ``pred_keypoints (N, K, 3)``,
            ``scores (N,)``, ``pred_boxes``, on the CPU.
        """
        future = self.offsets[-1]
        past = -self.offsets[0]
        cache: Dict[int, Tuple[np.ndarray, torch.Tensor]] = {}
        next_key = 0
        num_read = 0

        def run(key: int, bound: int) -> Instances:
            if person_boxes is not None and key >= len(person_boxes):
                raise ValueError(f"person_boxes has {len(person_boxes)} frames, no frame {key}")
            indices = window_indices(key, self.offsets, bound)
            boxes = None if person_boxes is None else np.asarray(person_boxes[key])
            if boxes is not None and (boxes.ndim != 2 or boxes.shape[1] != 4):
                raise ValueError(f"person_boxes[{key}]: expected (P, 4) XYXY, got {boxes.shape}")
            return self._predict_key(cache[key][0], [cache[i][1] for i in indices], boxes)

        def evict(next_key: int) -> None:
            for index in [i for i in cache if i < next_key - past]:
                del cache[index]

        for index, frame in enumerate(frames):
            cache[index] = (frame, self._to_tensor(frame, index))
            num_read = index + 1
            while next_key + future <= index:
                yield next_key, run(next_key, next_key + future + 1)
                next_key += 1
                evict(next_key)
        while next_key < num_read:
            yield next_key, run(next_key, num_read)
            next_key += 1
            evict(next_key)
