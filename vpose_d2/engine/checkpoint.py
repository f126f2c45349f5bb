"""Checkpoints that cannot be half-written, ``--resume`` that survives a kill, and a record of
the clip layout the weights assume.

:class:`StrictShapeCheckpointer` is Detectron2's ``DetectionCheckpointer`` with:

- **strict shapes**: a tensor whose shape differs from the model's raises (Detectron2 skips it
  with a warning, leaving e.g. a whole head at its random init);
- **a layout record**: every checkpoint it saves holds ``vpose_layout`` (meta-architecture,
  the clip's frame offsets, key position, frame count T, joint count K). Loading weights
  trained with another layout raises naming the config key (``INPUT.CLIP.OFFSETS``,
  ``MODEL.META_ARCHITECTURE``, ``MODEL.VPOSE.NUM_KEYPOINTS``): offsets ``[-1, 1]`` and
  ``[-2, -1]`` give tensors of the same shapes, so only the record tells them apart. Older
  checkpoints without it load with one warning; ``MODEL.WEIGHTS_CHECK_LAYOUT False`` loads
  mismatched ones anyway;
- **atomic writes**: a checkpoint (and ``last_checkpoint``) is written to a hidden temporary
  file in the same folder, flushed and fsynced, then renamed over the target, and
  ``last_checkpoint`` is updated only after the rename. A kill at any moment leaves every
  ``.pth`` either complete or absent;
- **clear file errors**: an empty, truncated or unreadable file raises
  :class:`CheckpointFileError` naming it and what is wrong;
- **resume**: ``resume_or_load(..., resume=True)`` tries the file ``last_checkpoint`` names
  (preceded by any later ``model_*.pth`` written after ``last_checkpoint`` itself: a kill
  between a checkpoint's rename and the tag's update), then the output folder's other
  checkpoints newest first (``model_final.pth``, then ``model_NNNNNNN.pth`` by iteration), and
  takes the first that loads, logging each one skipped and why; an empty or stale
  ``last_checkpoint`` is reported and passed over. If checkpoints exist and none loads it
  raises, naming them all.

:class:`MetricsJSONWriter` keeps ``metrics.json`` whole in its own sense: it is an append-only
log of one json object per line (Detectron2's format), each write flushed and fsynced; the
file is created with its first record (so an early kill leaves no empty file), and a torn last
line left by a kill is cut off before new lines are appended, so every line parses. After a
resume, the iterations between the checkpoint and the kill appear twice; the later lines are
the resumed run's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import zipfile
from collections import defaultdict
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter, get_event_storage
from torch import nn

from ..data.clip import clip_offsets

__all__ = [
    "CheckpointFileError",
    "LAYOUT_KEY",
    "MetricsJSONWriter",
    "StrictShapeCheckpointer",
    "atomic_write",
    "model_layout",
]

logger = logging.getLogger(__name__)

LAYOUT_KEY = "vpose_layout"
_PERIODIC = re.compile(r"^model_(\d+|final)\.pth$")
# atomic_write's temporary files of checkpoints and last_checkpoint: .<name>.tmp-<pid>
_TEMP = re.compile(r"^\.(?:.+\.pth|last_checkpoint)\.tmp-(\d+)$")
_WARNED_NO_LAYOUT: set = set()


class CheckpointFileError(OSError):
    """A checkpoint file that cannot be read (empty, truncated, not a checkpoint); the message
    names the file and what is wrong with it."""


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file so that it is never seen half-written: ``write(f)`` fills a hidden
    temporary file beside ``path``, which is flushed, fsynced and renamed over ``path``."""
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    # The rename itself reaches the disk with the folder's entry.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def model_layout(model: nn.Module, cfg=None) -> Dict[str, Any]:
    """What a model's weights assume about their input, as recorded in its checkpoints.

    Args:
        model: the model (unwrapped). Its ``num_frames``, ``key_index``, ``frame_offsets``
            and ``num_keypoints`` are read where it has them (image models: one frame).
        cfg: supplies the frame offsets (``INPUT.CLIP.OFFSETS``) for a multi-frame model that
            does not carry ``frame_offsets`` itself; optional.

    Returns:
        ``{"meta_architecture", "frame_offsets" (the clip's frame order, 0 included, or None
        if unknown), "key_index", "num_frames", "num_keypoints" (or None)}``.
    """
    num_frames = int(getattr(model, "num_frames", 1) or 1)
    key_index = int(getattr(model, "key_index", 0) or 0)
    offsets = getattr(model, "frame_offsets", None)
    if offsets is None:
        if num_frames == 1:
            offsets = [0]
        elif cfg is not None:
            offsets = clip_offsets(cfg.INPUT.CLIP.OFFSETS)[0]  # the clip mapper's order
    k = getattr(model, "num_keypoints", None)
    return {
        "meta_architecture": type(model).__name__,
        "frame_offsets": None if offsets is None else [int(o) for o in offsets],
        "key_index": key_index,
        "num_frames": num_frames,
        "num_keypoints": None if k is None else int(k),
    }


