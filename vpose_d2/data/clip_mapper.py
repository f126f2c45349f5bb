"""The clip mapper: a key frame and its neighbours, one augmentation draw for the whole clip."""

from __future__ import annotations

import io
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from fvcore.transforms.transform import HFlipTransform, Transform
from PIL import Image

from .clip import clip_offsets, window_indices
from .keypoints import flip_indices

__all__ = [
    "ClipDatasetMapper",
    "ClipPhotometric",
    "CV2ResizeTransform",
    "FastResizeShortestEdge",
    "PhotometricTransform",
    "build_clip_augmentation",
    "build_test_resize",
]

logger = logging.getLogger(__name__)

# JPEG start-of-image and end-of-image markers.
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


class PhotometricTransform(Transform):
    """Brightness ``b``, contrast ``c`` and saturation ``s``, fused into one saturating pass.

    The three linear steps of Detectron2's RandomBrightness/Contrast/Saturation (in that
    order) reduce to ``out = s*c*b * img + (1-s)*c*b * gray(img) + (1-c)*b * mean(img)``,
    evaluated per image: Detectron2's own RandomSaturation would blend every frame with the
    grayscale of the frame it was drawn on (ghosting the key frame into its neighbours), and
    its float64 blending is ~5x slower.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, rgb: bool):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        b, c, s = self.brightness, self.contrast, self.saturation
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"PhotometricTransform needs HxWx3 uint8 images, got {img.shape}")
        gray_w = np.array([0.299, 0.587, 0.114] if self.rgb else [0.114, 0.587, 0.299])
        mean = float(np.mean(cv2.mean(img)[:3]))
        # One saturating 3x4 colour matrix: out = A @ [c0, c1, c2] + offset.
        m = np.zeros((3, 4))
        m[:, :3] = s * c * b * np.eye(3) + (1 - s) * c * b * gray_w[None, :]
        m[:, 3] = (1 - c) * b * mean
        return cv2.transform(img, m)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return T.NoOpTransform()


class ClipPhotometric(T.Augmentation):
    """Random brightness, contrast and saturation, each uniform in [1 - p, 1 + p]."""

    def __init__(self, strength: float, image_format: str = "BGR"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        lo, hi = 1.0 - self.strength, 1.0 + self.strength
        b, c, s = (float(np.random.uniform(lo, hi)) for _ in range(3))
        return PhotometricTransform(b, c, s, self.image_format == "RGB")


class CV2ResizeTransform(T.ResizeTransform):
    """Detectron2's ResizeTransform with OpenCV doing the pixels (~5x faster than PIL):
    area averaging when shrinking (no aliasing), bilinear when enlarging. Coordinates map
    exactly as in the parent."""

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"CV2ResizeTransform: image {img.shape[:2]} is not {(self.h, self.w)}")
        shrink = self.new_h * self.new_w < self.h * self.w
        flag = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=flag)


class FastResizeShortestEdge(T.ResizeShortestEdge):
    """:class:`detectron2.data.transforms.ResizeShortestEdge` drawing the same sizes, resizing
    with :class:`CV2ResizeTransform`."""

    def get_transform(self, image: np.ndarray) -> Transform:
        t = super().get_transform(image)
        if isinstance(t, T.ResizeTransform):
            return CV2ResizeTransform(t.h, t.w, t.new_h, t.new_w, t.interp)
        return t


def build_test_resize(cfg) -> T.Augmentation:
    """The test-time resize: shortest edge to ``INPUT.MIN_SIZE_TEST``, longest at most
    ``INPUT.MAX_SIZE_TEST`` (no resize when MIN_SIZE_TEST is 0).

    Evaluation clips (:func:`build_clip_augmentation` with ``is_train=False``) and
    ``VideoPosePredictor`` both build it here, so a frame reaches the model as the same pixels
    whether it comes from the test loader or from a video.
    """
    return FastResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")


def build_clip_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """The augmentations of one clip, drawn once and applied to every frame.

    Train: optional RandomCrop (first, as Detectron2's DatasetMapper does), ResizeShortestEdge
    (MIN_SIZE_TRAIN with MIN_SIZE_TRAIN_SAMPLING, MAX_SIZE_TRAIN), RandomFlip
    (INPUT.CLIP.FLIP_PROB), photometric brightness/contrast/saturation in
    [1 - INPUT.CLIP.PHOTOMETRIC, 1 + INPUT.CLIP.PHOTOMETRIC]. Test: :func:`build_test_resize`
    only.
    """
    if not is_train:
        return [build_test_resize(cfg)]
    augs: List[T.Augmentation] = []
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    augs.append(
        FastResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    )
    if cfg.INPUT.CLIP.FLIP_PROB > 0:
        augs.append(T.RandomFlip(prob=cfg.INPUT.CLIP.FLIP_PROB, horizontal=True))
    p = float(cfg.INPUT.CLIP.PHOTOMETRIC)
    if p > 0:
        augs.append(ClipPhotometric(p, cfg.INPUT.FORMAT))
    return augs


class ClipDatasetMapper:
    """Turn a sample ``{"video": record, "key": frame index}`` into a clip (docs/INTERNALS.md).

    The clip holds the key frame and its neighbours at ``offsets`` (frames beyond the video's
    ends repeat the edge frame). One augmentation is drawn on the key frame and applied to every
    frame and every annotation, so all frames share one size and one geometry. Ground truth
    (with track ids) is given for every labeled frame; unlabeled frames get empty Instances and
    ``labeled=False``. Keypoints that leave the image get v=0; persons left with no annotated
    joint are dropped.

    One-frame videos (COCO) in training become a pseudo-video: neighbour at offset ``o`` is the
    image rotated by ``o * s * n`` degrees (s = +/-1, n ~ U{0..pseudo_video_max_rotation}),
    labels rotated with it (PAVE-Net's COCO pretraining).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[T.Augmentation],
        image_format: str = "BGR",
        offsets: Sequence[int] = (-1, 1),
        keypoint_names: Sequence[str],
        keypoint_flip_map: Sequence[Tuple[str, str]] = (),
        pseudo_video: bool = True,
        pseudo_video_max_rotation: int = 5,
    ):
        """
        Args:
            is_train: training (random augmentation, pseudo-video) or inference.
            augmentations: Detectron2 augmentations, drawn once per clip.
            image_format: "BGR" or "RGB" (cfg.INPUT.FORMAT).
            offsets: neighbour offsets around the key frame; 0 (the key) is added if absent.
            keypoint_names: the K joint names (dataset metadata); K comes from here.
            keypoint_flip_map: left/right pairs swapped when the clip is flipped.
            pseudo_video: in training, make one-frame videos into rotated pseudo-videos.
            pseudo_video_max_rotation: n's upper bound in degrees.
        """
        if image_format not in ("BGR", "RGB"):
            raise ValueError(
                f"ClipDatasetMapper: INPUT.FORMAT must be BGR or RGB, not {image_format}"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.offsets, self.key_index = clip_offsets(offsets)
        self.num_keypoints = len(keypoint_names)
        self.flip_indices = flip_indices(keypoint_names, keypoint_flip_map)
        self.pseudo_video = pseudo_video
        self.pseudo_video_max_rotation = int(pseudo_video_max_rotation)
        self._complete_jpegs: set = set()
        logger.info(
            "ClipDatasetMapper(%s): offsets %s, K=%d, augmentations %s",
            "train" if is_train else "test",
            self.offsets,
            self.num_keypoints,
            self.augmentations,
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_names: Optional[Sequence[str]] = None):
        names = list(dataset_names or (cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST))
        if not names:
            raise ValueError("ClipDatasetMapper: no dataset name to read keypoint metadata from")
        metas = [MetadataCatalog.get(n) for n in names]
        kp_names = metas[0].get("keypoint_names")
        if kp_names is None:
            raise KeyError(f"dataset {names[0]!r} has no keypoint_names in its metadata")
        for n, m in zip(names, metas):
            if list(m.get("keypoint_names", [])) != list(kp_names):
                raise ValueError(
                    f"datasets {names[0]!r} and {n!r} have different keypoint layouts; a loader "
                    f"needs one"
                )
        return {
            "is_train": is_train,
            "augmentations": build_clip_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "offsets": list(cfg.INPUT.CLIP.OFFSETS),
            "keypoint_names": list(kp_names),
            "keypoint_flip_map": list(metas[0].get("keypoint_flip_map", [])),
            "pseudo_video": cfg.INPUT.CLIP.PSEUDO_VIDEO,
            "pseudo_video_max_rotation": int(cfg.INPUT.CLIP.PSEUDO_VIDEO_MAX_ROTATION),
        }

    # --------------------------------------------------------------------------------------
    def _read(self, video: Dict[str, Any], index: int) -> np.ndarray:
        """The frame, checked: complete (a JPEG ends with its end marker) and of the size the
        annotation gives (``video["height"]``, ``video["width"]``, when known)."""
        fn = video["frames"][index]["file_name"]
        where = f"video {video['video_id']!r}, frame {index}: image file {fn}"
        try:
            with open(fn, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{where} is missing") from None
        except OSError as e:
            raise OSError(f"{where} cannot be read: {e}") from e
        # OpenCV decodes a truncated JPEG without an error (libjpeg only prints "Premature end
        # of JPEG file") and fills the missing rows with grey. The end marker is checked on the
        # bytes already read, so it costs nothing per frame.
        if data[:2] == _JPEG_SOI and data[-2:] != _JPEG_EOI and not self._jpeg_complete(data, fn):
            raise OSError(
                f"{where} is truncated or corrupt: the JPEG data ends before its end marker "
                f"({len(data)} bytes); re-extract or re-download the frame"
            )
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"{where} cannot be decoded")
        h, w = int(video.get("height") or 0), int(video.get("width") or 0)
        if h and w and img.shape[:2] != (h, w):
            # Predictions are mapped back to the frame's size; annotations are in the
            # annotation's: a mismatch would score every joint at the wrong place.
            raise ValueError(
                f"{where} is {img.shape[1]}x{img.shape[0]} (width x height), but the video's "
                f"annotation gives {w}x{h}"
            )
        return img if self.image_format == "BGR" else np.ascontiguousarray(img[:, :, ::-1])

    def _jpeg_complete(self, data: bytes, file_name: str) -> bool:
        """Whether a JPEG whose last bytes are not the end marker is still complete (data
        after the marker, as some cameras append). PIL decodes it and reports a truncation;
        the verdict is kept per file, so that such a set pays the second decode once."""
        if file_name in self._complete_jpegs:
            return True
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except (OSError, SyntaxError, ValueError):
            return False
        self._complete_jpegs.add(file_name)
        return True

    def _annotations(self, video: Dict[str, Any], index: int):
        """(N, K, 3) keypoints, (N, 4) XYXY boxes, (N,) track ids, (N,) areas of one frame."""
        frame = video["frames"][index]
        persons = frame["persons"]
        K = self.num_keypoints
        n = len(persons)
        kpts = np.zeros((n, K, 3), np.float32)
        boxes = np.zeros((n, 4), np.float32)
        tids = np.zeros((n,), np.int64)
        areas = np.zeros((n,), np.float32)
        for i, p in enumerate(persons):
            kp = p["keypoints"]
            if len(kp) != 3 * K:
                raise ValueError(
                    f"video {video['video_id']!r}, frame {index} ({frame['file_name']}): person "
                    f"{p.get('track_id')} has {len(kp)} keypoint values, the dataset's layout "
                    f"needs {3 * K}"
                )
            kpts[i] = np.asarray(kp, np.float32).reshape(K, 3)
            x, y, w, h = p["bbox"]
            boxes[i] = (x, y, x + w, y + h)
            tids[i] = p["track_id"]
            areas[i] = p.get("area", w * h)
        return kpts, boxes, tids, areas

    @staticmethod
    def _rotate(img: np.ndarray, ann, angle: float):
        h, w = img.shape[:2]
        M = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        img = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        kpts, boxes, tids, areas = ann
        kpts = kpts.copy()
        xy = kpts[..., :2].reshape(-1, 2)
        kpts[..., :2] = (xy @ M[:, :2].T + M[:, 2]).reshape(kpts.shape[:-1] + (2,))
        corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
        rc = corners @ M[:, :2].T.astype(np.float32) + M[:, 2].astype(np.float32)
        boxes = np.concatenate([rc.min(1), rc.max(1)], axis=1).astype(np.float32)
        return img, (kpts, boxes, tids, areas)

    def _instances(self, ann, tfm: T.TransformList, hw: Tuple[int, int], flip: bool) -> Instances:
        kpts, boxes, tids, areas = ann
        H, W = hw
        kpts = kpts.copy()
        if len(kpts):
            annotated = kpts[..., 2] > 0
            xy = tfm.apply_coords(kpts[..., :2].reshape(-1, 2).astype(np.float32).copy())
            kpts[..., :2] = xy.reshape(kpts.shape[:-1] + (2,))
            if flip:
                kpts = kpts[:, self.flip_indices]
                annotated = annotated[:, self.flip_indices]
            inside = (
                (kpts[..., 0] >= 0)
                & (kpts[..., 0] <= W)
                & (kpts[..., 1] >= 0)
                & (kpts[..., 1] <= H)
            )
            vis = annotated & inside
            kpts[..., 2] = np.where(vis, np.maximum(kpts[..., 2], 1.0), 0.0)
            kpts[~vis, :2] = 0.0
            new_boxes = tfm.apply_box(boxes.copy()).astype(np.float32)
            old_area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
            new_area = (new_boxes[:, 2] - new_boxes[:, 0]) * (new_boxes[:, 3] - new_boxes[:, 1])
            # The OKS scale follows the geometric scaling (resize), not the clipping (crop).
            areas = areas * np.where(old_area > 1e-5, new_area / old_area, 1.0)
            new_boxes[:, 0::2] = new_boxes[:, 0::2].clip(0, W)
            new_boxes[:, 1::2] = new_boxes[:, 1::2].clip(0, H)
            keep = vis.any(axis=1)
            kpts, boxes, tids, areas = kpts[keep], new_boxes[keep], tids[keep], areas[keep]
        inst = Instances((H, W))
        inst.gt_keypoints = torch.as_tensor(
            kpts.reshape(-1, self.num_keypoints, 3), dtype=torch.float32
        )
        inst.gt_boxes = Boxes(torch.as_tensor(boxes.reshape(-1, 4), dtype=torch.float32))
        inst.gt_classes = torch.zeros(len(kpts), dtype=torch.int64)
        inst.gt_track_ids = torch.as_tensor(tids, dtype=torch.int64)
        inst.gt_areas = torch.as_tensor(areas, dtype=torch.float32)
        return inst

    def _empty_ann(self):
        K = self.num_keypoints
        return (
            np.zeros((0, K, 3), np.float32),
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0,), np.float32),
        )

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """
        Args:
            sample: ``{"video": video record, "key": key frame index}`` (from ``clip_samples``).

        Returns:
            the clip dict of docs/INTERNALS.md: ``image`` uint8 (T, 3, H, W), ``key_index``,
            ``instances`` (T Instances), ``labeled``, ``video_id``, ``frame_ids``,
            ``key_frame_id``, ``file_names``, ``height``, ``width`` (plus ``image_ids``).
        """
        video, key = sample["video"], int(sample["key"])
        frames = video["frames"]
        n = len(frames)
        if not 0 <= key < n:
            raise IndexError(f"video {video['video_id']!r}: key frame {key} outside 0..{n - 1}")
        idxs = window_indices(key, self.offsets, n)
        cache: Dict[int, np.ndarray] = {}
        images, anns, labeled = [], [], []
        for i in idxs:
            if i not in cache:
                cache[i] = self._read(video, i)
            images.append(cache[i])
            is_lab = bool(frames[i]["is_labeled"])
            labeled.append(is_lab)
            anns.append(self._annotations(video, i) if is_lab else self._empty_ann())
        orig_h, orig_w = images[self.key_index].shape[:2]
        for j, img in enumerate(images):
            if img.shape[:2] != (orig_h, orig_w):
                raise ValueError(
                    f"video {video['video_id']!r}: frame {idxs[j]} ({frames[idxs[j]]['file_name']})"
                    f" is {img.shape[1]}x{img.shape[0]}, the key frame {orig_w}x{orig_h}"
                )

        if (
            self.is_train
            and self.pseudo_video
            and n == 1
            and len(self.offsets) > 1
            and self.pseudo_video_max_rotation > 0
        ):
            deg = float(np.random.randint(0, self.pseudo_video_max_rotation + 1))
            sign = 1.0 if np.random.rand() < 0.5 else -1.0
            for j, o in enumerate(self.offsets):
                if o != 0 and deg > 0:
                    images[j], anns[j] = self._rotate(images[j], anns[j], sign * o * deg)

        aug_input = T.AugInput(images[self.key_index])
        tfm = self.augmentations(aug_input)
        out_images = []
        # Repeated edge frames are the same array: transform each distinct frame once.
        done: Dict[int, np.ndarray] = {id(images[self.key_index]): aug_input.image}
        for img in images:
            if id(img) not in done:
                done[id(img)] = tfm.apply_image(img)
            out_images.append(done[id(img)])
        H, W = out_images[self.key_index].shape[:2]
        flip = sum(isinstance(t, HFlipTransform) for t in tfm.transforms) % 2 == 1
        instances = [self._instances(a, tfm, (H, W), flip) for a in anns]
        clip = np.stack(out_images)  # (T, H, W, 3)
        image = torch.as_tensor(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))
        return {
            "image": image,
            "key_index": self.key_index,
            "instances": instances,
            "labeled": labeled,
            "video_id": video["video_id"],
            "frame_ids": [int(frames[i]["frame_index"]) for i in idxs],
            "key_frame_id": int(frames[key]["frame_index"]),
            "image_ids": [int(frames[i]["image_id"]) for i in idxs],
            "file_names": [frames[i]["file_name"] for i in idxs],
            "height": int(orig_h),
            "width": int(orig_w),
        }
