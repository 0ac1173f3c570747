"""Episode videos for `distracer evaluate --video`: full-resolution CarRacing frames with the score drawn on.

One mp4 per episode, written with OpenCV's `mp4v` codec (opencv-python-headless, no ffmpeg needed).
A frame is the stock env's `render()` in "rgb_array" mode (600x400); with `side_by_side` the agent's
own input (the newest frame of its stacked observation, upscaled with nearest-neighbour so its pixels
stay visible) sits to the right. Rendering never changes the observations or rewards: the env draws its
84x84 observation and the video frame on separate surfaces (checked in tests/test_evaluate.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from distracer.errors import ConfigError

FOURCC = "mp4v"
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def check_video_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove a file can be written there; else a one-line ConfigError.

    Called before any episode runs, so a bad --video never costs an evaluation.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--video {str(path)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"--video {str(path)!r} cannot be written ({exc.strerror or type(exc).__name__})") from None
    return path


def agent_view(obs: np.ndarray, grayscale: bool, height: int) -> np.ndarray:
    """The newest frame of a channel-first stacked observation as an RGB image `height` pixels square."""
    obs = np.asarray(obs)
    if grayscale:
        frame = np.repeat(obs[-1][:, :, None], 3, axis=2)
    else:  # RGB stacks hold 3 channels per frame, newest last
        frame = np.moveaxis(obs[-3:], 0, -1)
    return cv2.resize(np.ascontiguousarray(frame), (height, height), interpolation=cv2.INTER_NEAREST)


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.7) -> None:
    """White text with a black outline: readable on grass, track and sky alike."""
    cv2.putText(image, text, origin, _FONT, scale, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(image, text, origin, _FONT, scale, (255, 255, 255), 2, cv2.LINE_AA)


def compose_frame(frame: np.ndarray, obs: np.ndarray | None, score: float, step: int, grayscale: bool = True,
                  label: str = "") -> np.ndarray:
    """An RGB video frame: the env frame with score and step drawn on, and the agent's input beside it."""
    image = np.ascontiguousarray(frame, dtype=np.uint8).copy()
    _put_text(image, f"score {score:7.1f}", (10, 28))
    _put_text(image, f"step {step}", (10, 56), 0.6)
    if label:  # top right: the bottom strip holds the env's own indicators
        (width, _), _ = cv2.getTextSize(label, _FONT, 0.5, 2)
        _put_text(image, label, (image.shape[1] - width - 10, 24), 0.5)
    if obs is None:
        return image
    view = agent_view(obs, grayscale, image.shape[0])
    size = np.asarray(obs).shape[-1]
    _put_text(view, f"agent input {size}x{size}", (10, 28), 0.6)
    return np.concatenate([image, view], axis=1)


class EpisodeVideo:
    """Writes one episode's frames to an mp4; the writer opens on the first frame (its size is known then)."""

    def __init__(self, path: str | Path, fps: float, side_by_side: bool = False, grayscale: bool = True,
                 label: str = ""):
        self.path = Path(path)
        self.fps = float(fps)
        self.side_by_side = side_by_side
        self.grayscale = grayscale
        self.label = label
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None

    def add(self, frame: np.ndarray, obs: np.ndarray, score: float, step: int) -> None:
        image = compose_frame(frame, obs if self.side_by_side else None, score, step, self.grayscale, self.label)
        if self._writer is None:
            height, width = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*FOURCC), self.fps, (width, height))
            if not self._writer.isOpened():
                raise ConfigError(f"cannot open {str(self.path)!r} for writing an {FOURCC} video")
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # OpenCV wants BGR
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> EpisodeVideo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_video_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, width, height) of a video as OpenCV decodes it, counting frames by reading them."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ConfigError(f"{str(path)!r} is not a readable video")
    frames, width, height = 0, 0, 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames += 1
        height, width = image.shape[:2]
    capture.release()
    return frames, width, height
