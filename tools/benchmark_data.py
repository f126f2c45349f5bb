#!/usr/bin/env python
"""Measure the synthetic generator and the clip mapper on CPU.

Prints the generator's wall time and the mapper's throughput in clips/s (training mapper:
one resize + flip + photometric draw per clip, T frames) at the synthetic set's size::

    python tools/benchmark_data.py --root /tmp/synthetic_bench --clips 300
"""

import argparse
import logging
import tempfile
import time

import vpose_d2  # noqa: F401  isort: skip  (compat first; registers the datasets)
from detectron2.data import DatasetCatalog

from vpose_d2.config import get_vpose_cfg
from vpose_d2.data import ClipDatasetMapper, clip_samples
from vpose_d2.data.datasets import make_synthetic_posetrack, register_synthetic_posetrack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=None, help="where to generate (default: a temp dir)")
    parser.add_argument("--size", type=int, default=256, help="frame size of the synthetic set")
    parser.add_argument("--clips", type=int, default=300, help="clips to map")
    parser.add_argument("--offsets", type=int, nargs="+", default=[-1, 1], help="neighbours")
    parser.add_argument("--photometric", type=float, default=0.2, help="INPUT.CLIP.PHOTOMETRIC")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = args.root or tempfile.mkdtemp(prefix="vpose_synth_")
    t0 = time.perf_counter()
    make_synthetic_posetrack(root, size=args.size)
    gen_s = time.perf_counter() - t0
    register_synthetic_posetrack(root, name_prefix="bench_synthetic")
    videos = DatasetCatalog.get("bench_synthetic_train") + DatasetCatalog.get("bench_synthetic_val")
    n_frames = sum(len(v["frames"]) for v in videos)
    print(f"generator: {gen_s:.2f} s for {len(videos)} videos, {n_frames} frames at {args.size}px")
    samples = clip_samples(DatasetCatalog.get("bench_synthetic_train"))

    cfg = get_vpose_cfg()
    cfg.DATASETS.TRAIN = ("bench_synthetic_train",)
    cfg.INPUT.MIN_SIZE_TRAIN = (args.size,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 2 * args.size
    cfg.INPUT.CLIP.OFFSETS = args.offsets
    cfg.INPUT.CLIP.PHOTOMETRIC = args.photometric
    mapper = ClipDatasetMapper(cfg, True)
    for i in range(10):  # warm-up (imports, allocator)
        mapper(samples[i % len(samples)])
    t0 = time.perf_counter()
    for i in range(args.clips):
        clip = mapper(samples[i % len(samples)])
    dt = time.perf_counter() - t0
    T = clip["image"].shape[0]
    print(f"mapper: {args.clips / dt:.1f} clips/s (T={T}, {tuple(clip['image'].shape[2:])} px)")


if __name__ == "__main__":
    main()
