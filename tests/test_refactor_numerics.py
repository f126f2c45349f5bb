"""Checkpoints of earlier versions keep loading and keep their numbers.

For the quick PETR and PAVE-Net configs, ``tests/fixtures/refactor_numerics.json`` holds, as
recorded by the code at commit 8d73613 (before the model code was reshaped into one base and
sibling models):

- every state-dict key with its shape and the mean / std of its initial values (the weights
  themselves would be ~50 MB; :func:`recorded_state_dict` rebuilds them from a seed per key,
  with those statistics, so the old code and the new code load the very same tensors);
- on one fixed clip with ground truth, the eval outputs (top scores and keypoints) and the
  training losses of the model holding those weights.

The test builds today's model from the same config, loads that state dict strictly and compares
outputs and losses at 1e-5. To record (only ever at the old commit)::

    git worktree add /tmp/old 8d73613 && cp tests/test_refactor_numerics.py /tmp/old/tests/
    cd /tmp/old && python tests/test_refactor_numerics.py --record OUT.json

It uses only the public interface (``build_model``, ``model(inputs)``, ``load_state_dict``),
which is the same in both versions.
"""

import argparse
import json
import zlib
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

import vpose_d2  # noqa: F401  isort: skip  (compat shims before Detectron2's structures)
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from vpose_d2.config import get_vpose_cfg
from vpose_d2.engine import merge_config_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "refactor_numerics.json"
CONFIGS = {"petr": "configs/quick/petr_synthetic.yaml", "pave": "configs/quick/pave_synthetic.yaml"}
K = 15
H, W = 96, 128


def quick_cfg(name: str):
    cfg = get_vpose_cfg()
    merge_config_file(cfg, str(ROOT / CONFIGS[name]))
    cfg.MODEL.VPOSE.NUM_KEYPOINTS = K
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def recorded_state_dict(spec: Dict[str, Dict]) -> Dict[str, torch.Tensor]:
    """Deterministic weights with the recorded keys, shapes and per-tensor statistics."""
    state = {}
    for key, s in spec.items():
        dtype = getattr(torch, s["dtype"])
        if not dtype.is_floating_point:
            state[key] = torch.full(s["shape"], int(s["mean"]), dtype=dtype)
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        noise = torch.randn(s["shape"], generator=g, dtype=torch.float64)
        state[key] = (s["mean"] + s["std"] * noise).to(dtype)
    return state


def fixed_clip(t: int) -> Dict:
    """A T-frame clip of noise with two persons on every frame (pixels and keypoints seeded)."""
    rng = np.random.default_rng(0)
    image = torch.as_tensor(rng.integers(0, 256, (t, 3, H, W), dtype=np.uint8))
    instances = []
    for f in range(t):
        kpts = np.zeros((2, K, 3), np.float32)
        kpts[..., 0] = rng.uniform(10, W - 10, (2, K))
        kpts[..., 1] = rng.uniform(10, H - 10, (2, K))
        kpts[..., 2] = (rng.uniform(size=(2, K)) > 0.2) * 2
        inst = Instances((H, W))
        inst.gt_keypoints = torch.as_tensor(kpts)
        xy = torch.as_tensor(kpts[..., :2])
        inst.gt_boxes = Boxes(torch.cat([xy.amin(1), xy.amax(1)], -1))
        inst.gt_track_ids = torch.tensor([1, 2])
        instances.append(inst)
    return {
        "image": image,
        "key_index": t // 2,
        "instances": instances,
        "height": H,
        "width": W,
        "video_id": "fixed",
    }


def outputs_of(model: torch.nn.Module, clip: Dict) -> Dict[str, List]:
    model.eval()
    with torch.no_grad():
        inst = model([clip])[0]["instances"]
    top = inst.scores.argsort(descending=True)[:10]
    torch.manual_seed(0)
    model.train()
    losses = model([clip])
    return {
        "scores": inst.scores[top].tolist(),
        "keypoints": inst.pred_keypoints[top].flatten().tolist(),
        "losses": {k: float(v.detach()) for k, v in sorted(losses.items())},
    }


def record(path: Path) -> None:
    out = {}
    for name in CONFIGS:
        cfg = quick_cfg(name)
        torch.manual_seed(0)
        model = build_model(cfg)
        spec = {
            k: {
                "shape": list(v.shape),
                "dtype": str(v.dtype).replace("torch.", ""),
                "mean": float(v.double().mean()) if v.numel() else 0.0,
                "std": float(v.double().std()) if v.numel() > 1 else 0.0,
            }
            for k, v in model.state_dict().items()
        }
        model.load_state_dict(recorded_state_dict(spec), strict=True)
        t = 1 + len(cfg.INPUT.CLIP.OFFSETS) if name == "pave" else 1
        out[name] = {"state_dict": spec, "outputs": outputs_of(model, fixed_clip(t))}
    path.write_text(json.dumps(out))


@pytest.fixture(scope="module")
def recorded() -> Dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_old_checkpoint_loads_and_gives_the_same_numbers(recorded, name):
    cfg = quick_cfg(name)
    model = build_model(cfg)
    spec = recorded[name]["state_dict"]
    assert sorted(model.state_dict()) == sorted(spec), "state-dict keys changed"
    for key, value in model.state_dict().items():
        assert list(value.shape) == spec[key]["shape"], key
    model.load_state_dict(recorded_state_dict(spec), strict=True)
    t = 1 + len(cfg.INPUT.CLIP.OFFSETS) if name == "pave" else 1
    got = outputs_of(model, fixed_clip(t))
    want = recorded[name]["outputs"]
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["keypoints"], want["keypoints"], rtol=1e-5, atol=1e-4)
    assert sorted(got["losses"]) == sorted(want["losses"])
    for key in want["losses"]:
        np.testing.assert_allclose(got["losses"][key], want["losses"][key], rtol=1e-5, err_msg=key)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, required=True, help="where to write the JSON")
    record(parser.parse_args().record)
