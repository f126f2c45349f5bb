"""A synthetic PoseTrack-2018-format video set, small enough to learn on a CPU in minutes.

:func:`make_synthetic_posetrack` writes, under ``root``::

    annotations/{train,val}/VIDEO.json      official 2018 per-video files (17 slots, ears 0)
    annotations/blurred_frames.json         {"train": {VIDEO: [frame indices]}, "val": {...}}:
                                            the frames given motion blur or defocus
    images/{train,val}/VIDEO/000000.jpg     JPEG frames
    SYNTHETIC_POSETRACK.json                the generator's arguments (marks the folder as ours)

so the ordinary PoseTrack loaders read it unchanged, and :func:`register_synthetic_posetrack`
registers ``<prefix>_train`` / ``<prefix>_val`` on it. The blurred frames are listed in a side
file, not in the per-video files, so those keep the official keys; a frame index is the frame's
position in its video (its file name). ``tools/blur_breakdown.py`` scores predictions on the
blurred and the sharp key frames separately with it.

What is in the videos: articulated people (textured capsule limbs of varied widths, a head with
a face or hair) walking and waving; 1..N people per video who overlap one another; occluders
(poles, boards) that sweep across the frame in front of everyone; heavy motion blur or defocus
on single frames (a quarter of them by default); small unannotated people inside ignore
regions; cluttered backgrounds with limb-like distractor strokes. The person's left limbs are
lighter and carry a stripe along their axis, the right limbs darker with stripes across, so
left/right is decidable from one frame.

Visibility convention: PoseTrack annotates joints it can locate, including ones hidden behind
someone or something. Here every joint inside the image is annotated (v=1) whether or not an
occluder or another person hides it, so a model must use the neighbouring frames to place
joints that are covered or blurred in the key frame; joints outside the image are (0, 0, 0).

The blur is strong on purpose: with streaks of 9-17% of the frame or a defocus of sigma
1.6-3.1% of it on a quarter of the frames, a blurred key frame is hard to read on its own, so a
model gains from its sharp neighbours and the set tests what a video model adds over an image
model (``tools/blur_breakdown.py`` scores blurred and sharp key frames apart; the measurements
are in docs/results.md). ``blur_strength`` scales both kinds.

Train videos are labeled on every frame, val videos on every ``val_label_every``-th (4, as
PoseTrack's val set), starting at frame 0.

Everything is deterministic from ``seed``: each video draws from its own generator seeded by
(seed, split, video index), so the bytes written do not depend on ``num_workers``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .posetrack import official_categories, register_posetrack

__all__ = [
    "SyntheticPosetrackConfig",
    "make_synthetic_posetrack",
    "register_synthetic_posetrack",
    "DEFAULT_SYNTHETIC_ROOT",
]

logger = logging.getLogger(__name__)

DEFAULT_SYNTHETIC_ROOT = "datasets/synthetic_posetrack"
_MARKER = "SYNTHETIC_POSETRACK.json"
_SHIFT = 4  # cv2 fixed-point bits: joints are drawn with 1/16 px precision
_ONE = 1 << _SHIFT

# 15 POSETRACK joints by index
NOSE, HEAD_B, HEAD_T, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR, L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN = (
    range(15)
)


@dataclass
class SyntheticPosetrackConfig:
    """Every knob of the generator (see ``tools/make_synthetic_posetrack.py --help``)."""

    seed: int = 0
    num_train_videos: int = 48
    num_val_videos: int = 8
    frames_per_video: int = 24
    size: int = 256
    min_persons: int = 1
    max_persons: int = 4
    min_person_height: float = 70.0
    max_person_height: float = 180.0
    occluder_prob: float = 0.6
    blur_prob: float = 0.25
    blur_strength: float = 1.0
    ignore_region_prob: float = 0.4
    clutter: int = 12
    val_label_every: int = 4
    jpeg_quality: int = 90
    write_videos: bool = False
    num_workers: int = 1

    def recorded(self) -> Dict[str, Any]:
        """The parameters SYNTHETIC_POSETRACK.json records: all but ``num_workers``, which does
        not change the output."""
        meta = asdict(self)
        meta.pop("num_workers")
        return meta

    def validate(self) -> None:
        if self.size < 64:
            raise ValueError("size must be >= 64")
        if not 1 <= self.min_persons <= self.max_persons:
            raise ValueError("need 1 <= min_persons <= max_persons")
        if not 8 <= self.min_person_height <= self.max_person_height:
            raise ValueError("need 8 <= min_person_height <= max_person_height")
        if not 1 <= self.frames_per_video <= 9999:
            raise ValueError("frames_per_video must be in 1..9999")
        if self.num_train_videos < 0 or self.num_val_videos < 0:
            raise ValueError("video counts must be >= 0")
        if self.val_label_every < 1:
            raise ValueError("val_label_every must be >= 1")
        if not 0 <= self.blur_prob <= 1 or self.blur_strength < 0:
            raise ValueError("need 0 <= blur_prob <= 1 and blur_strength >= 0")


# ------------------------------------------------------------------------------------------
# people
# ------------------------------------------------------------------------------------------
class _Person:
    """One articulated person: a parametric walk/wave cycle in the image plane."""

    def __init__(self, rng: np.random.Generator, size: int, h: float):
        self.h = h
        self.size = size
        self.x = rng.uniform(0.15, 0.85) * size
        lo, hi = 0.52 * h + 2, size - 0.5 * h - 2
        self.y = rng.uniform(lo, hi) if hi > lo else size / 2 + rng.uniform(-0.1, 0.1) * h
        action = rng.choice(["walk", "walk", "wave", "walk_wave", "stand"])
        self.walk = action in ("walk", "walk_wave")
        self.wave = action in ("wave", "walk_wave")
        self.vx = rng.uniform(0.8, 3.0) * rng.choice([-1, 1]) if self.walk else 0.0
        self.vy = rng.uniform(-0.4, 0.4)
        self.facing = float(rng.choice([1, -1], p=[0.75, 0.25]))  # +1: faces the camera
        self.width = rng.uniform(0.6, 1.0)
        self.phase = rng.uniform(0, 2 * math.pi)
        self.freq = rng.uniform(0.25, 0.45)
        self.wave_side = int(rng.integers(2))  # 0 left arm, 1 right arm
        self.wave_freq = rng.uniform(0.4, 0.8)
        self.lean = rng.uniform(-0.08, 0.08)
        self.limb_w = rng.uniform(0.055, 0.085) * h
        self.skin = rng.integers(60, 230, 3).astype(float) * np.array([0.7, 0.8, 1.0])
        self.shirt = rng.integers(30, 226, 3).astype(float)
        self.pants = rng.integers(20, 200, 3).astype(float)
        self.hair = rng.integers(0, 90, 3).astype(float)

    def step(self) -> None:
        self.x += self.vx
        self.y += self.vy
        self.phase += self.freq if self.walk else 0.05
        # Turn around before leaving the frame; vertical drift bounces too.
        if (self.x < 0.1 * self.size and self.vx < 0) or (self.x > 0.9 * self.size and self.vx > 0):
            self.vx = -self.vx
        lo, hi = 0.5 * self.h, self.size - 0.45 * self.h
        if (self.y < lo and self.vy < 0) or (self.y > hi and self.vy > 0):
            self.vy = -self.vy

    def joints(self, t: int) -> np.ndarray:
        """(15, 2) joint positions in pixels at frame ``t``."""
        h, s = self.h, self.facing
        ph = self.phase
        dirx = math.copysign(1.0, self.vx) if self.vx != 0 else s
        bob = -0.012 * h * abs(math.sin(ph)) if self.walk else 0.0
        hip_c = np.array([self.x, self.y + bob])
        up = np.array([math.sin(self.lean), -math.cos(self.lean)])
        neck = hip_c + 0.30 * h * up
        side = np.array([s, 0.0])  # image direction of the person's left
        J = np.zeros((15, 2))
        J[L_SH] = neck + 0.11 * h * self.width * side + 0.03 * h * np.array([0, 1])
        J[R_SH] = neck - 0.11 * h * self.width * side + 0.03 * h * np.array([0, 1])
        J[L_HIP] = hip_c + 0.075 * h * self.width * side
        J[R_HIP] = hip_c - 0.075 * h * self.width * side
        tilt = 0.1 * math.sin(0.5 * ph)
        head_up = np.array([math.sin(self.lean + tilt), -math.cos(self.lean + tilt)])
        J[HEAD_B] = neck
        J[HEAD_T] = neck + 0.19 * h * head_up
        J[NOSE] = (
            neck
            + 0.085 * h * head_up
            + 0.03 * h * dirx * np.array([1.0, 0]) * (0.3 if s > 0 else 0.0)
        )

        def seg(angle: float, sx: float) -> np.ndarray:
            return np.array([sx * math.sin(angle), math.cos(angle)])

        amp = 0.45 if self.walk else 0.04
        for hip, knee, ank, sgn in ((L_HIP, L_KN, L_AN, 1.0), (R_HIP, R_KN, R_AN, -1.0)):
            th = sgn * amp * math.sin(ph)
            flex = (0.6 if self.walk else 0.05) * max(0.0, math.sin(ph + sgn * math.pi / 2))
            J[knee] = J[hip] + 0.245 * h * seg(th, dirx)
            J[ank] = J[knee] + 0.245 * h * seg(th - flex, dirx)
        for i, (sh, el, wr, sgn) in enumerate(((L_SH, L_EL, L_WR, 1.0), (R_SH, R_EL, R_WR, -1.0))):
            if self.wave and i == self.wave_side:
                out = s if i == 0 else -s  # the arm's own side of the body
                up_a = math.pi - 0.6 + 0.25 * math.sin(self.wave_freq * t)
                J[el] = J[sh] + 0.16 * h * seg(up_a, out)
                fore = up_a + 0.7 * math.sin(self.wave_freq * t * 1.7 + 1.0)
                J[wr] = J[el] + 0.15 * h * seg(fore, out)
            else:
                th = -sgn * 0.6 * amp * math.sin(ph) + 0.1 * (1 if i == 0 else -1) * s * dirx
                J[el] = J[sh] + 0.16 * h * seg(th, dirx)
                J[wr] = J[el] + 0.15 * h * seg(th + (0.5 if self.walk else 0.15), dirx)
        return J


def _fx(p: np.ndarray) -> Tuple[int, int]:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


def _capsule(img: np.ndarray, a: np.ndarray, b: np.ndarray, w: float, color, side: int) -> None:
    """A limb: a round-capped capsule; left (side 0) lighter with a stripe along the axis,
    right (side 1) darker with stripes across it."""
    col = np.clip(color * (1.25 if side == 0 else 0.7) + (25 if side == 0 else 0), 0, 255)
    t = max(2, int(round(w)))
    cv2.line(img, _fx(a), _fx(b), col.tolist(), t, cv2.LINE_AA, _SHIFT)
    dark = (col * 0.45).tolist()
    if side == 0:
        cv2.line(img, _fx(a), _fx(b), dark, max(1, t // 4), cv2.LINE_AA, _SHIFT)
    else:
        d = b - a
        n = np.linalg.norm(d)
        if n < 1:
            return
        d /= n
        perp = np.array([-d[1], d[0]]) * (w * 0.5)
        for f in np.arange(0.2, 0.95, 0.25):
            c = a + (b - a) * f
            cv2.line(img, _fx(c - perp), _fx(c + perp), dark, max(1, t // 5), cv2.LINE_AA, _SHIFT)


def _draw_person(img: np.ndarray, p: _Person, J: np.ndarray) -> None:
    w = p.limb_w
    arms = [(L_SH, L_EL, L_WR, 0), (R_SH, R_EL, R_WR, 1)]
    legs = [(L_HIP, L_KN, L_AN, 0), (R_HIP, R_KN, R_AN, 1)]
    # Facing the camera, the right side is drawn first (further away) and vice versa.
    far, near = (1, 0) if p.facing > 0 else (0, 1)

    def arm(i: int) -> None:
        sh, el, wr, side = arms[i]
        _capsule(img, J[sh], J[el], w * 1.0, p.shirt, side)
        _capsule(img, J[el], J[wr], w * 0.85, p.skin, side)
        cv2.circle(img, _fx(J[wr]), int(w * 0.55 * _ONE), p.skin.tolist(), -1, cv2.LINE_AA, _SHIFT)

    def leg(i: int) -> None:
        hip, kn, an, side = legs[i]
        _capsule(img, J[hip], J[kn], w * 1.35, p.pants, side)
        _capsule(img, J[kn], J[an], w * 1.1, p.pants * 0.85, side)
        cv2.circle(img, _fx(J[an]), int(w * 0.6 * _ONE), (30, 30, 30), -1, cv2.LINE_AA, _SHIFT)

    arm(far)
    leg(far)
    leg(near)
    torso = np.stack([J[L_SH], J[R_SH], J[R_HIP], J[L_HIP]])
    c = torso.mean(0)
    torso = c + (torso - c) * 1.12
    cv2.fillConvexPoly(
        img, np.round(torso * _ONE).astype(np.int32), p.shirt.tolist(), cv2.LINE_AA, _SHIFT
    )
    # A belt marks the hips; a collar the head_bottom.
    cv2.line(img, _fx(J[L_HIP]), _fx(J[R_HIP]), (p.pants * 0.5).tolist(), max(1, int(w * 0.4)),
             cv2.LINE_AA, _SHIFT)  # fmt: skip
    arm(near)
    hb, ht = J[HEAD_B], J[HEAD_T]
    centre = 0.5 * (hb + ht)
    r = 0.5 * np.linalg.norm(ht - hb)
    rw = r * 0.78
    ang = math.degrees(math.atan2(ht[1] - hb[1], ht[0] - hb[0])) + 90
    cv2.ellipse(img, _fx(centre), (int(rw * _ONE), int(r * _ONE)), ang, 0, 360, p.skin.tolist(),
                -1, cv2.LINE_AA, _SHIFT)  # fmt: skip
    if p.facing > 0:
        # hair on top, eyes and nose on the face
        cv2.ellipse(img, _fx(centre), (int(rw * _ONE), int(r * _ONE)), ang, 180, 360,
                    p.hair.tolist(), -1, cv2.LINE_AA, _SHIFT)  # fmt: skip
        cv2.circle(img, _fx(J[NOSE]), max(_ONE, int(r * 0.18 * _ONE)), (40, 40, 160), -1,
                   cv2.LINE_AA, _SHIFT)  # fmt: skip
    else:
        cv2.ellipse(img, _fx(centre), (int(rw * _ONE), int(r * _ONE)), ang, 0, 360,
                    p.hair.tolist(), -1, cv2.LINE_AA, _SHIFT)  # fmt: skip


# ------------------------------------------------------------------------------------------
# scene
# ------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int, clutter: int) -> np.ndarray:
    top = rng.integers(40, 220, 3).astype(np.float32)
    bottom = rng.integers(20, 200, 3).astype(np.float32)
    a = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = (top * (1 - a) + bottom * a) * np.ones((1, size, 1), np.float32)
    img = np.ascontiguousarray(img.astype(np.uint8))
    for _ in range(clutter):
        col = rng.integers(0, 256, 3).tolist()
        kind = rng.integers(3)
        x0, y0 = rng.integers(0, size, 2)
        if kind == 0:  # buildings, boxes
            x1, y1 = x0 + rng.integers(10, size // 2), y0 + rng.integers(10, size // 2)
            cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), col, -1)
        elif kind == 1:
            cv2.circle(img, (int(x0), int(y0)), int(rng.integers(4, size // 8)), col, -1)
        else:  # limb-like distractor strokes
            x1, y1 = rng.integers(0, size, 2)
            cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), col, int(rng.integers(2, 9)),
                     cv2.LINE_AA)  # fmt: skip
    noise = rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


class _Occluder:
    def __init__(self, rng: np.random.Generator, size: int, frames: int):
        self.kind = int(rng.integers(2))  # 0: pole, 1: board
        self.w = rng.uniform(0.08, 0.2) * size if self.kind == 0 else rng.uniform(0.2, 0.35) * size
        self.h = size * 1.2 if self.kind == 0 else rng.uniform(0.25, 0.45) * size
        self.y = -0.1 * size if self.kind == 0 else rng.uniform(0.1, 0.6) * size
        speed = rng.uniform(8, 18)
        d = rng.choice([-1, 1])
        # Cross the frame around a random frame, so some key frames are covered.
        t_mid = rng.uniform(0.2, 0.8) * frames
        self.v = d * speed
        self.x0 = size / 2 - self.w / 2 - self.v * t_mid
        self.color = rng.integers(0, 256, 3).tolist()
        self.stripe = (np.array(self.color) * 0.5).tolist()

    def draw(self, img: np.ndarray, t: int) -> None:
        x = self.x0 + self.v * t
        x0, y0, x1, y1 = int(x), int(self.y), int(x + self.w), int(self.y + self.h)
        cv2.rectangle(img, (x0, y0), (x1, y1), self.color, -1)
        for yy in range(y0, y1, 12):
            cv2.line(img, (x0, yy), (x1, yy + 6), self.stripe, 2)


def _blur(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Motion blur or defocus on one frame, sized relative to the frame (see the module doc).
    The random draws do not depend on ``strength``, so it changes nothing else in the set."""
    size = max(img.shape[:2])
    if rng.random() < 0.5:  # motion blur along a random direction
        n = int(round(strength * rng.uniform(0.09, 0.17) * size))
        angle = float(rng.uniform(0, 180))
        if n < 2:
            return img
        k = np.zeros((n, n), np.float32)
        k[n // 2, :] = 1.0
        k = cv2.warpAffine(k, cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), angle, 1), (n, n))
        return cv2.filter2D(img, -1, k / max(k.sum(), 1e-6))
    sigma = strength * rng.uniform(0.016, 0.031) * size
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img  # defocus


