"""The referee <-> player frames: sizes follow from the spaces, values survive bit for bit."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from gymnasium import spaces

from evaluator import errors
from evaluator.batch_rows import put_row, row_buffer
from evaluator.sandbox import wire


def test_dict_observations_round_trip_in_key_order():
    space = spaces.Dict({"observation": spaces.Box(-1, 1, (6,), np.float32),
                         "achieved_goal": spaces.Box(-1, 1, (3,), np.float64), "step": spaces.Discrete(5)})
    layout = wire.observation_layout(space)
    assert [f.key for f in layout.fields] == ["achieved_goal", "observation", "step"]
    rows = [space.sample() for _ in range(8)]
    batch = row_buffer(rows[0], 8)  # as the runner fills it
    for slot, row in enumerate(rows):
        put_row(batch, slot, row)
    data = layout.encode(batch, 8)
    assert len(data) == layout.batch_bytes(8) == 8 * (3 * 8 + 6 * 4 + 8)
    back = layout.decode(data, 8)
    for key in space.spaces:
        assert back[key].dtype == np.asarray(batch[key]).dtype or key == "step"
        assert np.array_equal(back[key], batch[key])


def test_box_observations_keep_their_bits_and_shapes_are_checked():
    layout = wire.observation_layout(spaces.Box(-np.inf, np.inf, (4,), np.float32))
    batch = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    batch[0, 0] = np.nextafter(np.float32(1), np.float32(2))
    assert layout.decode(layout.encode(batch, 8), 8).tobytes() == batch.tobytes()
    with pytest.raises(ValueError, match="shape"):
        layout.encode(batch[:, :3], 8)


def test_action_layouts_are_lossless_wide_types():
    assert wire.action_layout(spaces.Discrete(4)).fields[0].dtype == np.dtype("<i8")
    box = wire.action_layout(spaces.Box(-1, 1, (2,), np.float32))
    assert box.fields[0].dtype == np.dtype("<f8") and box.batch_bytes(8) == 128
    with pytest.raises(errors.SpaceMismatchError):
        wire.action_layout(spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2))))
    with pytest.raises(errors.SpaceMismatchError):
        wire.observation_layout(spaces.Dict({"a": spaces.Dict({"b": spaces.Discrete(2)})}))


def test_error_frames_are_bounded_and_typed():
    frame = wire.encode_error("invalid_weights", "x" * 10_000)
    tag, length = wire.HEADER.unpack(frame[:8])
    assert tag == wire.ERROR and length <= wire.MAX_ERROR_BYTES
    assert wire.decode_error(frame[8:])[0] == "invalid_weights"
    assert wire.decode_error(wire.encode_error("timeout", "no")[8:])[0] == "internal_error"  # not a player's to say
    with pytest.raises(ValueError):
        wire.decode_error(b"\xff\xff")


class _Pipes:
    """What RemotePlayer needs of a process to build its channel (nothing is sent here)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.obs_r, self.obs_w = os.pipe()
        self.act_r, self.act_w = os.pipe()

    def channel_fds(self):
        return self.obs_w, self.act_r

    def close(self) -> None:
        for fd in (self.obs_r, self.obs_w, self.act_r, self.act_w):
            os.close(fd)


def test_the_referee_refuses_rows_that_are_not_full_bool_masks():
    """Row flags are written into the frame as masks: an integer array would index rows instead,
    a short seed array would be broadcast. Either is refused before anything is sent."""
    from evaluator.runner import Rows
    from evaluator.sandbox.referee import RemotePlayer

    pipes = _Pipes()
    try:
        remote = RemotePlayer(pipes, spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(2), budget=5.0, rows=8)
        obs = np.zeros((8, 3), np.float32)
        live, seeds = np.ones(8, bool), np.zeros(8, np.uint64)
        for bad in (Rows(live, np.eye(8, dtype=np.uint8)[7], seeds), Rows(live.astype(int), live, seeds),
                    Rows(live, ~live, np.zeros(1, np.uint64)), Rows(live[:7], ~live[:7], seeds[:7])):
            with pytest.raises(ValueError):
                remote.act_rows(obs, bad, deterministic=True)
        assert remote.calls == 0
    finally:
        pipes.close()
