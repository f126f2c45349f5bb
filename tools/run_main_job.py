#!/usr/bin/env python
"""The main job: data, training, evaluation and the demo of PAVE-Net, in one command.

On a fresh checkout (``make setup`` done) this

1. writes the synthetic PoseTrack set into ``datasets/synthetic_posetrack`` if it is absent
   (``tools/make_synthetic_posetrack.py``);
2. trains ``configs/quick/pave_synthetic.yaml`` (or ``--config-file``) into
   ``output/main_job/pave_synthetic`` (the config's name) with ``tools/train_net.py`` (the
   PoseTrack evaluation of ``synthetic_posetrack_val`` runs after the last iteration), for
   ``--max-iter`` iterations (default 450, sized to about 10 minutes on 2 CPU cores; 0 runs
   the config's own, longer schedule);
3. prints the PoseTrack table of that evaluation (official protocol, re-scored from the
   prediction files the evaluator wrote);
4. runs the demo (``demo/video_demo.py``) on a held-out synthetic val video and on ``--clip``
   (any video file or folder of frames) if given;
5. prints where everything is.

Every step runs the documented user command in a subprocess, so what works here works by hand.
``make demo`` runs it.

Example::

    python tools/run_main_job.py --clip my_video.mp4
"""

import argparse
import ast
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
# Training iterations of the main job: a third of the quick config's 1500, so that the whole job
# fits about 10 minutes on 2 CPU cores (measurements in docs/results.md).
DEFAULT_MAX_ITER = 450
logger = logging.getLogger("vpose_d2.main_job")


def run_step(name: str, command: List[str], log_file: Path) -> float:
    """Run ``command`` from the repository root, streaming its output to the console and to
    ``log_file``; raise with the log's location if it fails. Returns the wall time."""
    logger.info("[%s] %s", name, " ".join(command))
    start = time.perf_counter()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The tools import vpose_d2; an editable install provides it, the checkout path makes it
    # work before `pip install -e .` too.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        returncode = proc.wait()
    elapsed = time.perf_counter() - start
    if returncode != 0:
        raise SystemExit(
            f"[{name}] failed with exit code {returncode} after {elapsed:.0f} s; "
            f"full output in {log_file}"
        )
    logger.info("[%s] done in %.0f s", name, elapsed)
    return elapsed


def schedule_opts(config_file: str, max_iter: int) -> List[str]:
    """SOLVER overrides for a ``max_iter`` schedule with the config's lr steps scaled to it."""
    if not max_iter:
        return []
    from detectron2.config import CfgNode

    solver = CfgNode.load_yaml_with_base(str(REPO / config_file)).get("SOLVER", {})
    old_max = int(solver.get("MAX_ITER", max_iter))
    old_steps = solver.get("STEPS", ())
    if isinstance(old_steps, str):  # YAML has no tuples: "(500,)" is parsed as yacs does
        old_steps = ast.literal_eval(old_steps)
    steps = tuple(max(1, round(s * max_iter / old_max)) for s in old_steps)
    logger.info(
        "[train] schedule: %d iterations, lr steps %s (the config's: %d, %s)",
        max_iter,
        steps,
        old_max,
        tuple(old_steps),
    )
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(steps)]


def synthetic_set_differences(data_root: Path) -> Optional[str]:
    """None if ``data_root`` holds the default synthetic set; else "" (no set there) or the
    parameters that differ from today's defaults, e.g. "num_train_videos 8 != 48"."""
    from vpose_d2.data.datasets.synthetic import SyntheticPosetrackConfig

    marker = data_root / "SYNTHETIC_POSETRACK.json"
    if not marker.is_file():
        return ""
    with open(marker) as f:
        made = json.load(f)
    wanted = SyntheticPosetrackConfig().recorded()
    # A parameter the set does not record was added since it was made: it differs too.
    diffs = [f"{k} {made.get(k, '(absent)')} != {v}" for k, v in wanted.items() if made.get(k) != v]
    return ", ".join(diffs) or None


def held_out_video(data_root: Path) -> Path:
    """The first synthetic val video's frame folder (never seen in training)."""
    val = data_root / "images" / "val"
    videos = sorted(p for p in val.iterdir() if p.is_dir()) if val.is_dir() else []
    if not videos:
        raise SystemExit(
            f"No val video under {val}: the synthetic set is incomplete; delete "
            f"{data_root} and run again"
        )
    return videos[0]


def posetrack_table(
    output_dir: Path, dataset: str, gt_dir: Path, log_dir: Path, track: bool = False
) -> Optional[dict]:
    """Re-score the evaluator's prediction files with the official protocol's command line
    (``python -m vpose_d2.evaluation.posetrack``), which prints the table. ``track``: score
    MOTA on the tracked persons' files (``posetrack_predictions_tracked``) instead of AP."""
    sub = "posetrack_predictions_tracked" if track else "posetrack_predictions"
    pred_dir = output_dir / "inference" / dataset / sub
    if not pred_dir.is_dir():
        logger.warning(
            "No predictions under %s: the evaluation after training did not run", pred_dir
        )
        return None
    name = "posetrack_tracking_table.json" if track else "posetrack_table.json"
    results_file = output_dir / "inference" / dataset / name
    run_step(
        "evaluate tracking" if track else "evaluate",
        [
            sys.executable,
            "-m",
            "vpose_d2.evaluation.posetrack",
            str(gt_dir),
            str(pred_dir),
            "--json",
            str(results_file),
            *(["--track"] if track else []),
        ],
        log_dir / ("evaluate_tracking.log" if track else "evaluate.log"),
    )
    with open(results_file) as f:
        return json.load(f)


