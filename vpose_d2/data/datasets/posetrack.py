"""PoseTrack 2017 / 2018 / 21 loaders: one record per video (docs/INTERNALS.md).

Supported annotation inputs (detected per file, by content):

* **2018 / 21 per-video files** (official): ``{"images", "annotations", "categories"}`` with 17
  COCO-ordered slots whose ears are (0, 0, 0). A folder of them is what ``gt_dir`` points to.
* **COCO-style merged file** (one json, several videos, e.g. ``test_posetrack18_val.json``):
  same keys, frames grouped into videos by the folder of ``file_name``.
* **2017 files** (``{"annolist": [...]}``, ``annorect`` / ``annopoints``, 15 joints with
  poseval ids, frames numbered from 1 with 8 digits), one per video or a folder of them.

Records always hold the 15 PoseTrack joints (:data:`~vpose_d2.data.keypoints.POSETRACK`).

``gt_dir`` (metadata, read by the evaluator) is a folder of official **2018-format** per-video
files. For a folder of 2018/21 files it is that folder. For a merged file or 2017 files the
loader writes 2018-format per-video files (the ones the evaluator needs, one per video, frames in
the same order as the records) under ``$VPOSE_CACHE`` (default ``~/.cache/vpose_d2``)
``/posetrack_gt/<name>-<hash of the annotation path>/`` when the dataset is first loaded
(``DatasetCatalog.get``); :func:`ensure_gt_dir` does the same on demand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..keypoints import OFFICIAL17_NAMES as _OFFICIAL17_NAMES
from ..keypoints import POSETRACK, POSETRACK17_JOINT_IDS, layout_metadata, official17_to_posetrack15

__all__ = [
    "register_posetrack",
    "load_posetrack",
    "load_posetrack18_video",
    "load_posetrack_merged",
    "load_posetrack17",
    "ensure_gt_dir",
    "VPOSE_DATASET_NAMES",
    "register_all_posetrack",
    "PosetrackFormatError",
    "check_finite",
]

logger = logging.getLogger(__name__)

# Every name registered through this package, so that errors can list them.
VPOSE_DATASET_NAMES: List[str] = []

# PoseTrack 2017 / poseval joint ids -> index in the 15-joint POSETRACK layout.
_PT17_ID_TO_NAME = POSETRACK17_JOINT_IDS
_PT17_ID_TO_INDEX = {i: POSETRACK.names.index(n) for i, n in _PT17_ID_TO_NAME.items()}

OFFICIAL17_NAMES = list(_OFFICIAL17_NAMES)
OFFICIAL_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
    [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip


def official_categories() -> List[Dict[str, Any]]:
    """The ``categories`` entry of an official PoseTrack 2018 file."""
    return [
        {
            "supercategory": "person",
            "id": 1,
            "name": "person",
            "keypoints": list(OFFICIAL17_NAMES),
            "skeleton": [list(p) for p in OFFICIAL_SKELETON],
        }
    ]


class PosetrackFormatError(ValueError):
    """An annotation file that does not follow the format it claims (names file and frame)."""


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"PoseTrack annotation file not found: {path}")
    text = path.read_text()
    if not text.strip():
        raise PosetrackFormatError(f"{path}: the annotation file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PosetrackFormatError(f"{path}: not valid json ({e})") from e


def _image_size(file_name: str) -> Tuple[int, int]:
    """(height, width) from the image header (official files do not store it); (0, 0) when the
    frame is missing, which the mapper reports with the file's name when it is needed."""
    try:
        with Image.open(file_name) as im:
            w, h = im.size
        return int(h), int(w)
    except (OSError, ValueError):
        return 0, 0


