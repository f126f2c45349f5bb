"""Run a pose model over a video, a folder of frames or a webcam.

Writes, under ``--output``, the video with every person's pose drawn (``NAME.mp4``, or
``NAME.avi`` with MJPG where this OpenCV build has no mp4v encoder) and the predictions as a
PoseTrack 2018 file (``NAME.json``: ``images`` with file_name / id / frame_id, ``annotations``
with 17-slot keypoints, scores, track_id, image_id).

Example::

    python demo/video_demo.py --config-file configs/quick/pave_synthetic.yaml \\
        --input datasets/synthetic_posetrack/images/val/000000 --output output/demo \\
        --opts MODEL.WEIGHTS output/main_job/pave/model_final.pth
"""

import argparse
import json
import logging
import re
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import tqdm

import vpose_d2  # noqa: F401  isort: skip  (registers everything; compat first)
from detectron2.config import CfgNode, get_cfg
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from vpose_d2.config import add_vpose_config
from vpose_d2.data.keypoints import (
    COCO,
    POSETRACK,
    coco17_to_posetrack15,
    posetrack15_to_official17,
)
from vpose_d2.engine import VideoPosePredictor, merge_config_file, merge_config_opts

logger = logging.getLogger("vpose_d2.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# The official PoseTrack 2018 "person" category (17 slots; ears always empty).
OFFICIAL_KEYPOINT_NAMES = [
    "nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
OFFICIAL_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
    [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip
_PERSON_COLORS = colormap(rgb=True, maximum=1)


class InputError(ValueError):
    """Input the demo cannot read; the message names the path (and frame) at fault."""


# ------------------------------------------------------------------------------------------
# Input
# ------------------------------------------------------------------------------------------
class FrameSource:
    """Frames of a video file, a folder of images or a webcam, as HxWx3 BGR uint8 arrays.

    Attributes:
        name: stem used for the output files.
        fps: frames per second for the written video.
        file_names: per frame, the name written into the PoseTrack json (filled while read).
    """

    def __init__(
        self,
        *,
        path: Optional[str] = None,
        webcam: bool = False,
        fps: Optional[float] = None,
        max_frames: int = 0,
    ):
        self.path = Path(path) if path else None
        self.webcam = webcam
        self.max_frames = max_frames
        self.file_names: List[str] = []
        self._frame_files: List[Path] = []
        self._capture = None
        if webcam:
            self.name = "webcam"
            self._capture = cv2.VideoCapture(0)
            if not self._capture.isOpened():
                raise InputError("Cannot open the webcam (device 0)")
            self.fps = fps or 25.0
            self.num_frames = max_frames or None
        elif self.path is None:
            raise InputError("Give --input PATH (a video file or a folder of frames) or --webcam")
        elif not self.path.exists():
            raise InputError(f"Input '{self.path}' does not exist")
        elif self.path.is_dir():
            self.name = self.path.name
            self._frame_files = sorted(
                p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not self._frame_files:
                raise InputError(
                    f"Input folder '{self.path}' has no frames (looked for "
                    f"{', '.join(IMAGE_EXTENSIONS)} files)"
                )
            self.fps = fps or 25.0
            self.num_frames = len(self._frame_files)
        else:
            self.name = self.path.stem
            self._capture = cv2.VideoCapture(str(self.path))
            if not self._capture.isOpened():
                raise InputError(
                    f"Cannot open '{self.path}' as a video (not a video file, or "
                    "a format this OpenCV cannot decode)"
                )
            reported_fps = self._capture.get(cv2.CAP_PROP_FPS)
            self.fps = fps or (reported_fps if reported_fps and reported_fps > 0 else 25.0)
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
            self.num_frames = count if count > 0 else None
        if max_frames and self.num_frames:
            self.num_frames = min(self.num_frames, max_frames)

    def describe(self) -> str:
        return "the webcam" if self.webcam else f"'{self.path}'"

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._frame_files:
            yield from self._read_folder()
        else:
            yield from self._read_capture()

    def _read_folder(self) -> Iterator[np.ndarray]:
        for index, file in enumerate(self._frame_files):
            if self.max_frames and index >= self.max_frames:
                return
            frame = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if frame is None:
                raise InputError(
                    f"Frame {index} of '{self.path}' ('{file}') cannot be read as "
                    "an image (corrupt or not an image)"
                )
            self.file_names.append(f"images/{self.name}/{file.name}")
            yield frame

    def _read_capture(self) -> Iterator[np.ndarray]:
        what = self.describe()
        index = 0
        try:
            while not (self.max_frames and index >= self.max_frames):
                ok, frame = self._capture.read()
                if not ok:
                    if index == 0:
                        raise InputError(f"Could not decode any frame from {what}")
                    if self.num_frames and index < self.num_frames and not self.webcam:
                        logger.warning(
                            "%s: decoding stopped at frame %d of %d reported "
                            "(truncated or corrupt file).",
                            what,
                            index,
                            self.num_frames,
                        )
                    return
                self.file_names.append(f"images/{self.name}/{index:06d}.jpg")
                yield frame
                index += 1
        finally:
            self._capture.release()


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------
class VideoSink:
    """cv2.VideoWriter opened on the first frame: mp4v/.mp4, else MJPG/.avi."""

    def __init__(self, output_dir: Path, name: str, fps: float):
        self.output_dir, self.name, self.fps = output_dir, name, fps
        self.writer = None
        self.path: Optional[Path] = None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self._open(frame.shape[1], frame.shape[0])
        self.writer.write(frame)

    def _open(self, width: int, height: int) -> None:
        for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
            path = self.output_dir / f"{self.name}{suffix}"
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter_fourcc(*codec), self.fps, (width, height)
            )
            if writer.isOpened():
                self.writer, self.path = writer, path
                return
            writer.release()
            path.unlink(missing_ok=True)
            logger.warning("OpenCV cannot write %s with codec %s; trying the next.", path, codec)
        raise RuntimeError(f"OpenCV can write neither mp4v nor MJPG video into {self.output_dir}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def person_color(person_id: int) -> np.ndarray:
    """A fixed colour (RGB in [0, 1]) per track id, or per rank when the model does not track."""
    return _PERSON_COLORS[int(person_id) % len(_PERSON_COLORS)]


def draw_poses(
    frame: np.ndarray,
    instances: Instances,
    metadata: Any,
    *,
    confidence_threshold: float,
    keypoint_threshold: float = 0.0,
    renderer: str = "cv2",
) -> np.ndarray:
    """Draw every confident person's skeleton in its own colour.

    Follows ``Visualizer.draw_and_connect_keypoints``: joints as circles, limbs from the
    metadata's ``keypoint_connection_rules``, line width from the image size as the Visualizer
    sizes it; but a whole person has one colour (by track id, or by rank without tracking) so
    people can be told apart. ``renderer="visualizer"`` draws through Detectron2's Visualizer
    itself (matplotlib: ~1 s per 720p frame); "cv2" draws the same picture with OpenCV (~ms).

    Args:
        frame: (H, W, 3) uint8 BGR.
        instances: the frame's predictions (``pred_keypoints`` (N, K, 3), ``scores`` (N,)).
        metadata: with ``keypoint_names`` and ``keypoint_connection_rules``.
        confidence_threshold: persons scoring below are not drawn.
        keypoint_threshold: joints scoring at or below are not drawn.
        renderer: "cv2" or "visualizer".

    Returns:
        (H, W, 3) uint8 BGR with the poses drawn.
    """
    if renderer not in ("cv2", "visualizer"):
        raise ValueError(f"renderer must be 'cv2' or 'visualizer', got {renderer!r}")
    names = list(metadata.get("keypoint_names", []))
    rules = metadata.get("keypoint_connection_rules", [])
    keypoints = instances.pred_keypoints.numpy()
    scores = instances.scores.numpy()
    track_ids = (
        instances.pred_track_ids.numpy()
        if instances.has("pred_track_ids")
        else np.arange(len(instances))
    )
    # The Visualizer's sizes: font max(sqrt(H*W) // 90, 10), lines a third of it, circles 3 px.
    font = max(np.sqrt(frame.shape[0] * frame.shape[1]) // 90, 10)
    line_width = max(font / 3, 1)
    radius = 3

    if renderer == "visualizer":
        visualizer = Visualizer(frame[:, :, ::-1], metadata)
    else:
        canvas = frame.copy()
    for kpts, score, track in zip(keypoints, scores, track_ids):
        if score < confidence_threshold:
            continue
        color = person_color(track)
        visible = {}
        for k, (x, y, prob) in enumerate(kpts):
            if prob > keypoint_threshold and k < len(names):
                visible[names[k]] = (float(x), float(y))
        for a, b, _ in rules:
            if a in visible and b in visible:
                (x0, y0), (x1, y1) = visible[a], visible[b]
                if renderer == "visualizer":
                    visualizer.draw_line([x0, x1], [y0, y1], color=color, linewidth=line_width)
                else:
                    cv2.line(
                        canvas,
                        (round(x0), round(y0)),
                        (round(x1), round(y1)),
                        _bgr255(color),
                        max(1, round(line_width)),
                        cv2.LINE_AA,
                    )
        for x, y in visible.values():
            if renderer == "visualizer":
                visualizer.draw_circle((x, y), color=color, radius=radius)
            else:
                cv2.circle(canvas, (round(x), round(y)), radius, _bgr255(color), -1, cv2.LINE_AA)
    if renderer == "visualizer":
        return np.ascontiguousarray(visualizer.output.get_image()[:, :, ::-1])
    return canvas


def _bgr255(rgb01: np.ndarray) -> Tuple[int, int, int]:
    r, g, b = (int(round(255 * c)) for c in rgb01[:3])
    return b, g, r


def _video_number(name: str) -> int:
    """PoseTrack image ids are 1VVVVVVFFFF: the video's leading digits (0 if it has none)."""
    match = re.match(r"\d+", name)
    return int(match.group(0)) % 1_000_000 if match else 0


def to_official17(keypoints: np.ndarray, metadata: Any) -> np.ndarray:
    """(N, K, 3) in the model's layout -> (N, 17, 3) in the official PoseTrack slots."""
    names = list(metadata.get("keypoint_names", [])) if metadata is not None else []
    k = keypoints.shape[1]
    if names == list(POSETRACK.names) or (not names and k == 15):
        return posetrack15_to_official17(keypoints)
    if names == list(COCO.names) or (not names and k == 17):
        # Eyes stand in for head_bottom / head_top (vpose_d2.data.keypoints.coco17_to_posetrack15).
        return posetrack15_to_official17(coco17_to_posetrack15(keypoints))
    raise ValueError(f"Cannot write {k}-joint poses ({names}) in the PoseTrack layout")


def posetrack_json(
    name: str,
    file_names: Sequence[str],
    predictions: Sequence[Tuple[int, Instances]],
    metadata: Any,
    confidence_threshold: float,
) -> Dict[str, Any]:
    """Predictions as an official PoseTrack 2018 file (one video).

    Args:
        name: the video's name (its leading digits make the image ids).
        file_names: per frame, the file name to write.
        predictions: ``(frame_index, Instances)`` per frame, in order.
        metadata: the model's keypoint metadata.
        confidence_threshold: persons scoring below are left out.
    """
    base = 10_000_000_000 + _video_number(name) * 10_000
    images, annotations = [], []
    for frame_index, instances in predictions:
        image_id = base + frame_index
        images.append({
            "file_name": file_names[frame_index], "id": image_id, "frame_id": image_id,
            "vid_id": f"{_video_number(name):06d}", "nframes": len(predictions),
            "is_labeled": True, "has_no_densepose": True, "ignore_regions_x": [],
            "ignore_regions_y": [],
        })  # fmt: skip
        keep = instances.scores.numpy() >= confidence_threshold
        kpts = instances.pred_keypoints.numpy()[keep].astype(np.float64)
        scores = instances.scores.numpy()[keep]
        if instances.has("pred_track_ids"):
            tracks = instances.pred_track_ids.numpy()[keep]
        else:  # no tracking: ids unique within the frame, as the evaluator's writer does
            tracks = np.arange(len(kpts))
        kpts = np.nan_to_num(kpts)
        official = to_official17(kpts, metadata)
        for person, (pose, score, track) in enumerate(zip(official, scores, tracks)):
            joint_scores = pose[:, 2].copy()
            # As the evaluator's writer: every predicted joint is "visible", the ears are not.
            pose[:, 2] = 1.0
            pose[[3, 4]] = 0.0
            joint_scores[[3, 4]] = 0.0
            visible = pose[pose[:, 2] > 0]
            if len(visible):
                x0, y0 = visible[:, :2].min(0)
                x1, y1 = visible[:, :2].max(0)
                bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
            else:
                bbox = [0.0, 0.0, 0.0, 0.0]
            annotations.append({
                "id": image_id * 100 + person, "image_id": image_id, "category_id": 1,
                "track_id": int(track), "keypoints": [float(v) for v in pose.reshape(-1)],
                "scores": [float(s) for s in joint_scores], "score": float(score),
                "bbox": bbox,
            })  # fmt: skip
    categories = [
        {
            "supercategory": "person",
            "id": 1,
            "name": "person",
            "keypoints": OFFICIAL_KEYPOINT_NAMES,
            "skeleton": OFFICIAL_SKELETON,
        }
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------
def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = get_cfg()
    add_vpose_config(cfg)
    merge_config_file(cfg, args.config_file)
    merge_config_opts(cfg, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # Detectron2 defaults to CUDA; a demo on a laptop should still run.
        logger.warning(
            "MODEL.DEVICE is %s but CUDA is unavailable: running on the CPU.", cfg.MODEL.DEVICE
        )
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument("--input", help="a video file or a folder of frames (sorted by name)")
    parser.add_argument("--webcam", action="store_true", help="read the webcam (device 0)")
    parser.add_argument("--output", required=True, help="folder for NAME.mp4 and NAME.json")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="persons scoring below are neither drawn nor written",
    )
    parser.add_argument(
        "--keypoint-threshold",
        type=float,
        default=0.0,
        help="joints scoring at or below are not drawn",
    )
    parser.add_argument(
        "--renderer",
        choices=("cv2", "visualizer"),
        default="cv2",
        help="draw with OpenCV (fast) or Detectron2's Visualizer (matplotlib, "
        "~1 s per 720p frame); both draw the same skeletons",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="fps of the written video (default: the input's, or 25)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=0,
        help="stop after this many frames (0: all; needed to end --webcam " "without Ctrl-C)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute every window from pixels instead of caching the "
        "per-frame encoder memories (slower; for checking)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS path",
    )
    return parser


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the demo; returns the output paths and timing (for tools/run_main_job.py)."""
    if args.webcam and args.input:
        raise InputError("Give either --input or --webcam, not both")
    source = FrameSource(
        path=args.input, webcam=args.webcam, fps=args.fps, max_frames=args.max_frames
    )
    cfg = setup_cfg(args)
    predictor = VideoPosePredictor(cfg, cache=not args.no_cache)
    metadata = predictor.metadata
    if metadata is None or not metadata.get("keypoint_names", None):
        raise ValueError(
            "The config names no dataset with keypoint metadata "
            "(DATASETS.TEST / DATASETS.TRAIN): cannot draw or write poses"
        )
    output_dir = Path(args.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    sink = VideoSink(output_dir, source.name, source.fps)

    frames: Deque[np.ndarray] = deque()  # only until drawn: the predictor lags by the window
    predictions: List[Tuple[int, Instances]] = []
    start = time.perf_counter()

    def remember(stream):
        for frame in stream:
            frames.append(frame)
            yield frame

    progress = tqdm.tqdm(total=source.num_frames, desc=source.name, unit="frame")
    try:
        for frame_index, _, instances in predictor(remember(source)):
            # Results come in frame order, so the oldest frame held is this one.
            frame = frames.popleft()
            sink.write(
                draw_poses(
                    frame,
                    instances,
                    metadata,
                    confidence_threshold=args.confidence_threshold,
                    keypoint_threshold=args.keypoint_threshold,
                    renderer=args.renderer,
                )
            )
            predictions.append((frame_index, instances))
            progress.update(1)
    except KeyboardInterrupt:  # how a --webcam run ends: keep what was done
        logger.info("Interrupted after %d frames; writing them.", len(predictions))
    except InputError:
        raise
    except ValueError as e:
        # The predictor names the frame (e.g. one of another size); add the input.
        if str(e).startswith("Frame "):
            raise InputError(f"{source.describe()}: {e}") from e
        raise
    finally:
        progress.close()
        sink.close()
    elapsed = time.perf_counter() - start

    json_path = output_dir / f"{source.name}.json"
    with open(json_path, "w") as f:
        json.dump(
            posetrack_json(
                source.name, source.file_names, predictions, metadata, args.confidence_threshold
            ),
            f,
        )
    logger.info(
        "%d frames in %.1f s (%.1f ms/frame incl. drawing): %s, %s",
        len(predictions),
        elapsed,
        1000 * elapsed / max(1, len(predictions)),
        sink.path,
        json_path,
    )
    return {
        "video": sink.path,
        "json": json_path,
        "num_frames": len(predictions),
        "seconds": elapsed,
    }


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = get_parser().parse_args(argv)
    setup_logger(name="vpose_d2")
    return run(args)


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        raise SystemExit(f"video_demo: error: {e}")