def _round(v: float) -> float:
    return float(round(float(v), 2))


def _render_video(
    args: Tuple[str, int, int, SyntheticPosetrackConfig, str],
) -> Tuple[str, Dict, List[int]]:
    """Render one video; write its frames; return (video name, official json dict, indices of
    the blurred frames)."""
    split, vi, vid_num, cfg, root = args
    split_code = 0 if split == "train" else 1
    rng = np.random.default_rng([cfg.seed, split_code, vi])
    size, T = cfg.size, cfg.frames_per_video
    video = f"{vid_num:06d}_synth_{split}"
    img_dir = Path(root) / "images" / split / video
    img_dir.mkdir(parents=True, exist_ok=True)

    bg = _background(rng, size, cfg.clutter)
    n = int(rng.integers(cfg.min_persons, cfg.max_persons + 1))
    hmax = min(cfg.max_person_height, 0.9 * size)
    people = [
        _Person(rng, size, rng.uniform(min(cfg.min_person_height, hmax), hmax)) for _ in range(n)
    ]
    occluders = []
    if rng.random() < cfg.occluder_prob:
        occluders = [_Occluder(rng, size, T) for _ in range(int(rng.integers(1, 3)))]
    crowd, regions = [], []
    if rng.random() < cfg.ignore_region_prob:
        # Small unannotated people inside an ignore polygon (PoseTrack's crowds).
        cx, cy = rng.uniform(0.2, 0.8) * size, rng.uniform(0.25, 0.75) * size
        for _ in range(int(rng.integers(2, 4))):
            q = _Person(rng, size, rng.uniform(0.12, 0.2) * size)
            q.x, q.y = cx + rng.uniform(-0.08, 0.08) * size, cy
            q.vx, q.vy = 0.0, 0.0
            crowd.append(q)
        pts = np.concatenate([q.joints(0) for q in crowd])
        x0, y0 = np.maximum(pts.min(0) - 8, 0)
        x1, y1 = np.minimum(pts.max(0) + 8, size - 1)
        regions = [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)]]
    blur_frames = rng.random(T) < cfg.blur_prob
    order = np.argsort([p.y + 0.5 * p.h for p in people])  # feet lower = nearer = drawn later

    images, anns = [], []
    for t in range(T):
        img = bg.copy()
        for q in crowd:
            _draw_person(img, q, q.joints(t))
            q.phase += 0.05
        joints = [p.joints(t) for p in people]
        for i in order:
            _draw_person(img, people[i], joints[i])
        for o in occluders:
            o.draw(img, t)
        if blur_frames[t]:
            img = _blur(rng, img, cfg.blur_strength)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise RuntimeError(f"could not encode frame {t} of {video}")
        (img_dir / f"{t:06d}.jpg").write_bytes(buf.tobytes())

        image_id = int(f"1{vid_num:06d}{t:04d}")
        labeled = split == "train" or t % cfg.val_label_every == 0
        images.append(
            {
                "has_no_densepose": True,
                "is_labeled": bool(labeled),
                "file_name": f"images/{split}/{video}/{t:06d}.jpg",
                "nframes": T,
                "frame_id": image_id,
                "vid_id": f"{vid_num:06d}",
                "ignore_regions_y": [[_round(p[1]) for p in r] for r in regions] if labeled else [],
                "ignore_regions_x": [[_round(p[0]) for p in r] for r in regions] if labeled else [],
                "id": image_id,
                "width": size,
                "height": size,
            }
        )
        if labeled:
            for tid, (p, J) in enumerate(zip(people, joints)):
                inside = (J[:, 0] >= 0) & (J[:, 0] < size) & (J[:, 1] >= 0) & (J[:, 1] < size)
                if not inside.any():
                    continue
                k17 = np.zeros((17, 3))
                k17[[0, 1, 2] + list(range(5, 17)), :2] = np.where(inside[:, None], J, 0)
                k17[[0, 1, 2] + list(range(5, 17)), 2] = inside
                vis = J[inside]
                x0, y0 = vis.min(0)
                x1, y1 = vis.max(0)
                mx, my = 0.15 * (x1 - x0) + 4, 0.1 * (y1 - y0) + 4
                x0, y0 = max(x0 - mx, 0), max(y0 - my, 0)
                x1, y1 = min(x1 + mx, size), min(y1 + my, size)
                hr = 0.5 * np.linalg.norm(J[HEAD_T] - J[HEAD_B])
                hx0 = min(J[HEAD_T, 0], J[HEAD_B, 0]) - 0.8 * hr
                hy0 = min(J[HEAD_T, 1], J[HEAD_B, 1])
                hx1 = max(J[HEAD_T, 0], J[HEAD_B, 0]) + 0.8 * hr
                hy1 = max(J[HEAD_T, 1], J[HEAD_B, 1])
                anns.append(
                    {
                        "bbox_head": [
                            _round(hx0),
                            _round(hy0),
                            _round(hx1 - hx0),
                            _round(hy1 - hy0),
                        ],
                        "keypoints": [
                            _round(v) if i % 3 < 2 else int(v)
                            for i, v in enumerate(k17.reshape(-1))
                        ],
                        "track_id": tid,
                        "image_id": image_id,
                        "bbox": [_round(x0), _round(y0), _round(x1 - x0), _round(y1 - y0)],
                        "scores": [],
                        "category_id": 1,
                        "id": image_id * 100 + tid,
                        "iscrowd": False,
                        "num_keypoints": int(inside.sum()),
                    }
                )
        for p in people:
            p.step()
    data = {"categories": official_categories(), "images": images, "annotations": anns}
    return video, data, np.flatnonzero(blur_frames).tolist()


