"""``VideoPosePredictor``: a model from a config and weights, run over any stream of frames.

Like Detectron2's ``DefaultPredictor`` (clone the config, build the model, load
``MODEL.WEIGHTS``, convert BGR to ``INPUT.FORMAT``, resize to ``MIN_SIZE_TEST`` /
``MAX_SIZE_TEST``), but for video: a sliding window of ``T = 1 + len(INPUT.CLIP.OFFSETS)``
frames around every key frame. Neighbours beyond the ends of the video repeat the edge frame,
exactly as the clip mapper builds training clips, and the resize is the evaluation loader's
(``vpose_d2.data.clip_mapper.build_test_resize``), so the model sees the same pixels for a frame
whether it comes from the test loader or from a video.

Every model runs through one interface (:class:`vpose_d2.modeling.meta_arch.PoseModelBase`):
``encode_frames`` does the per-frame work ONCE per frame (backbone, spatial encoder, and each
frame's value projections for the decoders unless ``value_cache=False``), the window holds
those per-frame entries, and ``decode`` runs only the per-window stages for each key frame
("streaming"). ``cache=False`` instead recomputes the whole clip through the model's
``forward`` for every key frame ("windowed recomputation": T encoder passes per output frame),
the reference the streaming path must reproduce. The window's frame order is the model's
``frame_offsets``.

Memory stays bounded: only the frames the current and the next window need are kept.
"""

import logging
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances

from ..data.clip import clip_offsets, window_indices
from ..data.clip_mapper import build_test_resize
from ..modeling.backbone import fold_frozen_batchnorm
from ..tracking import build_tracker
from .checkpoint import StrictShapeCheckpointer

__all__ = ["PredictedFrame", "VideoPosePredictor"]

logger = logging.getLogger(__name__)


class PredictedFrame(NamedTuple):
    """One frame's result from :class:`VideoPosePredictor`.

    Attributes:
        index: the frame's position in the video (0-based).
        frame: the (H, W, 3) uint8 BGR frame as it was given (the same array, not a copy).
        instances: its predictions in the frame's pixels (see ``VideoPosePredictor.__call__``).
    """

    index: int
    frame: np.ndarray
    instances: Instances