def _num(v: Optional[float]) -> str:
    # The --json output writes a NaN MOTA (no scored frame) as null.
    return "n/a" if v is None else f"{v:.1f}"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/quick/pave_synthetic.yaml")
    parser.add_argument(
        "--output-dir",
        default="output/main_job",
        help="training under OUTPUT/CONFIG_NAME (e.g. pave_synthetic), demos under OUTPUT/demo",
    )
    parser.add_argument(
        "--data-root",
        default="datasets/synthetic_posetrack",
        help="the synthetic set (made here if absent)",
    )
    parser.add_argument(
        "--clip",
        action="append",
        default=[],
        help="also run the demo on this video file or frame folder " "(repeatable)",
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        default=DEFAULT_MAX_ITER,
        help="training iterations (SOLVER.MAX_ITER; the lr steps are scaled to match); the "
        "default fits the ~10-minute budget on 2 CPU cores; 0 runs the config's own schedule",
    )
    parser.add_argument(
        "--skip-training", action="store_true", help="reuse OUTPUT/CONFIG_NAME/model_final.pth"
    )
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    py = sys.executable
    out = (REPO / args.output_dir).resolve()
    # One folder per config, so main jobs of different models keep their own weights.
    train_dir = out / Path(args.config_file).stem
    data_root = (REPO / args.data_root).resolve()
    times = {}
    start = time.perf_counter()

    # 1. Data.
    stale = synthetic_set_differences(data_root)
    if stale is None:
        logger.info("[data] using the synthetic set in %s", data_root)
    else:
        if stale:
            # Made by an older checkout with other defaults: the tool replaces its own folder.
            logger.info("[data] %s was made with other parameters (%s): writing it again",
                        data_root, stale)  # fmt: skip
        times["data"] = run_step(
            "data",
            [py, "tools/make_synthetic_posetrack.py", "--root", str(data_root)],
            out / "logs" / "data.log",
        )
    # The registered names resolve DATASETS.SYNTHETIC_ROOT against the working directory.
    root_opts = ["DATASETS.SYNTHETIC_ROOT", str(data_root)]

    # 2. Training, with the evaluation on synthetic_posetrack_val after the last iteration.
    weights = train_dir / "model_final.pth"
    if not args.skip_training:
        opts = [
            "OUTPUT_DIR",
            str(train_dir),
            *root_opts,
            *schedule_opts(args.config_file, args.max_iter),
        ]
        times["train+eval"] = run_step(
            "train",
            [py, "tools/train_net.py", "--config-file", args.config_file, *opts],
            out / "logs" / "train.log",
        )
    if not weights.is_file():
        raise SystemExit(f"No trained weights at {weights}")

    # 3. The table.
    results = posetrack_table(
        train_dir, "synthetic_posetrack_val", data_root / "annotations" / "val", out / "logs"
    )
    tracking = posetrack_table(
        train_dir,
        "synthetic_posetrack_val",
        data_root / "annotations" / "val",
        out / "logs",
        track=True,
    )

    # 4. Demos: a held-out synthetic video, then the user's clips.
    demo_outputs = []
    for clip in [held_out_video(data_root), *[Path(c).resolve() for c in args.clip]]:
        demo_dir = out / "demo"
        name = clip.stem if clip.is_file() else clip.name
        times[f"demo {name}"] = run_step(
            f"demo {name}",
            [
                py,
                "demo/video_demo.py",
                "--config-file",
                args.config_file,
                "--input",
                str(clip),
                "--output",
                str(demo_dir),
                "--confidence-threshold",
                str(args.confidence_threshold),
                "--opts",
                "MODEL.WEIGHTS",
                str(weights),
                *root_opts,
            ],
            out / "logs" / f"demo_{name}.log",
        )
        demo_outputs.append((clip, demo_dir, name))

    # 5. Where things are.
    total = time.perf_counter() - start
    lines = [
        "",
        "=" * 78,
        f"Main job done in {total / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})",
        f"  weights:       {weights}",
        f"  training log:  {train_dir / 'log.txt'} (and {out / 'logs'})",
        f"  evaluation:    {train_dir / 'inference' / 'synthetic_posetrack_val'}",
    ]
    if results is not None:
        mota = "" if tracking is None else f", MOTA {_num(tracking['MOTA'])}"
        lines.append(f"  PoseTrack mAP (synthetic_posetrack_val): {results['Total']:.1f}{mota}")
    for clip, demo_dir, name in demo_outputs:
        videos = [p for p in (demo_dir / f"{name}.mp4", demo_dir / f"{name}.avi") if p.exists()]
        lines.append(f"  demo of {clip}:")
        lines.append(f"      video {videos[0] if videos else '(missing)'}")
        lines.append(f"      json  {demo_dir / (name + '.json')}")
    lines.append("=" * 78)
    print("\n".join(lines))
    with open(out / "main_job.json", "w") as f:
        json.dump(
            {
                "seconds": times,
                "total_seconds": total,
                "mAP": None if results is None else results["Total"],
                "MOTA": None if tracking is None else tracking["MOTA"],
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
