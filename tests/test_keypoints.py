"""Keypoint layouts and the 17 <-> 15 conversions."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import numpy as np
import pytest
import torch

from vpose_d2.data.keypoints import (
    COCO,
    POSETRACK,
    coco17_to_posetrack15,
    flip_indices,
    layout_metadata,
    official17_to_posetrack15,
    posetrack15_to_official17,
)

OFFICIAL17 = [
    "nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip


def test_layout_sizes_and_sigmas():
    assert POSETRACK.num_keypoints == 15 and COCO.num_keypoints == 17
    assert list(POSETRACK.names) == [n for n in OFFICIAL17 if "ear" not in n]
    # the releases' sigmas x 1/10; head_bottom/top reuse the shoulder value
    np.testing.assert_allclose(POSETRACK.oks_sigmas[:5], [0.026, 0.079, 0.079, 0.079, 0.079])
    np.testing.assert_allclose(POSETRACK.oks_sigmas[-1], 0.089)
    np.testing.assert_allclose(COCO.oks_sigmas[:5], [0.026, 0.025, 0.025, 0.035, 0.035])
    for layout in (POSETRACK, COCO):
        names = set(layout.names)
        for a, b, colour in layout.connection_rules:
            assert a in names and b in names and len(colour) == 3


def test_official17_to_15_and_back_roundtrip():
    k17 = np.arange(2 * 17 * 3, dtype=np.float32).reshape(2, 17, 3)
    k15 = official17_to_posetrack15(k17)
    assert k15.shape == (2, 15, 3)
    np.testing.assert_array_equal(k15[:, 3], k17[:, 5])  # left_shoulder
    back = posetrack15_to_official17(k15)
    assert back.shape == (2, 17, 3) and back.dtype == np.float32
    np.testing.assert_array_equal(back[:, 3:5], 0)  # ears (0, 0, 0)
    np.testing.assert_array_equal(official17_to_posetrack15(back), k15)
    t = torch.as_tensor(k17)
    assert torch.equal(posetrack15_to_official17(official17_to_posetrack15(t))[:, 5:], t[:, 5:])
    with pytest.raises(ValueError, match=r"\(\.\.\., 17, 3\)"):
        official17_to_posetrack15(np.zeros((15, 3)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 15, 3\)"):
        posetrack15_to_official17(np.zeros((17, 3)))


def test_coco_to_posetrack_uses_eyes_for_head():
    k = np.zeros((17, 3))
    k[:, 0] = np.arange(17)
    out = coco17_to_posetrack15(k)
    assert out.shape == (15, 3)
    # left_eye -> head_bottom, right_eye -> head_top, ears dropped
    assert out[1, 0] == COCO.names.index("left_eye") and out[2, 0] == COCO.names.index("right_eye")
    assert out[3, 0] == COCO.names.index("left_shoulder")


def test_layout_metadata_and_flip_indices():
    for layout in (POSETRACK, COCO):
        meta = layout_metadata(layout)
        assert set(meta) == {
            "keypoint_names",
            "keypoint_flip_map",
            "keypoint_connection_rules",
            "keypoint_oks_sigmas",
        }
        assert len(meta["keypoint_oks_sigmas"]) == len(meta["keypoint_names"])
        idx = flip_indices(meta["keypoint_names"], meta["keypoint_flip_map"])
        np.testing.assert_array_equal(idx[idx], np.arange(layout.num_keypoints))
        for i, j in enumerate(idx):
            a, b = layout.names[i], layout.names[j]
            if a.startswith("left_"):
                assert b == "right_" + a[5:]
            elif not a.startswith("right_"):
                assert a == b
    with pytest.raises(ValueError, match="not in"):
        flip_indices(["a", "b"], [("a", "c")])