class VideoPosePredictor:
    """Run a pose model over a video, one result per frame, in order.

    Attributes:
        cfg (CfgNode): the (cloned) config.
        model (nn.Module): the model, in eval mode (one built from ``cfg`` has its frozen
            BatchNorms folded into their convolutions).
        metadata: the metadata of ``cfg.DATASETS.TEST[0]`` (keypoint names, skeleton), or of
            ``cfg.DATASETS.TRAIN[0]`` when there is no test set.
        offsets (list[int]): window offsets around the key frame, in the model's frame order
            (0, the key frame, included); ``[0]`` for image models.
        key_index (int): position of the key frame in the window.
        streaming (bool): whether frames are encoded once and cached.
        value_cache (bool): whether streaming also caches the decoders' value projections.
        track (bool): whether results carry ``pred_track_ids`` from a tracker.

    Examples:
    ::
        predictor = VideoPosePredictor(cfg)
        for result in predictor(frames):  # frames: iterable of HxWx3 BGR
            print(result.index, result.frame.shape, result.instances.pred_keypoints.shape)
    """

    def __init__(
        self,
        cfg: CfgNode,
        *,
        cache: bool = True,
        model: Optional[torch.nn.Module] = None,
        value_cache: bool = True,
        track: bool = True,
    ):
        """
        Args:
            cfg: a config with vpose_d2's keys (``add_vpose_config``).
            cache: encode each frame once and keep the window's per-frame entries; False
                recomputes every window from pixels through ``forward``.
            model: use this model (already built, weights loaded) instead of building one from
                ``cfg`` and loading ``cfg.MODEL.WEIGHTS``; for tests and the benchmark.
            value_cache: with ``cache``, also keep each frame's per-layer value projections
                for the decoders (``encode_frames(..., cache_values=True)``, the default);
                False has every window project its frames' memories again (to compare).
            track: give every person a ``pred_track_ids`` that follows it through the video,
                with the tracker ``MODEL.TRACKER`` names (``"none"`` there, or False here,
                leaves the model's output untracked). Each call of the predictor is one video
                and gets a tracker of its own.
        """
        self.cfg = cfg.clone()  # the model may modify its config
        if model is None:
            model = build_model(self.cfg)
            if self.cfg.MODEL.WEIGHTS:
                strict = self.cfg.MODEL.WEIGHTS_STRICT_SHAPES
                StrictShapeCheckpointer(
                    model,
                    strict_shapes=strict,
                    check_layout=self.cfg.MODEL.WEIGHTS_CHECK_LAYOUT,
                    cfg=self.cfg,
                ).load(self.cfg.MODEL.WEIGHTS)
            else:
                logger.warning("MODEL.WEIGHTS is empty: predicting with random weights.")
            # Inference only from here: fold frozen BatchNorms into their convolutions (same
            # state dict; ~5% of a 480x800 R50 clip on CPU). A model passed in stays as given.
            folded = fold_frozen_batchnorm(model)
            if folded:
                logger.info("Folded %d frozen BatchNorms into their convolutions.", folded)
        self.model = model.eval()
        names = list(self.cfg.DATASETS.TEST) or list(self.cfg.DATASETS.TRAIN)
        self.metadata = MetadataCatalog.get(names[0]) if names else None

        self.aug = build_test_resize(self.cfg)
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")

        # The window is the model's clip: its frame order, checked against the config.
        self.offsets = list(self.model.frame_offsets)
        self.key_index = self.offsets.index(0)
        if self.offsets != [0] and self.offsets != clip_offsets(self.cfg.INPUT.CLIP.OFFSETS)[0]:
            raise ValueError(
                f"INPUT.CLIP.OFFSETS {list(self.cfg.INPUT.CLIP.OFFSETS)} give the clip "
                f"{clip_offsets(self.cfg.INPUT.CLIP.OFFSETS)[0]}, but the model was built for "
                f"{self.offsets}"
            )
        self.streaming = bool(cache)
        self.value_cache = bool(value_cache)
        self.track = bool(track) and build_tracker(self.cfg) is not None
        self._past = -self.offsets[0]
        self._future = self.offsets[-1]

    @property
    def window_size(self) -> int:
        """Number of frames T the model sees per key frame."""
        return len(self.offsets)

    # --------------------------------------------------------------------------------------
    # Per-frame steps
    # --------------------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray, index: int) -> Dict[str, Any]:
        """One BGR frame as the model's input: channels in INPUT.FORMAT, then the test-time
        resize, exactly as the evaluation loader's mapper prepares a frame it read from disk.

        Args:
            frame: (H, W, 3) uint8 BGR.
            index: its position in the video (for error messages).

        Returns:
            ``{"image": uint8 Tensor (3, h, w) in INPUT.FORMAT, "height": H, "width": W}``.
        """
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", type(frame).__name__)
            raise ValueError(f"Frame {index}: expected an HxWx3 BGR numpy array, got {shape}")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"Frame {index}: empty image of shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"Frame {index}: expected dtype uint8, got {frame.dtype}")
        if self.input_format == "RGB":
            frame = np.ascontiguousarray(frame[:, :, ::-1])
        height, width = frame.shape[:2]
        image = self.aug.get_transform(frame).apply_image(frame)
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": image, "height": height, "width": width}

    # no_grad per call, not around the generator: a context held across ``yield`` would leak
    # the grad mode into the caller's code between frames.
    @torch.no_grad()
    def _encode(self, item: Dict[str, Any]) -> Any:
        """What the window keeps for a frame: its encoder memory, or its pixels."""
        if not self.streaming:
            return item
        return self.model.encode_frames([item], cache_values=self.value_cache)[0]

    @torch.no_grad()
    def _predict_key(self, key: int, window: List[Any], key_item: Dict[str, Any]) -> Instances:
        """Poses in the key frame from the window's T cached entries."""
        height, width = key_item["height"], key_item["width"]
        if self.streaming:
            instances = self.model.decode([window], output_sizes=[(height, width)])[0]
        else:
            clip = {
                "image": torch.stack([w["image"] for w in window]),
                "key_index": self.key_index,
                "height": height,
                "width": width,
            }
            if len(window) == 1:
                clip["image"] = clip["image"][0]
            instances = self.model([clip])[0]["instances"]
        return instances.to("cpu")

    # --------------------------------------------------------------------------------------
    # The sliding window
    # --------------------------------------------------------------------------------------
    def __call__(self, frames: Iterable[np.ndarray]) -> Iterator[PredictedFrame]:
        """Predict every frame of a video.

        Args:
            frames: any iterable of (H, W, 3) uint8 BGR frames of one video (a list, a
                generator reading a file or a camera). All frames must share one size.

        Yields:
            a :class:`PredictedFrame` for every frame, in order: its index, the frame as given
            and Instances in the frame's original pixels with ``pred_keypoints (N, K, 3)``
            [x, y, score], ``scores (N,)``, ``pred_boxes`` and, unless ``track`` is off,
            ``pred_track_ids (N,)`` (-1 for persons below ``MODEL.TRACKER.MIN_SCORE``). Results lag the input by the window's future offsets, so the
            predictor holds those frames until their result is out.
        """
        tracker = build_tracker(self.cfg) if self.track else None
        cache: Dict[int, Any] = {}  # frame index -> encoder memory (or pixels)
        sizes: Dict[int, Dict[str, Any]] = {}  # frame index -> {"height", "width"}
        waiting: Dict[int, np.ndarray] = {}  # frame index -> the frame, until its result is out
        first_shape = None
        num_read = 0
        next_key = 0
        for index, frame in enumerate(frames):
            item = self.preprocess(frame, index)
            if first_shape is None:
                first_shape = frame.shape
            elif frame.shape != first_shape:
                # Per-frame memories of different sizes cannot share a window.
                raise ValueError(
                    f"Frame {index}: size {frame.shape[:2]} differs from the first frame's "
                    f"{first_shape[:2]}; all frames of a video must have one size"
                )
            cache[index] = self._encode(item)
            sizes[index] = {"height": item["height"], "width": item["width"]}
            waiting[index] = frame
            num_read = index + 1
            # The window of key frame k reaches k + future: ready once that frame is read.
            while next_key + self._future <= index:
                instances = self._run_key(next_key, cache, sizes, None)
                if tracker is not None:
                    instances = tracker(instances)
                yield PredictedFrame(next_key, waiting.pop(next_key), instances)
                next_key += 1
                self._evict(cache, sizes, next_key)
        # End of the stream: the last keys' future neighbours repeat the last frame.
        while next_key < num_read:
            instances = self._run_key(next_key, cache, sizes, num_read)
            if tracker is not None:
                instances = tracker(instances)
            yield PredictedFrame(next_key, waiting.pop(next_key), instances)
            next_key += 1
            self._evict(cache, sizes, next_key)

    def _run_key(
        self,
        key: int,
        cache: Dict[int, Any],
        sizes: Dict[int, Dict[str, Any]],
        num_frames: Optional[int],
    ) -> Instances:
        bound = num_frames if num_frames is not None else key + self._future + 1
        indices = window_indices(key, self.offsets, bound)
        return self._predict_key(key, [cache[i] for i in indices], sizes[key])

    def _evict(self, cache: Dict[int, Any], sizes: Dict[int, Any], next_key: int) -> None:
        """Drop what no later window needs: frames before ``next_key - past`` (clamped at 0)."""
        oldest_needed = max(0, next_key - self._past)
        for index in [i for i in cache if i < oldest_needed]:
            del cache[index]
            del sizes[index]

    def predict_video(self, frames: Iterable[np.ndarray]) -> List[Instances]:
        """All frames' predictions as a list (convenience for short videos)."""
        return [result.instances for result in self(frames)]
