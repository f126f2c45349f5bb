"""Run a pose model over a video, a folder of frames or a webcam.

Writes, under ``--output``, the video with every person's pose drawn (``NAME.mp4``, or
``NAME.avi`` with MJPG where this OpenCV build has no mp4v encoder) and the predictions as a
PoseTrack 2018 file (``NAME.json``, written by ``vpose_d2.evaluation.writer``). A person's
``track_id`` is the person's track over the video (``VideoPosePredictor``'s tracker,
``MODEL.TRACKER``: VEPE's instance embeddings, else OKS between poses); with
``MODEL.TRACKER.NAME none`` it is the person's rank in its frame, which is not a track.
Drawing is ``vpose_d2.utils.visualizer.draw_poses``: one colour per track id (or rank).

Example::

    python demo/video_demo.py --config-file configs/quick/pave_synthetic.yaml \\
        --input datasets/synthetic_posetrack/images/val/000000 --output output/demo \\
        --opts MODEL.WEIGHTS output/main_job/pave_synthetic/model_final.pth
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import tqdm

import vpose_d2  # noqa: F401  isort: skip  (registers everything; compat first)
from detectron2.config import CfgNode, get_cfg
from detectron2.utils.logger import setup_logger

from vpose_d2.config import add_vpose_config
from vpose_d2.engine import VideoPosePredictor, merge_config_file, merge_config_opts
from vpose_d2.evaluation.writer import instances_to_persons, video_images, write_posetrack_video
from vpose_d2.utils.video_io import FrameSource, InputError, VideoSink
from vpose_d2.utils.visualizer import RENDERERS, draw_poses

logger = logging.getLogger("vpose_d2.demo")


def check_output_dir(path: str) -> Path:
    """Create the output folder and make sure files can be written in it, before any model is
    built or frame read, so a bad ``--output`` fails at once and says why."""
    output = Path(path)
    existing = next((p for p in (output, *output.parents) if p.exists()), None)
    if existing == output and not output.is_dir():
        raise InputError(f"Output folder '{output}' is a file, not a folder")
    if existing is not None and not existing.is_dir():
        raise InputError(f"Cannot make the output folder '{output}': '{existing}' is a file")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):  # the one sure test: write a file there
            pass
    except OSError as e:
        raise InputError(f"Cannot write into the output folder '{output}': {e.strerror or e}")
    return output


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
    parser.add_argument(
        "--output",
        required=True,
        help="folder for NAME.mp4 (drawn poses, a colour per track) and NAME.json (PoseTrack "
        "predictions with the tracker's track_id; see MODEL.TRACKER)",
    )
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
        choices=RENDERERS,
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
        help="stop after this many frames (0: all; needed to end --webcam without Ctrl-C)",
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
    output_dir = check_output_dir(args.output)
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
    sink = VideoSink(output_dir, source.name, source.fps)
    persons: Dict[int, List[Dict[str, Any]]] = {}  # frame index -> what the json lists
    start = time.perf_counter()
    progress = tqdm.tqdm(total=source.num_frames, desc=source.name, unit="frame")
    try:
        for result in predictor(source):
            drawn = draw_poses(
                result.frame,
                result.instances,
                metadata,
                confidence_threshold=args.confidence_threshold,
                keypoint_threshold=args.keypoint_threshold,
                renderer=args.renderer,
            )
            sink.write(drawn)
            persons[result.index] = instances_to_persons(
                result.instances, metadata.keypoint_names, args.confidence_threshold
            )
            progress.update(1)
    except KeyboardInterrupt:  # how a --webcam run ends: keep what was done
        logger.info("Interrupted after %d frames; writing them.", len(persons))
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

    images = video_images(source.name, source.file_names[: len(persons)])
    json_path = write_posetrack_video(output_dir / f"{source.name}.json", images, persons)
    logger.info(
        "%d frames in %.1f s (%.1f ms/frame incl. drawing): %s, %s",
        len(persons),
        elapsed,
        1000 * elapsed / max(1, len(persons)),
        sink.path,
        json_path,
    )
    return {"video": sink.path, "json": json_path, "num_frames": len(persons), "seconds": elapsed}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = get_parser().parse_args(argv)
    setup_logger(name="vpose_d2")
    return run(args)


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        raise SystemExit(f"video_demo: error: {e}")