def _offsets_text(layout: Dict[str, Any]) -> str:
    frames = layout.get("frame_offsets")
    if frames is None:
        return f"T={layout.get('num_frames')} frames, key frame at index {layout.get('key_index')}"
    neighbours = [o for o in frames if o != 0]
    return f"{neighbours} (frames {frames}, key frame at index {layout.get('key_index')})"


def keypoint_mismatch(saved: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """The joint counts of two layouts as "<config key>: ...", or None when they agree (or
    one is unknown)."""
    k_saved, k_now = saved.get("num_keypoints"), current["num_keypoints"]
    if k_saved is not None and k_now is not None and k_saved != k_now:
        return (
            f"MODEL.VPOSE.NUM_KEYPOINTS (or the training set's keypoint layout): the checkpoint "
            f"predicts {k_saved} joints, the config's model {k_now}"
        )
    return None


def layout_mismatch(saved: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """The first difference between two layouts, other than the joint count, that changes
    what the weights mean, as "<config key>: ...", or None when they agree."""
    if saved.get("meta_architecture") != current["meta_architecture"]:
        return (
            f"MODEL.META_ARCHITECTURE: the checkpoint was trained as "
            f"{saved.get('meta_architecture')}, the config builds {current['meta_architecture']}"
        )
    f_saved, f_now = saved.get("frame_offsets"), current["frame_offsets"]
    differ = (f_saved != f_now) if (f_saved is not None and f_now is not None) else False
    differ |= (saved.get("num_frames"), saved.get("key_index")) != (
        current["num_frames"],
        current["key_index"],
    )
    if differ:
        return (
            f"INPUT.CLIP.OFFSETS: the checkpoint was trained with {_offsets_text(saved)}, the "
            f"config gives {_offsets_text(current)}"
        )
    return None


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process other than this one (its save may be under way)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _iteration_of(path: str) -> float:
    m = _PERIODIC.match(os.path.basename(path))
    if m is None:
        return -math.inf
    return math.inf if m.group(1) == "final" else float(m.group(1))


class StrictShapeCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with strict shapes, a layout record, atomic writes, file errors
    that name the file and a resume that skips broken checkpoints (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        strict_shapes: bool = True,
        check_layout: bool = True,
        cfg=None,
        **checkpointables,
    ):
        """
        Args:
            model: the model; its layout is read from it (see :func:`model_layout`).
            save_dir: the output folder (checkpoints, ``last_checkpoint``).
            strict_shapes: raise on a tensor whose shape differs from the model's
                (``MODEL.WEIGHTS_STRICT_SHAPES``); else Detectron2 skips it with a warning.
            check_layout: raise when a checkpoint's layout record differs from the model's
                (``MODEL.WEIGHTS_CHECK_LAYOUT``); else warn.
            cfg: the model's config, for the frame offsets of a multi-frame model that does
                not carry ``frame_offsets``; optional.
            checkpointables: as Detectron2's (``trainer=...``).
        """
        super().__init__(model, save_dir, **checkpointables)
        self.strict_shapes = strict_shapes
        self.check_layout = check_layout
        self.layout = model_layout(self.model, cfg)
        self.resumed_from: Optional[str] = None
        self._loading = ""

    # ------------------------------------------------------------------------------------
    # saving
    # ------------------------------------------------------------------------------------
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        data[LAYOUT_KEY] = dict(self.layout)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    # ------------------------------------------------------------------------------------
    # loading
    # ------------------------------------------------------------------------------------
    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint {path} not found")
        self._loading = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            size = os.path.getsize(filename)
        except OSError as e:
            raise CheckpointFileError(f"Checkpoint file {filename} cannot be read: {e}") from e
        if size == 0:
            raise CheckpointFileError(
                f"Checkpoint file {filename} is empty (0 bytes): its save was interrupted or "
                f"the copy is incomplete"
            )
        with open(filename, "rb") as f:
            magic = f.read(4)
        truncated = (
            f"Checkpoint file {filename} ({size} bytes) is truncated or corrupt: its save was "
            f"interrupted or the copy is incomplete"
        )
        # torch.save writes a zip archive, whose directory is at the end: a cut file lacks it.
        if magic == b"PK\x03\x04" and not zipfile.is_zipfile(filename):
            raise CheckpointFileError(truncated + " (the zip archive has no central directory)")
        try:
            loaded = super()._load_file(filename)
        except (EOFError, zipfile.BadZipFile) as e:
            raise CheckpointFileError(f"{truncated} ({type(e).__name__}: {e})") from e
        except (pickle.UnpicklingError, RuntimeError) as e:
            if "truncated" in str(e) or "EOF" in str(e):
                raise CheckpointFileError(f"{truncated} ({e})") from e
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointFileError(
                f"Checkpoint file {filename} ({size} bytes) cannot be read as a checkpoint: "
                f"{first}"
            ) from e
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise CheckpointFileError(
                f"Checkpoint file {filename} does not hold a state dict (found "
                f"{type(loaded.get('model') if isinstance(loaded, dict) else loaded).__name__})"
            )
        return loaded

    def _check_layout(self, checkpoint: Dict[str, Any]) -> None:
        saved = checkpoint.pop(LAYOUT_KEY, None)
        if saved is None:
            # Detectron2 / Caffe2 model-zoo files (ImageNet backbones) never carry one.
            if not checkpoint.get("matching_heuristics") and self._loading not in _WARNED_NO_LAYOUT:
                _WARNED_NO_LAYOUT.add(self._loading)
                logger.warning(
                    "Checkpoint '%s' records no clip layout (saved before vpose_d2 recorded "
                    "it, or by other code): that its weights were trained with this config's "
                    "INPUT.CLIP.OFFSETS, MODEL.META_ARCHITECTURE and keypoints cannot be checked.",
                    self._loading,
                )
            return
        joints = keypoint_mismatch(saved, self.layout)
        if joints is not None and self.strict_shapes:
            # The heads' shapes depend on K, so fine-tuning across joint counts is the shape
            # check's opt-out, not this one's.
            raise ValueError(
                f"Checkpoint '{self._loading}' does not fit the model: {joints}. To fine-tune "
                "from it (e.g. COCO's 17 joints -> PoseTrack's 15), set "
                "MODEL.WEIGHTS_STRICT_SHAPES False: the joint-specific tensors then keep "
                "their initialization."
            )
        problem = layout_mismatch(saved, self.layout)
        if problem is None:
            return
        msg = f"Checkpoint '{self._loading}' does not fit the model: {problem}."
        if self.check_layout:
            raise ValueError(
                f"{msg} Its tensors may have the right shapes, but they mean something else. "
                "Set the config key to the checkpoint's value, or MODEL.WEIGHTS_CHECK_LAYOUT "
                "False to load it anyway (e.g. to initialize from weights of another layout)."
            )
        logger.warning("%s Loading it anyway (MODEL.WEIGHTS_CHECK_LAYOUT is False).", msg)

    def _load_model(self, checkpoint: Dict[str, Any]):
        self._check_layout(checkpoint)
        incompatible = super()._load_model(checkpoint)
        if self.strict_shapes and incompatible.incorrect_shapes:
            key, shape_ckpt, shape_model = incompatible.incorrect_shapes[0]
            raise ValueError(
                f"Checkpoint '{self._loading}' does not fit the model: '{key}' has shape "
                f"{tuple(shape_ckpt)} in the checkpoint but {tuple(shape_model)} in the model "
                f"({len(incompatible.incorrect_shapes)} mismatched tensor(s) in all). "
                "Fix MODEL.WEIGHTS or the model config, or set MODEL.WEIGHTS_STRICT_SHAPES "
                "False to leave mismatched tensors at their initialization."
            )
        return incompatible

    # ------------------------------------------------------------------------------------
    # resume
    # ------------------------------------------------------------------------------------
    def _resume_candidates(self) -> Tuple[List[str], List[str]]:
        """The output folder's checkpoints, newest first, and notes on ``last_checkpoint``."""
        notes: List[str] = []
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return [], notes
        tagged = None
        last = os.path.join(self.save_dir, "last_checkpoint")
        if os.path.exists(last):
            with open(last) as f:
                name = f.read().strip()
            if not name:
                notes.append(
                    f"{last} is empty (its write was interrupted); trying the folder's checkpoints"
                )
            elif not os.path.isfile(os.path.join(self.save_dir, name)):
                notes.append(
                    f"{last} names {name}, which does not exist; trying the folder's checkpoints"
                )
            else:
                tagged = os.path.join(self.save_dir, name)
        files = [
            os.path.join(self.save_dir, n) for n in os.listdir(self.save_dir) if _PERIODIC.match(n)
        ]
        files.sort(key=_iteration_of, reverse=True)
        if tagged is None:
            return files, notes
        # The file last_checkpoint names comes first (a user may point it at the checkpoint
        # to resume from), after any later checkpoint written after last_checkpoint itself:
        # a run killed between renaming a new checkpoint into place and updating the tag.
        tag_time = os.stat(last).st_mtime_ns
        later = [
            p
            for p in files
            if _iteration_of(p) > _iteration_of(tagged) and os.stat(p).st_mtime_ns > tag_time
        ]
        if later:
            notes.append(
                f"{last} names {os.path.basename(tagged)}, but "
                f"{', '.join(os.path.basename(p) for p in later)} was written after it (the run "
                f"stopped before updating it); trying the later one first"
            )
        rest = [p for p in files if p != tagged and p not in later]
        return later + [tagged] + rest, notes

    def _remove_stale_temporaries(self) -> None:
        if not comm.is_main_process() or not os.path.isdir(self.save_dir):
            return
        for name in os.listdir(self.save_dir):
            m = _TEMP.match(name)
            if m is None or _process_alive(int(m.group(1))):
                continue
            logger.info("Removing %s, left by an interrupted save", name)
            try:
                os.remove(os.path.join(self.save_dir, name))
            except OSError:
                pass

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume``, load the newest checkpoint of ``save_dir`` that loads (weights and
        every checkpointable) and set :attr:`resumed_from`; with none there, or without
        ``resume``, load only the model from ``path`` (``MODEL.WEIGHTS``).

        Raises:
            CheckpointFileError: ``resume`` and checkpoints exist, but none of them loads.
        """
        self.resumed_from = None
        if not resume:
            return self.load(path, checkpointables=[])
        self._remove_stale_temporaries()
        candidates, notes = self._resume_candidates()
        for note in notes:
            logger.warning("--resume: %s", note)
        skipped: List[str] = []
        for candidate in candidates:
            try:
                ret = self.load(candidate)
            except CheckpointFileError as e:
                logger.warning("--resume: skipping %s", e)
                skipped.append(str(e))
                continue
            self.resumed_from = candidate
            if skipped or notes:
                logger.warning(
                    "--resume: resumed from %s, the newest checkpoint that loads", candidate
                )
            return ret
        if skipped:
            raise CheckpointFileError(
                f"--resume: no checkpoint in {self.save_dir} loads: " + "; ".join(skipped)
            )
        if notes:
            logger.warning("--resume: no checkpoint in %s; starting afresh", self.save_dir)
        return self.load(path, checkpointables=[])


class MetricsJSONWriter(JSONWriter):
    """Detectron2's JSONWriter (``metrics.json``, one json object per line, flushed and fsynced
    per write) that creates the file with its first record and, when appending to an existing
    file, first cuts a torn last line (a kill during a write), so that every line parses."""

    def __init__(self, json_file: str, window_size: int = 20):
        # JSONWriter.__init__ would open (and so create) the file at once.
        self._json_file = json_file
        self._window_size = window_size
        self._last_write = -1
        self._file_handle = None

    def _open(self):
        if os.path.isfile(self._json_file) and os.path.getsize(self._json_file) > 0:
            with open(self._json_file, "rb+") as f:
                data = f.read()
                if not data.endswith(b"\n"):
                    keep = data.rfind(b"\n") + 1
                    logger.warning(
                        "%s: cutting an incomplete last line (%d bytes) left by an "
                        "interrupted write",
                        self._json_file, len(data) - keep,
                    )  # fmt: skip
                    f.truncate(keep)
        return open(self._json_file, "a")

    def write(self) -> None:
        # Detectron2's JSONWriter.write, opening the file at the first record.
        storage = get_event_storage()
        to_save: Dict[int, Dict[str, Any]] = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                to_save[itr][k] = v
        if not to_save:
            return
        self._last_write = max(to_save)
        if self._file_handle is None:
            self._file_handle = self._open()
        for itr, scalars in to_save.items():
            scalars["iteration"] = itr
            self._file_handle.write(json.dumps(scalars, sort_keys=True) + "\n")
        self._file_handle.flush()
        os.fsync(self._file_handle.fileno())

    def close(self) -> None:
        if self._file_handle is not None:
            self._file_handle.close()
