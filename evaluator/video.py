"""Replays: the evaluation's episode 0, recorded while it is scored, as a browser-playable mp4.

The replay is the episode the score counted, recorded during the scored run itself
(`ReplayRecorder`, fed by `evaluator.runner.run_episodes`): there is no second run, so an agent
cannot act differently on camera. Rendering happens on the trusted side (the referee), from the
env's own frames.

The video is H.264 (`libx264`) in `yuv420p` with the moov atom first (`+faststart`), which every
browser plays progressively. It is encoded by the ffmpeg binary that the `imageio-ffmpeg` wheel
ships (no system ffmpeg needed), frames streamed to it one by one. It is written to a temporary
name beside the target and renamed when complete and verified, so the target name never holds a
partial file. A failure stops the recording, never the score.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.agents.base import Policy
from evaluator.envs import EnvSpec

# A full 1000-step episode (LunarLander's time limit) plus its reset frame; 20 s at 50 fps.
DEFAULT_MAX_FRAMES = 1_001
DEFAULT_FPS = 30  # when the env's metadata has no render_fps
MAX_FRAME_SIDE = 4096  # refuse absurd render sizes rather than encode them
CRF = 23  # libx264's default quality
PRESET = "veryfast"  # replays are simple scenes: faster encoding, a slightly larger file
ENCODE_TIMEOUT = 300.0  # seconds ffmpeg may take to finish after the last frame
PROBE_TIMEOUT = 120.0


class VideoError(RuntimeError):
    """The replay could not be recorded or the file is not the video it should be."""


@dataclass(frozen=True)
class Replay:
    """A recorded replay. `os.fspath(replay)` and `str(replay)` give the mp4's path."""

    path: Path
    seed: int
    frames: int  # frames in the video (the reset frame + one per step, up to max_frames)
    episode_length: int  # steps of the whole episode
    episode_return: float  # of the whole episode, even when the video is cut
    truncated_video: bool  # the episode went on after the last frame of the video
    fps: int
    width: int
    height: int

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped by the `imageio-ffmpeg` wheel (or named by IMAGEIO_FFMPEG_EXE)."""
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise VideoError("imageio-ffmpeg is not installed: `pip install imageio-ffmpeg`") from err
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise VideoError(f"no ffmpeg binary: {err}") from err


def _render(env: Any, step: int) -> np.ndarray:
    frame = env.render()
    if frame is None:
        raise VideoError(f"{env.spec.id if env.spec else env} rendered nothing (no rgb_array mode?)")
    a = np.asarray(frame)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise VideoError(f"step {step}: rendered an array of shape {a.shape}, expected (H, W, 3)")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            raise VideoError(f"step {step}: rendered a {a.dtype} array, expected uint8 RGB")
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a[:, :, :3]


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad with black to an even width and height (yuv420p needs both), keep it C-contiguous."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
    return np.ascontiguousarray(frame)


def _fps(env: Any, fps: int | None) -> int:
    if fps is None:
        fps = (getattr(env, "metadata", None) or {}).get("render_fps") or DEFAULT_FPS
    fps = int(round(fps))
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return fps


class ReplayRecorder:
    """Records the episode the runner scores (`evaluator.runner.run_episodes(recorder=...)`): the
    reset frame and one frame per step, up to `max_frames`, streamed to ffmpeg. It never raises
    into the episode: a failure stops the recording and is kept in `error`, the score goes on.
    After `finish`, `replay` describes the verified mp4 at `out_path`; a recording that did not
    finish leaves no file (`abort`)."""

    def __init__(self, out_path: Path, *, max_frames: int = DEFAULT_MAX_FRAMES, fps: int | None = None) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.out_path = Path(out_path)
        self.max_frames, self.fps = max_frames, fps
        self.tmp = self.out_path.with_name(f".{self.out_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
        self.error: str | None = None
        self.replay: Replay | None = None
        self._writer = None
        self._first_shape: tuple[int, ...] | None = None
        self._frames = 0
        self._rate = DEFAULT_FPS

    def _open(self, env: Any, first: np.ndarray) -> None:
        import imageio_ffmpeg

        ffmpeg_exe()  # fail early and clearly when there is no encoder
        self._rate = _fps(env, self.fps)
        height, width = first.shape[:2]
        if max(height, width) > MAX_FRAME_SIDE:
            raise VideoError(f"rendered frames of {width}x{height} are too large to encode")
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = imageio_ffmpeg.write_frames(
            str(self.tmp), (width, height), pix_fmt_in="rgb24", pix_fmt_out="yuv420p", fps=self._rate,
            codec="libx264", quality=None, macro_block_size=1, ffmpeg_log_level="error",
            ffmpeg_timeout=ENCODE_TIMEOUT,
            output_params=["-preset", PRESET, "-crf", str(CRF), "-movflags", "+faststart", "-f", "mp4"],
        )
        self._writer.send(None)  # starts ffmpeg
        self._first_shape = first.shape

    def frame(self, env: Any) -> None:
        if self.error is not None or self.replay is not None or self._frames >= self.max_frames:
            return
        try:
            frame = _even(_render(env, self._frames))
            if self._writer is None:
                self._open(env, frame)
            elif frame.shape != self._first_shape:
                raise VideoError(f"step {self._frames}: frame size changed from {self._first_shape} to {frame.shape}")
            self._writer.send(frame)
            self._frames += 1
        except Exception as err:  # a failed replay never fails the score
            self._fail(err)

    def finish(self, episode_return: float, length: int) -> None:
        if self.error is not None or self._writer is None:
            if self.error is None:
                self.error = "no frame was rendered"
            return
        try:
            self._writer.close()  # flushes, waits for ffmpeg (and its faststart pass)
            self._writer = None
            info = probe_video(self.tmp)
            if info.get("codec") != "h264" or info.get("frames") != self._frames or not info.get("duration"):
                raise VideoError(f"the encoded video is not what was written ({self._frames} frames): {info}")
            os.replace(self.tmp, self.out_path)
        except Exception as err:
            self._fail(err)
            return
        height, width = self._first_shape[:2]
        self.replay = Replay(self.out_path, -1, self._frames, int(length), float(episode_return),
                             length + 1 > self._frames, self._rate, width, height)

    def _fail(self, err: BaseException) -> None:
        if isinstance(err, OSError):
            err = VideoError(f"encoding the replay failed: {err}")
        self.error = f"{type(err).__name__}: {err}"[:2000]
        self.abort()

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file (the target is untouched)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except BaseException:  # noqa: BLE001 - ffmpeg's own failure is not ours to report here
                pass
        if self.replay is None:
            self.tmp.unlink(missing_ok=True)


def record_replay(
    policy: Policy,
    spec: EnvSpec,
    seed: int,
    out_path: Path,
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    fps: int | None = None,
) -> Replay:
    """Run the episode `reset(seed=seed)` to its end, as the runner scores it, and write its first
    `max_frames` frames (the reset frame, then one per step) to `out_path` as an H.264 mp4.

    Returns a `Replay` (path-like: `str(replay)` is the path) with the episode's full return and
    whether the video was cut. `fps` defaults to the env's `metadata["render_fps"]`, else 30.
    Raises VideoError, InvalidActionError or the env's/policy's own exception; `out_path` is then
    untouched (a previous file there stays, no partial file is left beside it).
    """
    from evaluator.runner import run_episodes

    recorder = ReplayRecorder(Path(out_path), max_frames=max_frames, fps=fps)
    try:
        run_episodes(policy, spec, n_episodes=1, seeds=[int(seed)], recorder=recorder)
    finally:
        recorder.abort()
    if recorder.replay is None:
        raise VideoError((recorder.error or "the replay was not recorded").removeprefix("VideoError: "))
    return replace(recorder.replay, seed=int(seed))


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+)(.*)")
_SIZE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"(\d+(?:\.\d+)?) fps")


def probe_video(path: Path | str, *, exe: str | None = None) -> dict[str, Any]:
    """Describe a video with the bundled ffmpeg (no decoding: packets are copied to a null
    output and counted). Keys: codec (e.g. "h264"), pix_fmt, width, height, fps, duration
    (seconds), frames. Raises VideoError when ffmpeg cannot read it or it has no video stream."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    cmd = [exe or ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-i", str(path),
           "-map", "0:v:0", "-c", "copy", "-f", "null", "-progress", "pipe:1", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as err:
        raise VideoError(f"{path}: ffmpeg took over {PROBE_TIMEOUT:.0f} s to read it") from err
    err_text = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(err_text.strip().splitlines()[-3:])
        raise VideoError(f"{path}: ffmpeg cannot read it (exit {proc.returncode}): {tail}")
    video = _VIDEO.search(err_text)
    if video is None:
        raise VideoError(f"{path}: no video stream")
    info: dict[str, Any] = {"codec": video.group(1), "pix_fmt": None, "width": None, "height": None,
                            "fps": None, "duration": None, "frames": None}
    rest = video.group(2)
    pix = re.match(r"[^,]*,\s*(\w+)", rest)
    if pix:
        info["pix_fmt"] = pix.group(1)
    if size := _SIZE.search(rest):
        info["width"], info["height"] = int(size.group(1)), int(size.group(2))
    if rate := _FPS.search(rest):
        info["fps"] = float(rate.group(1))
    if dur := _DURATION.search(err_text):
        h, m, s = dur.groups()
        info["duration"] = int(h) * 3600 + int(m) * 60 + float(s)
    counts = re.findall(r"^frame=\s*(\d+)\s*$", proc.stdout.decode(errors="replace"), re.M)
    if counts:
        info["frames"] = int(counts[-1])
    return info


def prune_replays(folder: Path | str, max_bytes: int, *, keep: Iterable[Path | str] = ()) -> list[Path]:
    """Delete the oldest `*.mp4` files (by mtime, recursively under `folder`) until the rest
    add up to at most `max_bytes`; files in `keep` are never deleted. Returns what was deleted,
    oldest first."""
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    folder = Path(folder)
    if not folder.is_dir():
        return []
    kept = {Path(p).resolve() for p in keep}
    files = []
    for p in folder.rglob("*.mp4"):
        try:
            st = p.stat()
        except FileNotFoundError:  # deleted meanwhile
            continue
        if p.is_file():
            files.append((st.st_mtime_ns, str(p), p, st.st_size))
    total = sum(f[3] for f in files)
    deleted: list[Path] = []
    for _, _, p, size in sorted(files):
        if total <= max_bytes:
            break
        if p.resolve() in kept:
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        total -= size
        deleted.append(p)
    return deleted
