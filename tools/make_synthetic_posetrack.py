#!/usr/bin/env python
"""Write the synthetic PoseTrack-2018-format video set (see vpose_d2/data/datasets/synthetic.py).

Example (the default set that ``synthetic_posetrack_{train,val}`` point at)::

    python tools/make_synthetic_posetrack.py --root datasets/synthetic_posetrack
"""

import argparse
import logging
import time
from dataclasses import fields

from vpose_d2.data.datasets.synthetic import (
    DEFAULT_SYNTHETIC_ROOT,
    SyntheticPosetrackConfig,
    make_synthetic_posetrack,
)

_HELP = {
    "seed": "random seed; the same seed and arguments write identical bytes",
    "num_train_videos": "number of training videos (every frame labeled)",
    "num_val_videos": "number of validation videos (every VAL_LABEL_EVERY-th frame labeled)",
    "frames_per_video": "frames per video (<= 9999)",
    "size": "frame width and height in pixels",
    "min_persons": "fewest annotated people per video",
    "max_persons": "most annotated people per video (20+ for crowded scenes)",
    "min_person_height": "smallest person height (head top to ankles) in pixels",
    "max_person_height": "largest person height in pixels (capped at 0.9 * size)",
    "occluder_prob": "probability that a video has 1-2 occluders sweeping across in front",
    "blur_prob": "per-frame probability of motion blur or defocus",
    "blur_strength": "scale of the blur: 1 gives streaks of 9-17%% of the frame and defocus "
    "sigma 1.6-3.1%%; 0.4 is about the milder blur of earlier versions",
    "ignore_region_prob": "probability that a video has a crowd of small unannotated people "
    "inside an ignore region",
    "clutter": "number of background shapes (boxes, discs, limb-like strokes)",
    "val_label_every": "label every N-th validation frame, from frame 0 (PoseTrack: 4)",
    "jpeg_quality": "JPEG quality of the frames (0-100)",
    "write_videos": "also write the val videos as videos/VIDEO.mp4 (demo input)",
    "num_workers": "processes rendering videos in parallel (output does not depend on it)",
}


def get_parser() -> argparse.ArgumentParser:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    parser.add_argument(
        "--root",
        default=DEFAULT_SYNTHETIC_ROOT,
        help="output folder (annotations/{train,val}/*.json, images/{train,val}/VIDEO/*.jpg); "
        "a folder made earlier by this tool is replaced, any other non-empty one is refused",
    )
    for f in fields(SyntheticPosetrackConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", help=_HELP[f.name])
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=_HELP[f.name])
    return parser


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = vars(get_parser().parse_args())
    root = args.pop("root")
    t0 = time.perf_counter()
    out = make_synthetic_posetrack(root, **args)
    logging.info("synthetic PoseTrack set written to %s in %.1f s", out, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
