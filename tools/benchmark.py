"""Model cost of PAVE-Net: parameters and GFLOPs per part, latency against the number of persons,
streaming (cached encoder) against windowed recomputation, and the end-to-end models against a
two-stage top-down peer.

Four measurements, printed as tables and plotted (matplotlib, Agg):

1. Parameters and GFLOPs (fvcore ``FlopCountAnalysis`` of one inference call) of
   the spatial encoder (backbone + neck + deformable encoder), the query proposals, the
   spatiotemporal pose decoder (STPD) and joint decoder (STJD), for one clip of T frames at
   ``--size`` (default 800x1333), beside the paper's Table 4 (STPD 12.34 M / 7.31 G, STJD
   5.43 M / 9.72 G). fvcore counts one multiply-add as one flop; the deformable attention op
   is counted the same way: each of the B*Q*M*L*P samples reads D channels by bilinear
   interpolation (4 multiply-adds) and weights them (1), so ``5 * B*Q*M*L*P*D``, whether the
   compiled op (``vpose_d2::ms_deform_attn_forward``) or its grid_sample reference ran;
   self-attention (``scaled_dot_product_attention``) as Lq*S*(E + Ev) per batch and head.
   Beside the per-clip rows, STPD and STJD "per streamed frame": what streaming runs per
   output frame, counted the same way on ``encode_frames`` of the newest frame plus ``decode``
   of its window, the T-1 older frames cached with their decoder value projections (so the
   decoders' value projections count one frame, not T).
2. Latency per frame against the number of persons in the frame (1, 3, 5, 10, 20 people drawn
   by the synthetic generator's renderer), through ``VideoPosePredictor``.
3. Per-frame cost of streaming (each frame encoded once, the window's encoder memories and
   decoder value projections cached) against windowed recomputation (all T frames encoded
   for every output frame), measured side by side in one run. (2 and 3: ``benchmark.png``.)
4. The systems side by side (``latency_vs_persons.png``, one line per system): the two-stage
   peer of ``tools/two_stage_peer.py`` (Detectron2 Faster R-CNN R50-FPN on the full frame, then
   a SimpleBaseline R50 on a 256x192 crop of each person in each of the T frames, fed the
   scenes' person boxes so it sees exactly that many persons), PAVE-Net streaming and VEPE
   streaming (where its config exists: the latency config's name with "vepe" for "pave"),
   interleaved on the same scenes, with each one's ratio to the peer and its growth from the
   fewest persons to the most.

Every latency model has its frozen BatchNorms folded into the convolutions first
(``fold_frozen_batchnorm``; the peer's too), unless ``--no-fold-bn``; ``--fold-bn-compare``
adds each end-to-end model unfolded to the comparison.

On a machine without CUDA the latency runs default to a CPU-sized model and input
(``--latency-config-file configs/quick/pave_synthetic.yaml``, ``--latency-size 256``).

Example::

    python tools/benchmark.py                      # defaults above
    python tools/benchmark.py --no-flops --latency-size 256 --persons 1 5 20
    # the comparison only, R50 at 480x800, one thread:
    python tools/benchmark.py --no-flops --no-windowed --threads 1 \\
        --latency-config-file configs/pave_r50.yaml --latency-size 480x800
"""

import argparse
import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

import vpose_d2  # noqa: F401  isort: skip  (registers the models; compat before Detectron2)
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from fvcore.nn.jit_handles import get_shape

from vpose_d2.config import add_vpose_config
from vpose_d2.engine import VideoPosePredictor, merge_config_file, merge_config_opts
from vpose_d2.modeling.backbone import fold_frozen_batchnorm

logger = logging.getLogger("vpose_d2.benchmark")

#: PAVE-Net R50, Table 4 of the paper: (params in M, GFLOPs).
PAPER_TABLE4 = {"STPD": (12.34, 7.31), "STJD": (5.43, 9.72)}
#: Table 2 (HRNet-W48, V100-class GPU, ms) for reference in the printout.
PAPER_TABLE2_MS = {"PAVE-Net": 153.0, "DCPose": (150, 204, 292, 431, 721)}

#: Top-level modules of the meta-architectures, grouped as the paper's Table 4 reports them.
PART_OF_MODULE = {
    "backbone": "spatial encoder",
    "encoder": "spatial encoder",
    "position_embedding": "spatial encoder",
    "level_embed": "spatial encoder",
    "proposal_head": "proposals",
    "pose_decoder": "STPD",
    "joint_decoder": "STJD",
}
#: VEPE's pose and joint decoders are its spatial phase's (the image model's); its STPD is
#: ``temporal_pose_decoder``, and it adds the instance branch, STPE and STDME.
VEPE_PART_OF_MODULE = dict(
    PART_OF_MODULE,
    pose_decoder="spatial pose decoder",
    joint_decoder="joint decoder",
    instance_queries="instance branch",
    stpe="STPE",
    stdme="STDME",
    temporal_pose_decoder="STPD",
)
PART_OF_MODULE_BY_ARCH = {"VEPE": VEPE_PART_OF_MODULE}
#: Parts whose cost per streamed frame is printed under their per-clip row.
STREAMED_ROWS = (
    "STPD",
    "STJD",
    "spatial pose decoder",
    "instance branch",
    "STPE",
    "STDME",
    "joint decoder",
)
PARTS = (
    "spatial encoder",
    "proposals",
    "spatial pose decoder",
    "instance branch",
    "STPE",
    "STDME",
    "STPD",
    "STJD",
    "joint decoder",
    "other",
)


