"""Clip samples and data loaders (thin wrappers over Detectron2's loaders)."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch.utils.data as torchdata
from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.samplers import TrainingSampler

from .clip_mapper import ClipDatasetMapper
from .datasets import VPOSE_DATASET_NAMES, register_synthetic_posetrack

__all__ = [
    "clip_samples",
    "ClipSampleDataset",
    "build_clip_train_loader",
    "build_clip_test_loader",
    "get_video_records",
    "register_from_cfg",
]

logger = logging.getLogger(__name__)


def clip_samples(video_records: Sequence[Dict[str, Any]], labeled_only: bool = True) -> List[Dict]:
    """Expand videos into one sample per key frame, in video then frame order.

    Args:
        video_records: video records (docs/INTERNALS.md).
        labeled_only: keep only frames with ``is_labeled``.

    Returns:
        list of ``{"video": <the record, shared, not copied>, "key": frame index}``.
    """
    return [
        {"video": v, "key": i}
        for v in video_records
        for i, f in enumerate(v["frames"])
        if f["is_labeled"] or not labeled_only
    ]


class ClipSampleDataset(torchdata.Dataset):
    """The samples of :func:`clip_samples` as a map-style dataset that stores each video once.

    A plain list would make Detectron2's ``DatasetFromList`` pickle the whole video record once
    per key frame (PoseTrack: ~150 frames per video), hence this index of (video, key) pairs.
    """

    def __init__(self, video_records: Sequence[Dict[str, Any]], labeled_only: bool = True):
        self.videos = list(video_records)
        pairs = [
            (vi, i)
            for vi, v in enumerate(self.videos)
            for i, f in enumerate(v["frames"])
            if f["is_labeled"] or not labeled_only
        ]
        self._index = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        vi, key = self._index[idx]
        return {"video": self.videos[int(vi)], "key": int(key)}


def register_from_cfg(cfg) -> None:
    """Point ``synthetic_posetrack_{train,val}`` at ``cfg.DATASETS.SYNTHETIC_ROOT`` (loading
    them fails naming the folder if no set is there; nothing is generated)."""
    root = cfg.DATASETS.get("SYNTHETIC_ROOT", None)
    if root:
        register_synthetic_posetrack(root)


def check_registered(names: Sequence[str], key: str = "DATASETS") -> None:
    """Raise a KeyError naming the config key and the dataset when a name is not registered."""
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            raise KeyError(
                f"{key}: dataset '{name}' is not registered. Registered datasets: "
                f"{', '.join(sorted(registered))}. (`import vpose_d2` registers the project's "
                f"sets ({', '.join(sorted(VPOSE_DATASET_NAMES))}); the synthetic ones live "
                "under DATASETS.SYNTHETIC_ROOT.)"
            )


def get_video_records(names: Sequence[str], key: str = "DATASETS") -> List[Dict[str, Any]]:
    """Video records of the named datasets, concatenated, with a clear error for unknown names
    (``key``: the config key they came from)."""
    if isinstance(names, str):
        names = [names]
    check_registered(names, key)
    records: List[Dict[str, Any]] = []
    for n in names:
        recs = DatasetCatalog.get(n)
        if not recs:
            raise ValueError(f"dataset {n!r} has no videos")
        if "frames" not in recs[0]:
            raise ValueError(
                f"dataset {n!r} does not hold vpose video records (no 'frames'); register it "
                f"with vpose_d2.data.datasets"
            )
        records.extend(recs)
    return records


def build_clip_train_loader(cfg, mapper: Optional[ClipDatasetMapper] = None):
    """Infinite training loader over every labeled key frame of all ``cfg.DATASETS.TRAIN``.

    Returns:
        Detectron2's train loader yielding lists of ``cfg.SOLVER.IMS_PER_BATCH`` clips.
    """
    register_from_cfg(cfg)
    names = list(cfg.DATASETS.TRAIN)
    dataset = ClipSampleDataset(
        get_video_records(names, "DATASETS.TRAIN"), cfg.INPUT.CLIP.LABELED_ONLY
    )
    if len(dataset) == 0:
        raise ValueError(f"datasets {names} have no labeled frames to train on")
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r}: clip loaders support "
            f"TrainingSampler only"
        )
    if mapper is None:
        mapper = ClipDatasetMapper(cfg, True)
    logger.info("Clip train loader: %d key frames from %s", len(dataset), names)
    return build_detection_train_loader(
        cfg, mapper=mapper, dataset=dataset, sampler=TrainingSampler(len(dataset))
    )


def build_clip_test_loader(cfg, dataset_name: str, mapper: Optional[ClipDatasetMapper] = None):
    """Inference loader: every labeled frame of every video as key frame, in video/frame order.

    Returns:
        Detectron2's test loader yielding lists of one clip.
    """
    register_from_cfg(cfg)
    dataset = ClipSampleDataset(
        get_video_records([dataset_name], "DATASETS.TEST"), labeled_only=True
    )
    if mapper is None:
        mapper = ClipDatasetMapper(cfg, False, dataset_names=[dataset_name])
    return build_detection_test_loader(
        dataset=dataset, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
    )