def _write_mp4(root: Path, split: str, video: str, fps: float = 10.0) -> None:
    """``videos/VIDEO.mp4`` from the frames, as demo input (not byte-deterministic: codec)."""
    frames = sorted((root / "images" / split / video).glob("*.jpg"))
    first = cv2.imread(str(frames[0]))
    (root / "videos").mkdir(exist_ok=True)
    out = root / "videos" / f"{video}.mp4"
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {out} (no mp4v encoder)")
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()


def make_synthetic_posetrack(
    root: Union[str, Path],
    *,
    seed: int = 0,
    num_train_videos: int = 48,
    num_val_videos: int = 8,
    frames_per_video: int = 24,
    size: int = 256,
    min_persons: int = 1,
    max_persons: int = 4,
    min_person_height: float = 70.0,
    max_person_height: float = 180.0,
    occluder_prob: float = 0.6,
    blur_prob: float = 0.25,
    blur_strength: float = 1.0,
    ignore_region_prob: float = 0.4,
    clutter: int = 12,
    val_label_every: int = 4,
    jpeg_quality: int = 90,
    write_videos: bool = False,
    num_workers: int = 1,
) -> Path:
    """Write the synthetic PoseTrack set under ``root`` (see the module docstring).

    A folder that already holds a set made by this function is replaced; any other non-empty
    folder is refused, so user data is never deleted. With ``write_videos`` the val videos are
    also written as ``videos/VIDEO.mp4`` (demo input; the frame folders serve as well).

    Returns:
        ``root`` as a Path.
    """
    cfg = SyntheticPosetrackConfig(
        seed=seed,
        num_train_videos=num_train_videos,
        num_val_videos=num_val_videos,
        frames_per_video=frames_per_video,
        size=size,
        min_persons=min_persons,
        max_persons=max_persons,
        min_person_height=min_person_height,
        max_person_height=max_person_height,
        occluder_prob=occluder_prob,
        blur_prob=blur_prob,
        blur_strength=blur_strength,
        ignore_region_prob=ignore_region_prob,
        clutter=clutter,
        val_label_every=val_label_every,
        jpeg_quality=jpeg_quality,
        write_videos=write_videos,
        num_workers=num_workers,
    )
    cfg.validate()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not (root / _MARKER).is_file():
            raise FileExistsError(
                f"{root} is not empty and was not made by make_synthetic_posetrack "
                f"(no {_MARKER}); refusing to overwrite it"
            )
        for sub in ("annotations", "images", "videos"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tasks = [("train", i, 1 + i, cfg, str(root)) for i in range(cfg.num_train_videos)]
    tasks += [("val", i, 500001 + i, cfg, str(root)) for i in range(cfg.num_val_videos)]
    if cfg.num_workers > 1 and len(tasks) > 1:
        import multiprocessing as mp

        # fork where there is one: spawned workers would spend seconds re-importing Detectron2.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(cfg.num_workers) as pool:
            results = pool.map(_render_video, tasks)
    else:
        results = [_render_video(t) for t in tasks]
    blurred: Dict[str, Dict[str, List[int]]] = {"train": {}, "val": {}}
    for (split, *_), (video, data, blurred_frames) in zip(tasks, results):
        d = root / "annotations" / split
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{video}.json").write_text(json.dumps(data))
        blurred[split][video] = blurred_frames
    for split in ("train", "val"):
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    # Beside the split folders, not in them: the loaders read every json in a split folder.
    (root / "annotations" / "blurred_frames.json").write_text(json.dumps(blurred, indent=1))
    if cfg.write_videos:
        for split, _, vid_num, _, _ in tasks:
            if split == "val":
                _write_mp4(root, split, f"{vid_num:06d}_synth_{split}")
    (root / _MARKER).write_text(json.dumps(cfg.recorded(), indent=1, sort_keys=True))
    logger.info("Wrote %d synthetic videos to %s", len(tasks), root)
    return root


def _generate_if_missing(root: Path) -> None:
    """Write the default set at ``root`` unless a set (or anything else) is already there.

    Generated into a temporary sibling folder and renamed into place, so concurrent processes
    (one per GPU) never see half a set.
    """
    if (root / "annotations").is_dir() or (root.exists() and any(root.iterdir())):
        return
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    logger.info("No synthetic PoseTrack set at %s: generating the default one (seed 0)", root)
    make_synthetic_posetrack(tmp)
    try:
        if root.exists():
            root.rmdir()  # empty, checked above
        os.rename(tmp, root)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)