def part_of_module(model: torch.nn.Module) -> Dict[str, str]:
    """The model's top-level module -> part table (PART_OF_MODULE unless its architecture has
    its own)."""
    return PART_OF_MODULE_BY_ARCH.get(type(model).__name__, PART_OF_MODULE)


# ------------------------------------------------------------------------------------------
# Config, inputs
# ------------------------------------------------------------------------------------------
def parse_size(text: str) -> Tuple[int, int]:
    """ "800x1333" -> (800, 1333) (height x width); "256" -> (256, 256)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW or N, got {text!r}")
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 32:
        raise argparse.ArgumentTypeError(f"size must be HxW or N (>= 32), got {text!r}")
    return sizes[0], sizes[1]


def load_cfg(config_file: str, opts: Sequence[str], size: Tuple[int, int], device: str) -> CfgNode:
    cfg = get_cfg()
    add_vpose_config(cfg)
    merge_config_file(cfg, config_file)
    merge_config_opts(cfg, opts)
    # Frames are rendered at the benchmark size; test-time resizing must leave them as they are.
    cfg.INPUT.MIN_SIZE_TEST = min(size)
    cfg.INPUT.MAX_SIZE_TEST = max(size)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    # Pretrained backbone weights are irrelevant to cost; never try to fetch them.
    cfg.freeze()
    return cfg


def render_video(
    num_persons: int, num_frames: int, size: Tuple[int, int], seed: int = 0
) -> List[np.ndarray]:
    """Frames with ``num_persons`` walking people, drawn by the synthetic generator's renderer.

    The scene is rendered square at the longer side and resized to ``size`` (the content does
    not change an end-to-end model's cost; only the pixel count does).

    Returns:
        ``num_frames`` (H, W, 3) uint8 BGR frames.
    """
    return render_scene(num_persons, num_frames, size, seed).frames


class Scene(NamedTuple):
    """A rendered video and its persons.

    Attributes:
        frames: (H, W, 3) uint8 BGR frames.
        boxes: per frame a (P, 4) float XYXY array, one box per person in the frame's pixels.
    """

    frames: List[np.ndarray]
    boxes: List[np.ndarray]


def render_scene(num_persons: int, num_frames: int, size: Tuple[int, int], seed: int = 0) -> Scene:
    """:func:`render_video`'s frames with every person's box in every frame: the extent of its
    joints with the synthetic annotations' margin (15% + 4 px across, 10% + 4 px along the
    body), clipped to the frame. All ``num_persons`` have a box in every frame, so a two-stage
    pipeline fed these boxes crops exactly ``num_persons`` people."""
    import cv2

    # The generator's scene pieces are module-private; the benchmark reuses them on purpose so
    # the people look like the training data.
    from vpose_d2.data.datasets import synthetic as syn

    height, width = size
    side = max(size)
    rng = np.random.default_rng(seed)
    background = syn._background(rng, side, clutter=8)
    # Smaller people when there are many, so 20 of them still fit in the frame.
    scale = 1.0 if num_persons <= 5 else math.sqrt(5.0 / num_persons)
    persons = [syn._Person(rng, side, float(rng.uniform(0.3, 0.6) * side * scale))
               for _ in range(num_persons)]  # fmt: skip
    to_frame = np.array([width / side, height / side] * 2)
    frames, boxes = [], []
    for t in range(num_frames):
        img = background.copy()
        frame_boxes = []
        for person in persons:
            joints = person.joints(t)
            (x0, y0), (x1, y1) = joints.min(0), joints.max(0)
            mx, my = 0.15 * (x1 - x0) + 4, 0.1 * (y1 - y0) + 4
            box = np.clip([x0 - mx, y0 - my, x1 + mx, y1 + my], 0, side)
            frame_boxes.append(box * to_frame)
        for person in sorted(persons, key=lambda p: p.y):  # nearer (lower) people on top
            syn._draw_person(img, person, person.joints(t))
            person.step()
        frames.append(cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA))
        boxes.append(np.asarray(frame_boxes, dtype=np.float32).reshape(-1, 4))
    return Scene(frames, boxes)


# ------------------------------------------------------------------------------------------
# Parameters and FLOPs
# ------------------------------------------------------------------------------------------
def _ms_deform_attn_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Compiled op: value (B,S,M,D), sampling_locations (B,Q,M,L,P,2) -> 5 * B*Q*M*L*P*D."""
    b, _, m, d = get_shape(inputs[0])
    _, q, _, l, p, _ = get_shape(inputs[3])
    return 5 * b * q * m * l * p * d


