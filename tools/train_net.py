#!/usr/bin/env python
"""Train or evaluate a vpose_d2 model (the PETR-style image model or PAVE-Net).

Examples::

    # a quick CPU run on the synthetic set
    python tools/train_net.py --config-file configs/quick/petr_synthetic.yaml
    # 8 GPUs; without CUDA, --num-gpus N runs N CPU processes (gloo)
    python tools/train_net.py --config-file configs/pave_r50.yaml --num-gpus 8
    # resume the last checkpoint in OUTPUT_DIR
    python tools/train_net.py --config-file configs/pave_r50.yaml --resume
    # evaluate weights
    python tools/train_net.py --config-file configs/pave_r50.yaml --eval-only \\
        MODEL.WEIGHTS output/model_final.pth
"""

from argparse import Namespace

# vpose_d2 first: its compat module must run before Detectron2 imports its missing ops.
import vpose_d2  # noqa: F401  isort: skip

from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from vpose_d2.engine import StrictShapeCheckpointer, VPoseTrainer, launch, setup


def main(args: Namespace):
    cfg = setup(args)
    if args.eval_only:
        model = VPoseTrainer.build_model(cfg)
        StrictShapeCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            strict_shapes=cfg.MODEL.WEIGHTS_STRICT_SHAPES,
            check_layout=cfg.MODEL.WEIGHTS_CHECK_LAYOUT,
            cfg=cfg,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = VPoseTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = VPoseTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
