#!/usr/bin/env python
"""Does a trained video model use its neighbouring frames? Evaluate it twice on a test set.

1. as trained: every clip with its real neighbours;
2. "still": every neighbour replaced by a copy of the key frame, so the clip holds no motion
   and no view of what the key frame hides.

The PoseTrack mAP of both is printed (official protocol, through the config's evaluator). If
the model uses temporal information, (2) is lower. Same weights, same inputs otherwise.

Example::

    python tools/still_neighbours.py --config-file configs/quick/pave_synthetic.yaml \\
        MODEL.WEIGHTS output/quick/pave_synthetic/model_final.pth
"""

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

import torch

import vpose_d2  # noqa: F401  isort: skip  (registers the models; compat before Detectron2)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.logger import setup_logger

from vpose_d2.config import get_vpose_cfg
from vpose_d2.engine import merge_config_file, merge_config_opts
from vpose_d2.engine.trainer import VPoseTrainer


class StillClips(torch.nn.Module):
    """Wraps a model: each input clip's frames all become copies of its key frame."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs: List[Dict]):
        still = []
        for d in batched_inputs:
            image, key = d["image"], d["key_index"]
            if image.dim() == 4:  # (T, 3, H, W); a single image has no neighbours to replace
                d = dict(d, image=image[key : key + 1].expand_as(image).clone())
            still.append(d)
        return self.model(still)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", default="", help="folder for predictions and results.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE")
    args = parser.parse_args(argv)
    setup_logger(name="vpose_d2")
    cfg = get_vpose_cfg()
    merge_config_file(cfg, args.config_file)
    merge_config_opts(cfg, args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("Name the trained weights: MODEL.WEIGHTS path/to/model_final.pth")
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "still_neighbours")
    model = VPoseTrainer.build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    results = {}
    for dataset in cfg.DATASETS.TEST:
        for tag, m in (("neighbours", model), ("still", StillClips(model))):
            loader = VPoseTrainer.build_test_loader(cfg, dataset)
            evaluator = VPoseTrainer.build_evaluator(
                cfg, dataset, output_folder=os.path.join(output, dataset, tag)
            )
            with torch.no_grad():
                res = inference_on_dataset(m, loader, evaluator)
            results[f"{dataset}/{tag}"] = res["posetrack"]["mAP"]
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    for name, value in results.items():
        print(f"{name:<48} PoseTrack mAP {value:6.2f}")
    return results


if __name__ == "__main__":
    main()