def _grid_sampler_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Reference op, one level: output (B*M, D, Q, P) samples -> 5 multiply-adds each (the
    weighting is an elementwise product fvcore would skip, so it is counted here)."""
    return 5 * int(np.prod(get_shape(outputs[0])))


def _sdpa_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Self-attention: q (..., Lq, E), k (..., S, E), v (..., S, Ev) -> Lq*S*(E + Ev) per batch."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = int(np.prod(q[:-2]))
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_params(model: torch.nn.Module) -> Dict[str, int]:
    """Parameters per part (PART_OF_MODULE), top-level parameters and the rest in "other"."""
    counts = {part: 0 for part in PARTS}
    parts = part_of_module(model)
    for name, param in model.named_parameters():
        counts[parts.get(name.split(".")[0], "other")] += param.numel()
    counts["total"] = sum(counts[p] for p in PARTS)
    return counts


class _ClipToTensors(torch.nn.Module):
    """``model([clip])`` as a function of the clip's image tensor only, returning tensors, so
    fvcore's jit tracer can run it (Detectron2's TracingAdapter lives in detectron2.export,
    which needs caffe2 protos this torch lacks)."""

    def __init__(self, model: torch.nn.Module, clip: Dict[str, Any]):
        super().__init__()
        self.model = model
        self.clip = {k: v for k, v in clip.items() if k != "image"}

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        instances = self.model([dict(self.clip, image=image)])[0]["instances"]
        return instances.pred_keypoints, instances.scores


class _StreamedFrameToTensors(torch.nn.Module):
    """What streaming runs for one output frame, as a function of the newest frame's image:
    ``encode_frames`` on it (spatial encoder and, where the model caches them, the decoders'
    value projections of that frame), then ``decode`` of its window, whose T-1 older frames are
    already cached (constants of the trace)."""

    def __init__(self, model: torch.nn.Module, clip: Dict[str, Any]):
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.cached = model.encode_frames([{"image": clip["image"][0]}])[0]
        self.num_frames = clip["image"].shape[0]
        self.key_index = clip["key_index"]
        self.size = (clip["height"], clip["width"])

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        newest = self.model.encode_frames([{"image": image}])[0]
        # The newest frame closes the window (key + largest offset); the others were encoded
        # and projected when they arrived.
        window = [self.cached] * (self.num_frames - 1) + [newest]
        instances = self.model.decode([window], [self.size])[0]
        return instances.pred_keypoints, instances.scores


def _flops_by_part(
    model: torch.nn.Module, traced: torch.nn.Module, inputs: Tuple[torch.Tensor, ...]
) -> Dict[str, float]:
    """GFLOPs (multiply-adds) per part of ``traced(*inputs)``, which runs ``model`` as its
    ``model`` attribute."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(traced, inputs)
    analysis.set_op_handle(
        **{"vpose_d2::ms_deform_attn_forward": _ms_deform_attn_flops,
           "aten::grid_sampler": _grid_sampler_flops,
           "aten::scaled_dot_product_attention": _sdpa_flops}  # fmt: skip
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    by_module = analysis.by_module()
    total = analysis.total()
    flops = {part: 0.0 for part in PARTS}
    parts = part_of_module(model)
    for name, _ in model.named_children():
        flops[parts.get(name, "other")] += by_module.get(f"model.{name}", 0)
    flops["other"] += total - sum(flops[p] for p in PARTS)
    flops["total"] = total
    unsupported = dict(analysis.unsupported_ops())
    if unsupported:
        logger.info("Ops without a FLOP handle (not counted): %s", unsupported)
    return {k: v / 1e9 for k, v in flops.items()}


def count_flops(model: torch.nn.Module, clip: Dict[str, Any]) -> Dict[str, float]:
    """GFLOPs (multiply-adds) per part for one inference call on ``clip``."""
    return _flops_by_part(model, _ClipToTensors(model, clip), (clip["image"],))


def count_streamed_flops(model: torch.nn.Module, clip: Dict[str, Any]) -> Dict[str, float]:
    """GFLOPs per part that streaming spends per output frame (the clip's frames are taken as
    one frame repeated, as the per-clip count's clip is)."""
    return _flops_by_part(model, _StreamedFrameToTensors(model, clip), (clip["image"][-1],))


# ------------------------------------------------------------------------------------------
# Latency
# ------------------------------------------------------------------------------------------
def _time_once(predictor: VideoPosePredictor, frames: List[np.ndarray]) -> float:
    """Mean wall time per output frame (ms) of one pass over ``frames``."""
    cuda = predictor.cfg.MODEL.DEVICE.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    count = sum(1 for _ in predictor(frames))
    if cuda:
        torch.cuda.synchronize()
    return 1000.0 * (time.perf_counter() - start) / count


def time_interleaved(
    predictors: Sequence[VideoPosePredictor], videos: Sequence[List[np.ndarray]], repeats: int
) -> Tuple[np.ndarray, np.ndarray]:
    """ms per frame of every predictor on every video, ``repeats`` rounds interleaved.

    Each round times every (video, predictor) pair once, starting at a different video each
    round, so a change of machine load during the run spreads over all settings instead of
    landing on one person count. One untimed warm-up pass per pair first.

    Returns:
        (best, median), each (len(videos), len(predictors)): the minimum over rounds (on a
        shared machine noise only ever adds time) and the median.
    """
    for frames in videos:
        for predictor in predictors:
            _time_once(predictor, frames)
    runs = np.zeros((repeats, len(videos), len(predictors)))
    for r in range(repeats):
        for j in range(len(videos)):
            v = (j + r) % len(videos)
            for i, predictor in enumerate(predictors):
                runs[r, v, i] = _time_once(predictor, videos[v])
    return runs.min(0), np.median(runs, 0)


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def print_cost_table(
    params: Dict[str, int],
    flops: Optional[Dict[str, float]],
    num_frames: int,
    header: str,
    streamed: Optional[Dict[str, float]] = None,
    paper_table: Optional[Dict[str, Tuple[float, float]]] = None,
) -> None:
    """Per-clip parameters and GFLOPs per part beside the paper's Table 4 (``paper_table``,
    default PAVE-Net's), with the decoders' rows per streamed frame (``streamed``:
    :func:`count_streamed_flops`) under theirs. Parts the model lacks are left out."""
    paper_table = PAPER_TABLE4 if paper_table is None else paper_table
    lines = [header, f"{'part':<40}{'params (M)':>12}{'GFLOPs':>10}{'paper (M / G)':>18}"]
    for part in PARTS + ("total",):
        if part != "total" and params[part] == 0 and not (flops and flops[part]):
            continue  # a part this model does not have
        paper = paper_table.get(part)
        paper_txt = f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else ""
        gf = f"{flops[part]:.2f}" if flops else "-"
        lines.append(f"{part:<40}{params[part] / 1e6:>12.2f}{gf:>10}{paper_txt:>18}")
        if streamed and part in STREAMED_ROWS:
            lines.append(f"{part + ' per streamed frame':<40}{'-':>12}{streamed[part]:>10.2f}")
    if flops:
        # The encoder ran on all T frames of the clip; streaming pays it once per frame.
        no_cache = flops["total"] - flops["spatial encoder"] * (num_frames - 1) / num_frames
        if streamed:
            lines.append(
                f"per output frame: windowed recomputation {flops['total']:.2f} GFLOPs, "
                f"streaming {streamed['total']:.2f} GFLOPs (encoder "
                f"{streamed['spatial encoder']:.2f}, the T-1 older frames' decoder values "
                f"cached): {flops['total'] / streamed['total']:.2f}x; streaming without the "
                f"value cache {no_cache:.2f} GFLOPs"
            )
        else:
            lines.append(
                f"per output frame: windowed recomputation {flops['total']:.2f} GFLOPs, "
                f"streaming {no_cache:.2f} GFLOPs (encoder "
                f"{flops['spatial encoder'] / num_frames:.2f} per frame): "
                f"{flops['total'] / no_cache:.2f}x"
            )
    print("\n".join(lines))


def plot(
    path: Path,
    persons: Sequence[int],
    streaming: Sequence[float],
    windowed: Sequence[float],
    flops: Optional[Dict[str, float]],
    title: str,
    flops_title: str = "",
    streamed: Optional[Dict[str, float]] = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if persons:
        ax.plot(persons, streaming, "o-", label="PAVE-Net, streaming (cached encoder)")
        ax.plot(persons, windowed, "s--", label="PAVE-Net, windowed recomputation")
        ax.set_xlabel("persons in the frame")
        ax.set_ylabel("ms / frame")
        ax.set_ylim(bottom=0)
        ax.set_xticks(list(persons))
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    ax = axes[1]
    if flops:
        parts = ["spatial encoder", "proposals", "STPD", "STJD"]
        xs = np.arange(len(parts))
        series = [("measured (one clip)", [flops[p] for p in parts])]
        if streamed:
            series.append(("measured (per streamed frame)", [streamed[p] for p in parts]))
        series.append(("paper Table 4", [PAPER_TABLE4.get(p, (0, float("nan")))[1] for p in parts]))
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            ax.bar(xs + (i - (len(series) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(xs)
        ax.set_xticklabels(parts)
        ax.set_ylabel("GFLOPs (multiply-adds, log scale)")
        # The encoder is ~30x the decoders: a log axis keeps the decoders' bars readable.
        ax.set_yscale("log")
        ax.set_title(flops_title, fontsize=9)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def streaming_split(
    predictor: VideoPosePredictor, frames: List[np.ndarray], repeats: int
) -> Tuple[float, float]:
    """Best-of-``repeats`` ms per frame spent in the spatial encoder (``encode_frames``, with
    the new frame's decoder value projections) and in the decoders (``decode``, on the window's
    cached projections) of a streaming pass (the rest is resizing and bookkeeping)."""
    model = predictor.model
    spent = {"encode_frames": 0.0, "decode": 0.0}

    def timed(name):
        original = getattr(model, name)

        def call(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            spent[name] += time.perf_counter() - start
            return out

        return call

    best = {k: float("inf") for k in spent}
    try:
        for name in spent:
            setattr(model, name, timed(name))  # instance attributes shadow the methods
        for _ in range(repeats):
            spent.update({k: 0.0 for k in spent})
            count = sum(1 for _ in predictor(frames))
            best = {k: min(best[k], 1000.0 * spent[k] / count) for k in spent}
    finally:
        for name in spent:
            delattr(model, name)
    return best["encode_frames"], best["decode"]


def measure_latency(
    args: argparse.Namespace, config_file: str, size: Tuple[int, int]
) -> Tuple[List[Tuple[int, float, float, float, float, float]], str]:
    """ms per frame, streaming and windowed, and the streaming split into encoder and decoders,
    for each number of persons; prints the table."""
    cfg = load_cfg(config_file, args.opts, size, args.device)
    model = build_model(cfg).eval()
    if not args.no_fold_bn:
        logger.info("%d convolutions with BatchNorm folded", fold_frozen_batchnorm(model))
    streaming = VideoPosePredictor(cfg, model=model, cache=True)
    windowed = VideoPosePredictor(cfg, model=model, cache=False)
    # Several scenes per person count: a scene's content moves the cost (measured here: +-4%
    # between scenes with the same number of persons, in CPU time as much as in wall time, so
    # not scheduling noise; e.g. the op skips samples that fall outside the image). One scene
    # per row would let that pass for a dependence on the number of persons.
    per = args.scenes
    videos = [
        render_video(n, args.frames, size, seed=1000 * n + j)
        for n in args.persons
        for j in range(per)
    ]
    # One mode at a time: interleaving the windowed passes (larger buffers) between streaming
    # ones made the streaming times jump by scene (+-7% vs +-1.5% measured alone).
    runs = [time_interleaved([p], videos, args.repeats) for p in (streaming, windowed)]
    best_v = np.concatenate([r[0] for r in runs], 1)
    median_v = np.concatenate([r[1] for r in runs], 1)
    best = best_v.reshape(len(args.persons), per, 2).mean(1)
    median = median_v.reshape(len(args.persons), per, 2).mean(1)
    # Scene-to-scene variation of the streaming cost, relative, pooled over the rows.
    by_scene = best_v[:, 0].reshape(len(args.persons), per)
    scene_cv = float(np.mean(by_scene.std(1, ddof=1) / by_scene.mean(1))) if per > 1 else 0.0
    rows = []
    for j, n in enumerate(args.persons):
        enc, dec = streaming_split(streaming, videos[j * per], max(1, args.repeats // 2))
        rows.append((n, float(best[j, 0]), float(best[j, 1]), enc, dec, float(median[j, 0])))
        logger.info(
            "%d persons: streaming %.1f ms/frame (median %.1f), windowed %.1f ms/frame",
            n, best[j, 0], median[j, 0], best[j, 1],
        )  # fmt: skip
    title = (
        f"{Path(config_file).name}, T={streaming.window_size}, {size[0]}x{size[1]}, "
        f"{args.device}, {torch.get_num_threads()} threads"
    )
    # On a shared machine other processes' load inflates wall times: say how busy it was.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    logger.info("System load average (1, 5, 15 min) after the runs: %s", load)
    title += f", load avg {load.split(',')[0]}"
    print(
        f"\nLatency per frame (ms), {title}, best of {args.repeats} interleaved rounds "
        f"(median in brackets), mean of {args.scenes} scenes per row"
    )
    print(
        f"{'persons':>8}{'streaming':>20}{'windowed':>12}{'ratio w/s':>11}"
        f"{'(stream: encoder':>19}{'decoders)':>11}"
    )
    for n, s, w, enc, dec, med in rows:
        stream = f"{s:.1f} ({med:.1f})"
        print(f"{n:>8}{stream:>20}{w:>12.1f}{w / s:>11.2f}{enc:>19.1f}{dec:>11.1f}")
    s_all = [r[1] for r in rows]
    m_all = [r[5] for r in rows]
    if args.scenes > 1:
        print(
            f"scene-to-scene variation with the same persons: {scene_cv:.1%} (so a row's mean of "
            f"{args.scenes} scenes is uncertain by ~{scene_cv / math.sqrt(args.scenes):.1%})"
        )
    print(
        f"spread over persons (max/min - 1): streaming best {max(s_all) / min(s_all) - 1:.1%}, "
        f"median {max(m_all) / min(m_all) - 1:.1%}; paper "
        f"Table 2: PAVE-Net {PAPER_TABLE2_MS['PAVE-Net']:.0f} ms flat, DCPose "
        f"{PAPER_TABLE2_MS['DCPose'][0]}->{PAPER_TABLE2_MS['DCPose'][-1]} ms for 1->20 persons"
    )
    return rows, title


# ------------------------------------------------------------------------------------------
# Systems side by side: the two-stage peer and the end-to-end models
# ------------------------------------------------------------------------------------------
class System(NamedTuple):
    """One timed pipeline.

    Attributes:
        name: its label in the table and the plot.
        run: runs it over a scene, returns the number of output frames.
    """

    name: str
    run: Callable[[Scene], int]


def predictor_system(name: str, predictor: VideoPosePredictor) -> System:
    """An end-to-end model through ``VideoPosePredictor`` (it reads the frames only)."""
    return System(name, lambda scene: sum(1 for _ in predictor(scene.frames)))


def peer_system(name: str, peer: Any) -> System:
    """The two-stage peer, its pose stage fed the scene's person boxes."""
    return System(name, lambda scene: sum(1 for _ in peer(scene.frames, scene.boxes)))


def _load_two_stage_peer():
    """tools/two_stage_peer.py as a module (tools/ is no package; this file may be imported
    from elsewhere, e.g. by the tests)."""
    import importlib.util

    path = Path(__file__).resolve().with_name("two_stage_peer.py")
    spec = importlib.util.spec_from_file_location("two_stage_peer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_systems(
    systems: Sequence[System], scenes: Sequence[Scene], repeats: int, cuda: bool = False
) -> Tuple[np.ndarray, np.ndarray]:
    """ms per output frame of every system on every scene, ``repeats`` rounds interleaved.

    In each round every (scene, system) pair runs once, the scenes and the systems each
    starting at a different one from round to round, so a change of machine load spreads over
    all systems and person counts instead of landing on one. First one untimed pass of every
    pair on the scene's first frame (same tensor shapes as the timed passes: the window repeats
    the edge frame), so no system is timed while its allocator or kernels warm up.

    Returns:
        (wall, cpu), each (repeats, len(scenes), len(systems)) ms per frame: wall-clock time,
        and the process's CPU time (all its threads). On a CPU oversubscribed by other
        processes the wall time also counts the time spent waiting for a core; CPU time does
        not (with one thread it is what the wall time would be on an idle core). With CUDA
        only the wall time means anything.
    """
    for scene in scenes:
        first = Scene(scene.frames[:1], scene.boxes[:1])
        for system in systems:
            system.run(first)
    wall = np.zeros((repeats, len(scenes), len(systems)))
    cpu = np.zeros_like(wall)
    for r in range(repeats):
        for j in range(len(scenes)):
            v = (j + r) % len(scenes)
            for k in range(len(systems)):
                i = (k + r) % len(systems)
                if cuda:
                    torch.cuda.synchronize()
                start, start_cpu = time.perf_counter(), time.process_time()
                count = systems[i].run(scenes[v])
                if cuda:
                    torch.cuda.synchronize()
                wall[r, v, i] = 1000.0 * (time.perf_counter() - start) / count
                cpu[r, v, i] = 1000.0 * (time.process_time() - start_cpu) / count
        logger.info("round %d/%d done", r + 1, repeats)
    return wall, cpu


def default_vepe_config(pave_config: str) -> Optional[str]:
    """VEPE's config beside a PAVE-Net config: the same name with "vepe" for "pave"
    (configs/quick/pave_synthetic.yaml -> configs/quick/vepe_synthetic.yaml,
    configs/pave_r50.yaml -> configs/vepe_r50.yaml); None where the name has no "pave"."""
    path = Path(pave_config)
    if "pave" not in path.name:
        return None
    return str(path.with_name(path.name.replace("pave", "vepe")))


def end_to_end_configs(args: argparse.Namespace, pave_config: str) -> List[Tuple[str, str]]:
    """(name, config file) of the end-to-end systems to time: PAVE-Net, VEPE where its config
    exists (a message where not), and ``--compare-config-files``."""
    systems = [("PAVE-Net (streaming)", pave_config)]
    vepe = args.vepe_config_file if args.vepe_config_file else default_vepe_config(pave_config)
    if vepe and Path(vepe).is_file():
        systems.append(("VEPE (streaming)", vepe))
    elif args.vepe_config_file != "none":
        print(f"VEPE skipped: its config {vepe or '(none beside ' + pave_config + ')'} does not "
              "exist (give one with --vepe-config-file)")  # fmt: skip
    for path in args.compare_config_files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--compare-config-files: {path} does not exist")
        systems.append((f"{Path(path).stem} (streaming)", path))
    return systems


def measure_systems(
    args: argparse.Namespace, pave_config: str, size: Tuple[int, int]
) -> Tuple[List[str], List[Dict[str, Any]], str]:
    """Latency per frame against persons of the two-stage peer and the end-to-end models,
    interleaved on the same scenes; prints the table with the ratios to the peer.

    Returns:
        (system names, rows, title): per number of persons a row with each system's median
        and best ms per frame (mean over ``--compare-scenes`` scenes).
    """
    systems: List[System] = []
    window_offsets: Optional[List[int]] = None
    for name, config_file in end_to_end_configs(args, pave_config):
        cfg = load_cfg(config_file, args.opts, size, args.device)
        model = build_model(cfg).eval()
        if args.fold_bn_compare:
            unfolded = VideoPosePredictor(cfg, model=copy.deepcopy(model), cache=True)
        folded = fold_frozen_batchnorm(model) if not args.no_fold_bn else 0
        logger.info("%s: %s, %d convolutions with BatchNorm folded", name, config_file, folded)
        predictor = VideoPosePredictor(cfg, model=model, cache=True)
        systems.append(predictor_system(name, predictor))
        if args.fold_bn_compare:
            systems.append(predictor_system(name.replace(")", ", BN unfolded)"), unfolded))
        if window_offsets is None:
            window_offsets = [o for o in predictor.offsets if o != 0]
    if not args.no_peer:
        peer_mod = _load_two_stage_peer()
        peer = peer_mod.TwoStagePeer(
            size,
            device=args.device,
            offsets=window_offsets or [],
            depth=args.peer_depth,
            crop_size=args.peer_crop,
            fold_bn=not args.no_fold_bn,
        )
        crop = f"{args.peer_crop[0]}x{args.peer_crop[1]}"
        systems.insert(0, peer_system(f"two-stage (R{args.peer_depth} det + {crop} crops)", peer))
    names = [s.name for s in systems]
    per = args.compare_scenes
    scenes = [
        render_scene(n, args.compare_frames, size, seed=1000 * n + j)
        for n in args.persons
        for j in range(per)
    ]
    start = time.perf_counter()
    cuda = args.device.startswith("cuda")
    wall, cpu = time_systems(systems, scenes, args.compare_repeats, cuda)
    logger.info("Systems timing took %.0f s", time.perf_counter() - start)
    shape = (len(args.persons), per, len(systems))
    rows: List[Dict[str, Any]] = [{"persons": n} for n in args.persons]
    for prefix, runs in (("", wall), ("cpu_", None if cuda else cpu)):
        if runs is None:
            continue
        median = np.median(runs, 0).reshape(shape).mean(1)
        best = runs.min(0).reshape(shape).mean(1)
        for j, row in enumerate(rows):
            row[prefix + "median_ms"] = dict(zip(names, map(float, median[j])))
            row[prefix + "best_ms"] = dict(zip(names, map(float, best[j])))
    t = 1 + len(window_offsets or [])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    title = (
        f"{Path(pave_config).name}, T={t}, {size[0]}x{size[1]}, {args.device}, "
        f"{torch.get_num_threads()} threads, load avg {load.split(',')[0]}"
    )
    for prefix, what in (("", "wall-clock"), ("cpu_", "process CPU time")):
        if prefix + "median_ms" in rows[0]:
            print_systems_table(
                names, rows, title, args.compare_repeats, per, args.compare_frames, prefix, what
            )
    return names, rows, title


def print_systems_table(
    names: Sequence[str],
    rows: Sequence[Dict[str, Any]],
    title: str,
    repeats: int,
    scenes: int,
    frames: int,
    prefix: str = "",
    what: str = "wall-clock",
) -> None:
    """One line per system: its median (best) ms per frame for each number of persons and its
    growth from the fewest persons to the most; then each end-to-end system's ratio to the
    first system (the peer) per number of persons. ``prefix``: "" for the wall-clock times of
    the rows, "cpu_" for their CPU times."""
    print(
        f"\nLatency per frame (ms, {what}) against persons, {title}: median of {repeats} "
        f"interleaved rounds (best in brackets), mean of {scenes} scene(s) of {frames} frames"
    )
    peer = names[0]
    ratio_labels = [f"ratio {peer.split(' (')[0]} / {name}" for name in names[1:]]
    label = max(len(n) for n in list(names) + ratio_labels) + 2
    cell = 20
    persons = [r["persons"] for r in rows]
    growth_head = f"x({persons[-1]}/{persons[0]})"
    print(f"{'persons':<{label}}" + "".join(f"{n:>{cell}}" for n in persons) + f"{growth_head:>12}")
    for name in names:
        med = [r[prefix + "median_ms"][name] for r in rows]
        best = [r[prefix + "best_ms"][name] for r in rows]
        cells = "".join(f"{f'{m:.1f} ({b:.1f})':>{cell}}" for m, b in zip(med, best))
        print(f"{name:<{label}}{cells}{med[-1] / med[0]:>12.2f}")
    for name, text in zip(names[1:], ratio_labels):
        ratio = [r[prefix + "median_ms"][peer] / r[prefix + "median_ms"][name] for r in rows]
        print(f"{text:<{label}}" + "".join(f"{x:>{cell}.2f}" for x in ratio))
    print(
        f"paper Table 2 (HRNet-W48, GPU): DCPose {PAPER_TABLE2_MS['DCPose'][0]} -> "
        f"{PAPER_TABLE2_MS['DCPose'][-1]} ms for 1 -> 20 persons "
        f"(x{PAPER_TABLE2_MS['DCPose'][-1] / PAPER_TABLE2_MS['DCPose'][0]:.2f}), PAVE-Net "
        f"{PAPER_TABLE2_MS['PAVE-Net']:.0f} ms flat"
    )


def plot_systems(
    path: Path, names: Sequence[str], rows: Sequence[Dict[str, Any]], title: str
) -> None:
    """Latency against persons, one line per system (medians): wall-clock, and beside it the
    CPU time where the rows have it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    persons = [r["persons"] for r in rows]
    panels = [(p, w) for p, w in (("", "wall-clock"), ("cpu_", "process CPU time"))
              if p + "median_ms" in rows[0]]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (prefix, what) in zip(axes[0], panels):
        for name, marker in zip(names, "osd^vx*+"):
            ax.plot(
                persons, [r[prefix + "median_ms"][name] for r in rows], marker + "-", label=name
            )
        ax.set_xlabel("persons in the frame")
        values = [v for r in rows for v in r[prefix + "median_ms"].values()]
        if max(values) > 20 * min(values):
            # Systems 100x apart: on a linear axis the cheaper ones' lines would lie on zero.
            ax.set_yscale("log")
            ax.set_ylabel(f"ms / frame ({what}, median, log scale)")
        else:
            ax.set_ylim(bottom=0)
            ax.set_ylabel(f"ms / frame ({what}, median)")
        ax.set_xticks(persons)
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def get_parser() -> argparse.ArgumentParser:
    cpu = not torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-file",
        default="configs/pave_r50.yaml",
        help="model whose parameters and FLOPs are counted",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(800, 1333),
        help="input HxW (or N for NxN) for the FLOP count",
    )
    parser.add_argument(
        "--latency-config-file",
        default="configs/quick/pave_synthetic.yaml" if cpu else None,
        help="model timed for latency (default: --config-file with CUDA, the "
        "quick CPU config without)",
    )
    parser.add_argument(
        "--latency-size",
        type=parse_size,
        default=(256, 256) if cpu else None,
        help="input HxW for the latency runs (default: --size with CUDA, 256 " "without)",
    )
    parser.add_argument("--persons", type=int, nargs="+", default=[1, 3, 5, 10, 20])
    parser.add_argument(
        "--frames",
        type=int,
        default=6,
        help="frames per timed video (results per frame are averaged)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved timing rounds (best and median reported)",
    )
    parser.add_argument(
        "--scenes",
        type=int,
        default=8,
        help="different scenes per number of persons (their per-scene results are averaged)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default). One thread gives the steadiest CPU "
        "timings on a small shared machine",
    )
    parser.add_argument(
        "--no-windowed",
        action="store_true",
        help="skip PAVE-Net's streaming vs windowed latency runs (the systems comparison stays)",
    )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the systems comparison (two-stage peer, PAVE-Net, VEPE against persons)",
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="leave the two-stage peer out of the comparison"
    )
    parser.add_argument(
        "--peer-depth",
        type=int,
        default=50,
        help="ResNet depth of the peer's detector and pose network (50: Faster R-CNN R50-FPN + "
        "SimpleBaseline R50)",
    )
    parser.add_argument(
        "--peer-crop",
        type=parse_size,
        default=(256, 192),
        help="HxW of the peer's per-person crops (multiples of 32)",
    )
    parser.add_argument(
        "--vepe-config-file",
        default="",
        help="VEPE's config for the comparison (default: the latency config's name with 'vepe' "
        "for 'pave', skipped with a message where absent; 'none': leave VEPE out)",
    )
    parser.add_argument(
        "--compare-config-files",
        nargs="*",
        default=[],
        help="more end-to-end models (configs) to time, streaming, in the comparison",
    )
    parser.add_argument(
        "--compare-frames", type=int, default=3, help="frames per scene in the comparison"
    )
    parser.add_argument(
        "--compare-scenes",
        type=int,
        default=2,
        help="scenes per number of persons in the comparison (averaged)",
    )
    parser.add_argument(
        "--compare-repeats",
        type=int,
        default=3,
        help="interleaved rounds of the comparison (median and best reported)",
    )
    parser.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="time the models without folding their frozen BatchNorms into the convolutions",
    )
    parser.add_argument(
        "--fold-bn-compare",
        action="store_true",
        help="also time each end-to-end model unfolded, side by side, in the comparison",
    )
    parser.add_argument("--device", default="cuda" if not cpu else "cpu")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    parser.add_argument(
        "--output", default="output/benchmark", help="folder for benchmark.png and benchmark.json"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides for both models, KEY VALUE pairs",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = get_parser().parse_args(argv)
    setup_logger(name="vpose_d2")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    latency_config = args.latency_config_file or args.config_file
    latency_size = args.latency_size or args.size
    results: Dict[str, Any] = {"device": args.device, "threads": torch.get_num_threads()}
    torch.manual_seed(0)

    # 1. Parameters and FLOPs of one clip at --size.
    cfg = load_cfg(args.config_file, args.opts, args.size, args.device)
    model = build_model(cfg).eval()
    window = VideoPosePredictor(cfg, model=model)
    num_frames = window.window_size
    params = count_params(model)
    flops = streamed = None
    if not args.no_flops:
        height, width = args.size
        frame = render_video(5, 1, args.size)[0]
        image = torch.as_tensor(np.ascontiguousarray(frame.transpose(2, 0, 1)))
        clip = {
            "image": image[None].repeat(num_frames, 1, 1, 1),
            "key_index": window.key_index,
            "height": height,
            "width": width,
        }
        start = time.perf_counter()
        with torch.no_grad():
            flops = count_flops(model, clip)
            streamed = count_streamed_flops(model, clip)
        logger.info("FLOP count took %.1f s", time.perf_counter() - start)
    print_cost_table(
        params,
        flops,
        num_frames,
        f"\n{args.config_file}: T={num_frames}, one clip at " f"{args.size[0]}x{args.size[1]}",
        streamed,
        # Table 4 is PAVE-Net's; VEPE's paper gives no per-part costs.
        {} if type(model).__name__ == "VEPE" else None,
    )
    results["cost"] = {
        "config": args.config_file,
        "size": args.size,
        "T": num_frames,
        "params": params,
        "gflops": flops,
        "gflops_per_streamed_frame": streamed,
    }
    del model

    # 2 + 3. Latency against persons, streaming and windowed, side by side.
    rows: List[Tuple[int, float, float, float, float, float]] = []
    title = ""
    if not args.no_latency and not args.no_windowed:
        rows, title = measure_latency(args, latency_config, latency_size)
        results["latency"] = {
            "config": latency_config, "size": latency_size, "title": title,
            "rows": [
                {"persons": n, "streaming_ms": s, "windowed_ms": w, "streaming_encoder_ms": e,
                 "streaming_decoders_ms": d, "streaming_median_ms": m}
                for n, s, w, e, d, m in rows
            ],
        }  # fmt: skip

    # 4. The two-stage peer and the end-to-end models against persons, interleaved.
    out = Path(args.output)
    if not args.no_latency and not args.no_compare:
        names, system_rows, system_title = measure_systems(args, latency_config, latency_size)
        results["systems"] = {
            "config": latency_config, "size": latency_size, "title": system_title,
            "systems": names, "rows": system_rows,
        }  # fmt: skip
        plot_systems(out / "latency_vs_persons.png", names, system_rows, system_title)
        print(f"Wrote {out / 'latency_vs_persons.png'}")

    plot(
        out / "benchmark.png",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        flops,
        title,
        f"{Path(args.config_file).name}, T={num_frames}, one clip at {args.size[0]}x{args.size[1]}",
        streamed,
    )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "benchmark.json", "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nWrote {out / 'benchmark.png'} and {out / 'benchmark.json'}")
    return results


if __name__ == "__main__":
    main()