def _bbox_from_keypoints(kpts: np.ndarray) -> List[float]:
    vis = kpts[:, 2] > 0
    if not vis.any():
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = kpts[vis, :2].min(0)
    x1, y1 = kpts[vis, :2].max(0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _polygons(xs: Optional[Sequence], ys: Optional[Sequence], where: str) -> List[List[Tuple]]:
    xs = xs or []
    ys = ys or []
    if len(xs) != len(ys):
        raise PosetrackFormatError(
            f"{where}: {len(xs)} ignore_regions_x polygons but {len(ys)} ignore_regions_y"
        )
    out = []
    for px, py in zip(xs, ys):
        if len(px) != len(py):
            raise PosetrackFormatError(f"{where}: ignore region with {len(px)} x, {len(py)} y")
        out.append([(float(x), float(y)) for x, y in zip(px, py)])
    return out


def _check_track_ids(persons: List[Dict[str, Any]], where: str) -> None:
    seen = set()
    for p in persons:
        tid = p["track_id"]
        if tid in seen:
            raise PosetrackFormatError(f"{where}: duplicate track_id {tid} in one frame")
        seen.add(tid)


def check_finite(values: Any, what: str, where: str) -> None:
    """Raise naming ``where`` and ``what`` unless every value is a finite number.

    json reads ``NaN`` and ``Infinity``; a non-finite ground-truth value would make the OKS
    of its person NaN, which pycocotools counts as a match at every threshold.
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PosetrackFormatError(f"{where}: {what} holds a value that is not a number") from e
    if not np.isfinite(arr).all():
        bad = arr.reshape(-1)[~np.isfinite(arr.reshape(-1))]
        raise PosetrackFormatError(
            f"{where}: {what} holds {bad.size} non-finite value(s) ({bad[0]}); every value must "
            f"be a finite number"
        )


def _person_from_2018(ann: Dict[str, Any], where: str, version: str = "2018") -> Dict[str, Any]:
    kp = ann.get("keypoints")
    who = f"person (track_id {ann.get('track_id')})"
    for key in ("bbox", "bbox_head", "area"):
        if ann.get(key):
            check_finite(ann[key], f"{who} {key}", where)
    if kp is None or len(kp) == 0:
        # PoseTrack21 lists box-only persons; keep them with no annotated joint.
        kpts = np.zeros((POSETRACK.num_keypoints, 3), dtype=np.float64)
    else:
        check_finite(kp, f"{who} keypoints", where)
        arr = np.asarray(kp, dtype=np.float64)
        if arr.size == 17 * 3:
            kpts = official17_to_posetrack15(arr.reshape(17, 3))
        elif arr.size == 15 * 3:
            kpts = arr.reshape(15, 3)
        else:
            raise PosetrackFormatError(
                f"{where}: person (track_id {ann.get('track_id')}) has {arr.size} keypoint "
                f"values; expected 51 (17 x 3, official) or 45 (15 x 3)"
            )
        kpts = kpts.copy()
        # PoseTrack21's protocol: a joint exists iff x > 0 and y > 0 (its flags are not used).
        exists = (kpts[:, 0] > 0) & (kpts[:, 1] > 0) if version == "21" else kpts[:, 2] > 0
        kpts[:, 2] = exists.astype(np.float64)
        kpts[kpts[:, 2] == 0, :2] = 0.0
    if "track_id" not in ann:
        raise PosetrackFormatError(f"{where}: person without track_id")
    bbox = ann.get("bbox")
    if not bbox or len(bbox) != 4:
        bbox = _bbox_from_keypoints(kpts)
    head = ann.get("bbox_head")
    head = [float(v) for v in head] if head and len(head) == 4 else None
    bbox = [float(v) for v in bbox]
    return {
        "keypoints": kpts.reshape(-1).tolist(),
        "track_id": int(ann["track_id"]),
        "bbox": bbox,
        "bbox_head": head,
        # PoseTrack has no segmentation area; the box area is the OKS scale.
        "area": float(ann.get("area", bbox[2] * bbox[3])),
    }


def _video_from_2018_images(
    video_id: str,
    images: List[Dict[str, Any]],
    anns_by_image: Dict[Any, List[Dict[str, Any]]],
    image_root: Path,
    src: Path,
    gt_file: Optional[Path],
    version: str = "2018",
) -> Dict[str, Any]:
    # Frames keep the file's order: the evaluator pairs ground-truth and predicted frames by
    # position in the official file, and the official files list them in time order.
    frames = []
    for idx, im in enumerate(images):
        where = f"{src} (video {video_id}, frame {idx}, image {im.get('file_name')})"
        persons = [_person_from_2018(a, where, version) for a in anns_by_image.get(im["id"], [])]
        _check_track_ids(persons, where)
        labeled = bool(im.get("is_labeled", len(persons) > 0))
        frames.append(
            {
                "file_name": str(image_root / im["file_name"]),
                "image_id": int(im["id"]),
                "frame_id": int(im.get("frame_id", im["id"])),
                "frame_index": idx,
                "is_labeled": labeled,
                "persons": persons,
                "ignore_regions": _polygons(
                    im.get("ignore_regions_x"), im.get("ignore_regions_y"), where
                ),
            }
        )
    h, w = int(images[0].get("height", 0)), int(images[0].get("width", 0))
    if not (h and w):
        h, w = _image_size(frames[0]["file_name"])
    rec = {"video_id": video_id, "height": h, "width": w, "frames": frames}
    if gt_file is not None:
        rec["gt_file"] = str(gt_file)
    return rec


def _index_annotations(data: Dict[str, Any], src: Path) -> Dict[Any, List[Dict[str, Any]]]:
    image_ids = {im["id"] for im in data["images"]}
    by_image: Dict[Any, List[Dict[str, Any]]] = {}
    for a in data.get("annotations") or []:
        if a.get("image_id") not in image_ids:
            raise PosetrackFormatError(
                f"{src}: annotation {a.get('id')} refers to image_id {a.get('image_id')} "
                f"that the file does not list"
            )
        by_image.setdefault(a["image_id"], []).append(a)
    return by_image


def _check_2018(data: Any, src: Path) -> None:
    if not isinstance(data, dict) or "images" not in data:
        raise PosetrackFormatError(f"{src}: not a PoseTrack 2018/21 file (no 'images' key)")
    if not data["images"]:
        raise PosetrackFormatError(f"{src}: the annotation file lists no images")
    for i, im in enumerate(data["images"]):
        for key in ("file_name", "id"):
            if key not in im:
                raise PosetrackFormatError(f"{src}: image #{i} has no '{key}'")


# ------------------------------------------------------------------------------------------
# loaders
# ------------------------------------------------------------------------------------------
def load_posetrack18_video(
    json_file: Union[str, Path],
    image_root: Union[str, Path],
    version: str = "2018",
    data: Optional[Dict[str, Any]] = None,
) -> Dict:
    """Load one official PoseTrack 2018/21 per-video json file.

    Args:
        json_file: the per-video file (``annotations/val/000342_mpii_test.json``).
        image_root: folder the ``file_name`` entries are relative to (the dataset root).
        version: "2018" or "21" (21: a joint exists iff x > 0 and y > 0).
        data: the file's parsed content, if already read.

    Returns:
        one video record (docs/INTERNALS.md); ``video_id`` is the file stem.
    """
    src = Path(json_file)
    data = _read_json(src) if data is None else data
    _check_2018(data, src)
    by_image = _index_annotations(data, src)
    return _video_from_2018_images(
        src.stem, data["images"], by_image, Path(image_root), src, src, version
    )


def load_posetrack_merged(
    json_file: Union[str, Path],
    image_root: Union[str, Path],
    version: str = "2018",
    data: Optional[Dict[str, Any]] = None,
) -> List[Dict]:
    """Load a COCO-style merged PoseTrack file (several videos in one json).

    Frames are grouped into videos by the folder of their ``file_name``
    (``images/val/012834_mpii_test/000000.jpg`` -> ``012834_mpii_test``), in order of first
    appearance. Records carry no ``gt_file``.
    """
    src = Path(json_file)
    data = _read_json(src) if data is None else data
    _check_2018(data, src)
    groups: "OrderedDict[str, List[Dict[str, Any]]]" = OrderedDict()
    for im in data["images"]:
        groups.setdefault(Path(im["file_name"]).parent.name, []).append(im)
    by_image = _index_annotations(data, src)
    return [
        _video_from_2018_images(
            vid,
            sorted(ims, key=lambda im: (im.get("frame_id", im["id"]), im["id"])),
            by_image,
            Path(image_root),
            src,
            None,
            version,
        )
        for vid, ims in groups.items()
    ]


def _first(v: Any, default: Any = None) -> Any:
    """2017 files wrap scalars in one-element lists (``"x": [394]``)."""
    if isinstance(v, list):
        return v[0] if v else default
    return default if v is None else v


def load_posetrack17(
    json_file: Union[str, Path],
    image_root: Union[str, Path],
    data: Optional[Dict[str, Any]] = None,
) -> Dict:
    """Load one PoseTrack 2017 per-video json file (``annolist`` layout).

    Joint ids follow poseval (0 right_ankle ... 12 head_bottom, 13 nose, 14 head_top); head
    boxes are ``x1, y1, x2, y2``; frames are numbered from 1 with 8 digits, so ``frame_index``
    is the position in ``annolist`` (0-based). Image ids are synthesised as
    ``video_number * 10000 + frame_index`` (2017 files have none).
    """
    src = Path(json_file)
    data = _read_json(src) if data is None else data
    if not isinstance(data, dict) or "annolist" not in data:
        raise PosetrackFormatError(f"{src}: not a PoseTrack 2017 file (no 'annolist' key)")
    annolist = data["annolist"]
    if not annolist:
        raise PosetrackFormatError(f"{src}: the annotation file lists no frames")
    digits = "".join(c for c in src.stem.split("_")[0] if c.isdigit())
    vid_num = int(digits) if digits else int(hashlib.md5(src.stem.encode()).hexdigest()[:6], 16)
    frames = []
    for idx, entry in enumerate(annolist):
        try:
            name = entry["image"][0]["name"]
        except (KeyError, IndexError, TypeError) as e:
            raise PosetrackFormatError(f"{src}: frame {idx} has no image name") from e
        where = f"{src} (frame {idx}, image {name})"
        persons = []
        for r in entry.get("annorect") or []:
            kpts = np.zeros((POSETRACK.num_keypoints, 3), dtype=np.float64)
            tid = _first(r.get("track_id"))
            if tid is None:
                raise PosetrackFormatError(f"{where}: person without track_id")
            ap = r.get("annopoints") or []
            points = ap[0].get("point", []) if ap and isinstance(ap[0], dict) else []
            for pt in points:
                jid = int(_first(pt.get("id"), -1))
                if jid not in _PT17_ID_TO_INDEX:
                    raise PosetrackFormatError(f"{where}: joint id {jid} is not in 0..14")
                xy = (_first(pt["x"]), _first(pt["y"]))
                check_finite(xy, f"person (track_id {tid}) joint {jid}", where)
                kpts[_PT17_ID_TO_INDEX[jid]] = (float(xy[0]), float(xy[1]), 1)
            head = None
            if all(k in r for k in ("x1", "y1", "x2", "y2")):
                corners = [_first(r[k]) for k in ("x1", "y1", "x2", "y2")]
                check_finite(corners, f"person (track_id {tid}) head box", where)
                x1, y1, x2, y2 = (float(v) for v in corners)
                head = [x1, y1, x2 - x1, y2 - y1]
            bbox = _bbox_from_keypoints(kpts)
            persons.append(
                {
                    "keypoints": kpts.reshape(-1).tolist(),
                    "track_id": int(tid),
                    "bbox": bbox,
                    "bbox_head": head,
                    "area": float(bbox[2] * bbox[3]),
                }
            )
        _check_track_ids(persons, where)
        labeled = _first(entry.get("is_labeled"))
        labeled = (
            bool(labeled)
            if labeled is not None
            else any(np.any(np.asarray(p["keypoints"])[2::3] > 0) for p in persons)
        )
        regions = []
        for ir in entry.get("ignore_regions") or []:
            pts = ir.get("point", [])
            regions.append([(float(_first(p["x"])), float(_first(p["y"]))) for p in pts])
        frames.append(
            {
                "file_name": str(Path(image_root) / name),
                "image_id": vid_num * 10000 + idx,
                "frame_id": vid_num * 10000 + idx,
                "frame_index": idx,
                "is_labeled": labeled,
                "persons": persons,
                "ignore_regions": regions,
            }
        )
    h, w = _image_size(frames[0]["file_name"])
    return {"video_id": src.stem, "height": h, "width": w, "gt_file": str(src), "frames": frames}


def _format_of(data: Any) -> str:
    if isinstance(data, dict) and "annolist" in data:
        return "2017"
    return "2018"


def load_posetrack(
    annotations: Union[str, Path], image_root: Union[str, Path], version: str = "2018"
) -> List[Dict]:
    """Load PoseTrack annotations into video records.

    Args:
        annotations: a folder of per-video json files (2018/21 or 2017 format), a single
            per-video file, or a COCO-style merged file.
        image_root: folder the image names in the files are relative to.
        version: "2017", "2018" or "21" (only used in messages; the format is detected).

    Returns:
        list of video records sorted by ``video_id`` (folders) or in file order (merged).
    """
    ann = Path(annotations)
    if ann.is_dir():
        files = sorted(ann.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"PoseTrack{version}: no *.json files in {ann}")
        records = []
        for f in files:
            data = _read_json(f)
            if _format_of(data) == "2017":
                records.append(load_posetrack17(f, image_root, data))
            else:
                records.append(load_posetrack18_video(f, image_root, version, data))
        return records
    if not ann.exists():
        raise FileNotFoundError(
            f"PoseTrack{version} annotations not found: looked for {ann} "
            f"(a folder of per-video json files or one merged json)"
        )
    data = _read_json(ann)
    if _format_of(data) == "2017":
        return [load_posetrack17(ann, image_root, data)]
    _check_2018(data, ann)
    vids = {Path(im["file_name"]).parent.name for im in data["images"]}
    if len(vids) == 1 and ann.stem in vids:
        return [load_posetrack18_video(ann, image_root, version, data)]
    return load_posetrack_merged(ann, image_root, version, data)


# ------------------------------------------------------------------------------------------
# gt_dir
# ------------------------------------------------------------------------------------------
def _cache_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("VPOSE_CACHE", "~/.cache/vpose_d2")))


def _default_gt_dir(name: str, annotations: Path, version: str) -> Path:
    if version != "2017" and annotations.suffix != ".json":
        return annotations
    digest = hashlib.md5(str(annotations.resolve()).encode()).hexdigest()[:8]
    return _cache_root() / "posetrack_gt" / f"{name}-{digest}"


def _record_to_official(rec: Dict[str, Any], image_root: Path) -> Dict[str, Any]:
    """A video record as an official 2018-format per-video file (17 slots, ears zero)."""
    images, anns = [], []
    n = len(rec["frames"])
    for fr in rec["frames"]:
        regions = fr.get("ignore_regions") or []
        images.append(
            {
                "is_labeled": bool(fr["is_labeled"]),
                "file_name": os.path.relpath(fr["file_name"], image_root),
                "nframes": n,
                "frame_id": int(fr["frame_id"]),
                "vid_id": rec["video_id"],
                "id": int(fr["image_id"]),
                "ignore_regions_x": [[float(p[0]) for p in poly] for poly in regions],
                "ignore_regions_y": [[float(p[1]) for p in poly] for poly in regions],
                "width": int(rec.get("width", 0)),
                "height": int(rec.get("height", 0)),
            }
        )
        for j, p in enumerate(fr["persons"]):
            k15 = np.asarray(p["keypoints"], dtype=np.float64).reshape(-1, 3)
            k17 = np.zeros((17, 3))
            k17[[0, 1, 2] + list(range(5, 17))] = k15
            anns.append(
                {
                    "bbox_head": p["bbox_head"] or [],
                    "keypoints": k17.reshape(-1).tolist(),
                    "track_id": int(p["track_id"]),
                    "image_id": int(fr["image_id"]),
                    "bbox": list(p["bbox"]),
                    "scores": [],
                    "category_id": 1,
                    "id": int(fr["image_id"]) * 100 + j,
                    "iscrowd": False,
                    "num_keypoints": int((k15[:, 2] > 0).sum()),
                }
            )
    return {"categories": official_categories(), "images": images, "annotations": anns}


def _write_gt_dir(records: Iterable[Dict[str, Any]], gt_dir: Path, image_root: Path) -> None:
    gt_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        out = gt_dir / f"{rec['video_id']}.json"
        tmp = out.with_suffix(f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(_record_to_official(rec, image_root)))
        os.replace(tmp, out)  # atomic, so a concurrent reader never sees half a file


def ensure_gt_dir(dataset_name: str) -> Path:
    """Make sure the ``gt_dir`` of a registered PoseTrack dataset exists and return it.

    For converted sets (2017, merged) this loads the dataset, which writes the files.
    """
    meta = MetadataCatalog.get(dataset_name)
    gt_dir = Path(meta.gt_dir)
    if not gt_dir.is_dir() or not any(gt_dir.glob("*.json")):
        DatasetCatalog.get(dataset_name)
    return gt_dir


# ------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------
def register_posetrack(
    name: str,
    annotations: Union[str, Path],
    image_root: Union[str, Path],
    version: str = "2018",
    gt_dir: Optional[Union[str, Path]] = None,
) -> None:
    """Register a PoseTrack dataset (lazily: nothing is read until ``DatasetCatalog.get``).

    Args:
        name: the dataset name.
        annotations: folder of per-video json files (2018/21 or 2017) or a merged json file.
        image_root: folder the files' image names are relative to.
        version: "2017", "2018" or "21".
        gt_dir: folder of official 2018-format per-video files for the evaluator. Default:
            ``annotations`` for a 2018/21 folder, else a cache folder filled on first load.
    """
    version = str(version)
    if version not in ("2017", "2018", "21"):
        raise ValueError(f"register_posetrack({name!r}): version must be 2017, 2018 or 21")
    annotations = Path(annotations)
    image_root = Path(image_root)
    gt = Path(gt_dir) if gt_dir is not None else _default_gt_dir(name, annotations, version)
    convert = gt != annotations

    def _load() -> List[Dict[str, Any]]:
        if not annotations.exists():
            what = "merged json file" if annotations.suffix == ".json" else "folder of json files"
            raise FileNotFoundError(
                f"dataset {name!r}: missing annotations: looked for the {what} "
                f"{annotations.resolve()} (set $VPOSE_DATASETS, or register it with "
                f"vpose_d2.data.datasets.register_posetrack)"
            )
        records = load_posetrack(annotations, image_root, version)
        if convert:
            _write_gt_dir(records, gt, image_root)
        logger.info("Loaded %d videos from %s for %s", len(records), annotations, name)
        return records

    DatasetCatalog.register(name, _load)
    MetadataCatalog.get(name).set(
        evaluator_type="posetrack",
        gt_dir=str(gt),
        posetrack_version=version,
        image_root=str(image_root),
        annotations=str(annotations),
        **layout_metadata(POSETRACK),
    )
    if name not in VPOSE_DATASET_NAMES:
        VPOSE_DATASET_NAMES.append(name)


def _datasets_root() -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.environ.get("VPOSE_DATASETS", "datasets"))))


# name -> (version, annotations relative to $VPOSE_DATASETS, image root relative to it)
_PREDEFINED = {
    # PoseTrack2017 as used by PoseWarper/DCPose: 2017-format per-video json files.
    "posetrack17_train": ("2017", "posetrack17/annotations/train", "posetrack17"),
    "posetrack17_val": ("2017", "posetrack17/annotations/val", "posetrack17"),
    "posetrack18_train": ("2018", "posetrack18/annotations/train", "posetrack18"),
    "posetrack18_val": ("2018", "posetrack18/annotations/val", "posetrack18"),
    "posetrack21_train": ("21", "posetrack21/posetrack_data/train", "posetrack21"),
    "posetrack21_val": ("21", "posetrack21/posetrack_data/val", "posetrack21"),
}


def register_all_posetrack(root: Optional[Union[str, Path]] = None) -> None:
    """Register the predefined PoseTrack names under ``root`` (default ``$VPOSE_DATASETS``,
    else ``./datasets``), without touching the disk."""
    root = Path(root) if root is not None else _datasets_root()
    for name, (version, ann, img) in _PREDEFINED.items():
        if name in DatasetCatalog.list():
            continue
        register_posetrack(name, root / ann, root / img, version)
