"""Helpers around the models that no training or evaluation path needs: video input and output,
drawing."""

from .video_io import IMAGE_EXTENSIONS, FrameSource, InputError, VideoSink
from .visualizer import draw_poses, person_color

__all__ = [
    "FrameSource",
    "IMAGE_EXTENSIONS",
    "InputError",
    "VideoSink",
    "draw_poses",
    "person_color",
]
