"""Drawing predicted poses on a frame, one colour per person.

Detectron2's ``Visualizer.draw_and_connect_keypoints`` colours limbs by the metadata's
``keypoint_connection_rules``, so in a crowd one cannot tell whose arm is whose. Here a whole
person has one colour from Detectron2's colormap, chosen by its track id (``pred_track_ids``),
so a tracked person keeps its colour from frame to frame; without track ids the colour follows
the rank in the frame. Joint names and limbs come from the dataset metadata
(``vpose_d2.data.keypoints`` layouts), sizes follow the Visualizer's.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap

__all__ = ["draw_poses", "person_color"]

_COLORS = colormap(rgb=True, maximum=1)
RENDERERS = ("cv2", "visualizer")

Point = Tuple[float, float]


def person_color(person_id: int) -> np.ndarray:
    """The colour of a track id (or of a rank): RGB in [0, 1], the same for the same id."""
    return _COLORS[int(person_id) % len(_COLORS)]


def _bgr255(rgb01: np.ndarray) -> Tuple[int, int, int]:
    r, g, b = (int(round(255 * c)) for c in rgb01[:3])
    return b, g, r


def _skeleton(
    keypoints: np.ndarray, names: List[str], rules: List[Any], keypoint_threshold: float
) -> Tuple[Dict[str, Point], List[Tuple[Point, Point]]]:
    """One person's visible joints (name -> (x, y)) and the limbs joining two visible joints.

    Args:
        keypoints: (K, 3) [x, y, score] in pixels, K = len(names).
    """
    joints = {
        name: (float(x), float(y))
        for name, (x, y, score) in zip(names, keypoints)
        if score > keypoint_threshold and np.isfinite(x) and np.isfinite(y)
    }
    limbs = [(joints[a], joints[b]) for a, b, _ in rules if a in joints and b in joints]
    return joints, limbs


def draw_poses(
    frame: np.ndarray,
    instances: Instances,
    metadata: Any,
    *,
    confidence_threshold: float = 0.0,
    keypoint_threshold: float = 0.0,
    renderer: str = "cv2",
) -> np.ndarray:
    """Draw every confident person's skeleton in its own colour.

    Joints are circles, limbs lines between the joints the metadata's
    ``keypoint_connection_rules`` pair, with the line width the Visualizer gives this image
    size. ``renderer="visualizer"`` draws through Detectron2's ``Visualizer`` itself
    (matplotlib, about a second per 720p frame); "cv2" draws the same picture with OpenCV in
    milliseconds.

    Args:
        frame: (H, W, 3) uint8 BGR.
        instances: the frame's predictions: ``pred_keypoints`` (N, K, 3) [x, y, score],
            ``scores`` (N,), optionally ``pred_track_ids`` (N,).
        metadata: Detectron2 metadata with ``keypoint_names`` (K) and
            ``keypoint_connection_rules``.
        confidence_threshold: persons scoring below are not drawn.
        keypoint_threshold: joints scoring at or below are not drawn.
        renderer: "cv2" or "visualizer".

    Returns:
        a new (H, W, 3) uint8 BGR image with the poses drawn.
    """
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    names = list(metadata.get("keypoint_names", None) or [])
    rules = list(metadata.get("keypoint_connection_rules", None) or [])
    if not names:
        raise ValueError(f"metadata {metadata.get('name', '?')!r} has no keypoint_names to draw")
    instances = instances.to("cpu")
    keypoints = instances.pred_keypoints.float().numpy()
    if len(instances) and keypoints.shape[1] != len(names):
        raise ValueError(
            f"poses have {keypoints.shape[1]} joints, metadata {metadata.get('name', '?')!r} "
            f"names {len(names)}"
        )
    scores = instances.scores.float().numpy()
    if instances.has("pred_track_ids"):
        person_ids = instances.pred_track_ids.numpy()
    else:
        person_ids = np.arange(len(instances))
    # The Visualizer's sizes: font max(sqrt(H*W) // 90, 10), lines a third of it, circles 3 px.
    font = max(np.sqrt(frame.shape[0] * frame.shape[1]) // 90, 10)
    line_width, radius = max(font / 3, 1), 3

    people = [
        (person_color(pid), *_skeleton(kpts, names, rules, keypoint_threshold))
        for kpts, score, pid in zip(keypoints, scores, person_ids)
        if score >= confidence_threshold
    ]
    if renderer == "visualizer":
        from detectron2.utils.visualizer import Visualizer  # matplotlib: only when asked for

        visualizer = Visualizer(frame[:, :, ::-1], metadata)
        for color, joints, limbs in people:
            for (x0, y0), (x1, y1) in limbs:
                visualizer.draw_line([x0, x1], [y0, y1], color=color, linewidth=line_width)
            for point in joints.values():
                visualizer.draw_circle(point, color=color, radius=radius)
        return np.ascontiguousarray(visualizer.output.get_image()[:, :, ::-1])

    canvas = frame.copy()
    thickness = max(1, round(line_width))
    for color, joints, limbs in people:
        bgr = _bgr255(color)
        for (x0, y0), (x1, y1) in limbs:
            p0, p1 = (round(x0), round(y0)), (round(x1), round(y1))
            cv2.line(canvas, p0, p1, bgr, thickness, cv2.LINE_AA)
        for x, y in joints.values():
            cv2.circle(canvas, (round(x), round(y)), radius, bgr, -1, cv2.LINE_AA)
    return canvas
