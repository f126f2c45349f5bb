"""Reading frames from a video file, a folder of images or a webcam, and writing a video.

:class:`FrameSource` gives HxWx3 BGR uint8 frames (what ``VideoPosePredictor`` takes) and the
file name of each; :class:`VideoSink` writes frames as mp4 (mp4v), or avi (MJPG) where this
OpenCV build cannot encode mp4v. Bad input raises :class:`InputError` naming the path and frame.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, List, Optional

import cv2
import numpy as np

__all__ = ["FrameSource", "IMAGE_EXTENSIONS", "InputError", "VideoSink"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class InputError(ValueError):
    """Input that cannot be read, or an output folder that cannot be written; the message names
    the path (and frame) at fault."""


# ------------------------------------------------------------------------------------------
# Input
# ------------------------------------------------------------------------------------------
class FrameSource:
    """Frames of a video file, a folder of images or a webcam, as HxWx3 BGR uint8 arrays.

    Attributes:
        name: stem used for the output files.
        fps: frames per second for the written video.
        file_names: per frame, the name written into the PoseTrack json (filled while read).
    """

    def __init__(
        self,
        *,
        path: Optional[str] = None,
        webcam: bool = False,
        fps: Optional[float] = None,
        max_frames: int = 0,
    ):
        self.path = Path(path) if path else None
        self.webcam = webcam
        self.max_frames = max_frames
        self.file_names: List[str] = []
        self._frame_files: List[Path] = []
        self._capture = None
        if webcam:
            self.name = "webcam"
            self._capture = cv2.VideoCapture(0)
            if not self._capture.isOpened():
                raise InputError("Cannot open the webcam (device 0)")
            self.fps = fps or 25.0
            self.num_frames = max_frames or None
        elif self.path is None:
            raise InputError("Give --input PATH (a video file or a folder of frames) or --webcam")
        elif not self.path.exists():
            raise InputError(f"Input '{self.path}' does not exist")
        elif self.path.is_dir():
            self.name = self.path.name
            self._frame_files = sorted(
                p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not self._frame_files:
                raise InputError(
                    f"Input folder '{self.path}' has no frames (looked for "
                    f"{', '.join(IMAGE_EXTENSIONS)} files)"
                )
            self.fps = fps or 25.0
            self.num_frames = len(self._frame_files)
        else:
            self.name = self.path.stem
            self._capture = cv2.VideoCapture(str(self.path))
            if not self._capture.isOpened():
                raise InputError(
                    f"Cannot open '{self.path}' as a video (not a video file, or "
                    "a format this OpenCV cannot decode)"
                )
            reported_fps = self._capture.get(cv2.CAP_PROP_FPS)
            self.fps = fps or (reported_fps if reported_fps and reported_fps > 0 else 25.0)
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
            self.num_frames = count if count > 0 else None
        if max_frames and self.num_frames:
            self.num_frames = min(self.num_frames, max_frames)

    def describe(self) -> str:
        return "the webcam" if self.webcam else f"'{self.path}'"

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._frame_files:
            yield from self._read_folder()
        else:
            yield from self._read_capture()

    def _read_folder(self) -> Iterator[np.ndarray]:
        first_hw = None
        for index, file in enumerate(self._frame_files):
            if self.max_frames and index >= self.max_frames:
                return
            frame = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if frame is None:
                raise InputError(
                    f"Frame {index} of '{self.path}' ('{file}') cannot be read as "
                    "an image (corrupt or not an image)"
                )
            if first_hw is None:
                first_hw = frame.shape[:2]
            elif frame.shape[:2] != first_hw:
                (h, w), (h0, w0) = frame.shape[:2], first_hw
                raise InputError(
                    f"Frame {index} of '{self.path}' ('{file}') is {w}x{h}, frame 0 "
                    f"('{self._frame_files[0]}') {w0}x{h0}: all frames of a video must have "
                    "one size"
                )
            self.file_names.append(f"images/{self.name}/{file.name}")
            yield frame

    def _read_capture(self) -> Iterator[np.ndarray]:
        what = self.describe()
        index = 0
        try:
            while not (self.max_frames and index >= self.max_frames):
                ok, frame = self._capture.read()
                if not ok:
                    if index == 0:
                        raise InputError(f"Could not decode any frame from {what}")
                    if self.num_frames and index < self.num_frames and not self.webcam:
                        logger.warning(
                            "%s: decoding stopped at frame %d of %d reported "
                            "(truncated or corrupt file).",
                            what,
                            index,
                            self.num_frames,
                        )
                    return
                self.file_names.append(f"images/{self.name}/{index:06d}.jpg")
                yield frame
                index += 1
        finally:
            self._capture.release()


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------
class VideoSink:
    """cv2.VideoWriter opened on the first frame: mp4v/.mp4, else MJPG/.avi."""

    def __init__(self, output_dir: Path, name: str, fps: float):
        self.output_dir, self.name, self.fps = output_dir, name, fps
        self.writer = None
        self.path: Optional[Path] = None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self._open(frame.shape[1], frame.shape[0])
        self.writer.write(frame)

    def _open(self, width: int, height: int) -> None:
        for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
            path = self.output_dir / f"{self.name}{suffix}"
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter_fourcc(*codec), self.fps, (width, height)
            )
            if writer.isOpened():
                self.writer, self.path = writer, path
                return
            writer.release()
            try:  # a failed open may leave an empty file; never let its removal hide the error
                path.unlink(missing_ok=True)
            except OSError as e:
                logger.warning("Cannot remove %s: %s", path, e)
            logger.warning("OpenCV cannot write %s with codec %s; trying the next.", path, codec)
        raise RuntimeError(f"OpenCV can write neither mp4v nor MJPG video into {self.output_dir}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