def _check_synthetic_root(root: Path, split: str) -> None:
    """Raise naming ``root`` and the command that writes the set, unless it holds one."""
    ann = root / "annotations" / split
    if ann.is_dir():
        return
    what = "does not exist" if not root.exists() else f"has no {ann.relative_to(root)} folder"
    raise FileNotFoundError(
        f"No synthetic PoseTrack set at {root}: the folder {what}. Write it with "
        f"`python tools/make_synthetic_posetrack.py --root {root}` (`make demo` writes the "
        f"default one), or point DATASETS.SYNTHETIC_ROOT at an existing set."
    )


def register_synthetic_posetrack(
    root: Union[str, Path] = DEFAULT_SYNTHETIC_ROOT,
    name_prefix: str = "synthetic_posetrack",
    generate_if_missing: bool = False,
) -> None:
    """Register ``<prefix>_train`` and ``<prefix>_val`` on a synthetic set (lazy).

    Args:
        root: the set's folder; a relative path is resolved against the current directory now.
        name_prefix: names are ``<prefix>_train`` and ``<prefix>_val``.
        generate_if_missing: on first load (``DatasetCatalog.get``), write the default set
            (seed 0) at ``root`` if nothing is there. Off by default: a mistyped root must not
            silently become a new set that gets scored, so a missing set is an error naming
            the root and the command that writes it.

    Registering again with another root replaces the earlier registration.
    """
    root = Path(os.path.abspath(os.path.expanduser(str(root))))
    for split in ("train", "val"):
        name = f"{name_prefix}_{split}"
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if meta.get("synthetic_root") == str(root) and (
                meta.get("generate_if_missing") == generate_if_missing
            ):
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_posetrack(name, root / "annotations" / split, root, "2018")
        MetadataCatalog.get(name).set(
            synthetic_root=str(root), generate_if_missing=generate_if_missing
        )
        load = DatasetCatalog[name]
        DatasetCatalog.remove(name)

        def _load(load=load, split=split) -> List[Dict[str, Any]]:
            if generate_if_missing:
                _generate_if_missing(root)
            _check_synthetic_root(root, split)
            return load()

        DatasetCatalog.register(name, _load)
