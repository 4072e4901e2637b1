"""The player: `python -P -s -B -m evaluator.sandbox.player`, started confined by the referee.

It loads one agent and answers one thing: a batch of observations in, a batch of actions out,
in the frames of `evaluator.sandbox.wire`. It never sees the env seeds, the job, the store or
any result channel; whatever it does, the referee only ever takes actions from it (checked
there, inside the action space) or an error that fails the evaluation.

Order matters: its own limits first (stdlib only), then every import it will need, and only
then the agent's files (a TorchScript `__setstate__` runs inside `torch.jit.load`): with `-P`,
a read-only working directory and no writable folder on `sys.path`, nothing the agent writes
can be imported. File descriptor 1 points at stderr from the start: library or agent prints
cannot reach the action channel.
"""

from __future__ import annotations

import os
import sys


def _read_exact(fd: int, n: int) -> bytes | None:
    """`n` bytes, or None at a clean end of input; EOFError when it ends inside a frame."""
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise EOFError("the referee closed the channel inside a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_into(fd: int, buffer: memoryview) -> bool:
    """Fill `buffer` (one whole frame, usually one read); False at a clean end of input."""
    got, size = 0, len(buffer)
    while got < size:
        n = os.readv(fd, [buffer[got:]])
        if not n:
            if got == 0:
                return False
            raise EOFError("the referee closed the channel inside a frame")
        got += n
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _preload() -> None:
    """Import everything an agent load or a policy call may import, before any file is read."""
    import importlib

    import gymnasium  # noqa: F401
    import numpy  # noqa: F401
    import torch

    import evaluator.agents.cleanrl  # noqa: F401
    import evaluator.agents.qlearning  # noqa: F401
    import evaluator.agents.reinforce  # noqa: F401
    import evaluator.agents.sb3  # noqa: F401
    import evaluator.agents.torchscript  # noqa: F401
    import evaluator.envs  # noqa: F401
    import evaluator.runner  # noqa: F401
    from evaluator.agents.sb3_identity import POLICY_CLASSES

    for spec in POLICY_CLASSES.values():
        importlib.import_module(spec.target.split(":")[0])
    for module in ("stable_baselines3.common.preprocessing", "stable_baselines3.dqn.policies",
                   "stable_baselines3.sac.policies", "stable_baselines3.td3.policies", "sb3_contrib.ars.policies",
                   "sb3_contrib.tqc.policies"):  # what sb3_lean looks up at load
        importlib.import_module(module)
    torch.set_num_threads(1)  # the protocol's numbers never depend on the core count


def to_wire_actions(actions, space, layout, n: int, out) -> None:
    """The policy's actions written into `out` (the reply frame's view: the layout's dtype and
    shape) as the wire carries them; InvalidActionError for what no cast fixes."""
    import numpy as np
    from gymnasium import spaces

    from evaluator.errors import InvalidActionError

    a = np.asarray(actions)
    field = layout.fields[0]
    if a.dtype.kind not in "iufc":  # numbers only (not bool, object, strings)
        raise InvalidActionError(f"The policy returned actions of dtype {a.dtype}: expected numbers for {space}.")
    if a.ndim == 0 or a.shape != (n, *field.shape):
        raise InvalidActionError(
            f"The policy returned actions of shape {a.shape} for a batch of {n} observations: expected "
            f"{(n, *field.shape)}, one action per row, for {space}.")
    if not isinstance(space, spaces.Box) and a.dtype.kind not in "iu":
        raise InvalidActionError(f"The policy returned actions of dtype {a.dtype}: expected integers for {space}.")
    out[...] = a  # the cast np.ascontiguousarray(a, dtype) makes (the referee checks the values it gets)


def serve(rfd: int, wfd: int) -> None:
    """Answer the referee until it closes the channel; raises EvaluationError (or worse)."""
    import json
    from dataclasses import replace
    from pathlib import Path

    from evaluator.agents import load_agent
    from evaluator.agents.base import AgentFiles
    from evaluator.env_wrappers import EnvView
    from evaluator.envs import make_env, resolve_env
    from evaluator.errors import InvalidOutputError
    from evaluator.runner import MAX_CALL_ROWS, N_SLOTS, LocalActor, Rows

    from . import wire

    header = _read_exact(rfd, wire.HEADER.size)
    if header is None:
        return
    tag, length = wire.HEADER.unpack(header)
    if tag != wire.HELLO or length > wire.MAX_HELLO_BYTES:
        raise InvalidOutputError("the player expected a hello frame")
    hello = json.loads(_read_exact(rfd, length) or b"{}")
    spec = resolve_env(hello["env_id"])
    if hello.get("env_view") is not None:  # the wrappers and frame stack the referee decided
        spec = replace(spec, view=EnvView.from_json(hello["env_view"]))
    env = make_env(spec)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    obs_layout, act_layout = wire.observation_layout(obs_space), wire.action_layout(act_space)
    files = AgentFiles(Path(hello["root"]), hello["agent_file"], tuple(hello["files"]))
    agent = load_agent(hello["format"], files, obs_space, act_space)
    actor = LocalActor(agent.policy)
    deterministic = bool(hello["deterministic"])
    n = hello.get("rows", N_SLOTS)  # rows of every call: whole policy batches, decided by the referee
    if type(n) is not int or not 0 < n <= MAX_CALL_ROWS or n % N_SLOTS:
        raise InvalidOutputError(
            f"the hello asks for calls of {n!r} rows: expected a multiple of {N_SLOTS} up to {MAX_CALL_ROWS}")
    body_size = wire.obs_frame_bytes(obs_layout, n)
    frame = memoryview(bytearray(wire.HEADER.size + body_size))  # every frame is read into this one buffer
    # Views of that buffer, made once: each frame's flags, seeds and observations appear in them.
    flags, seeds, obs = wire.decode_obs_body(frame[wire.HEADER.size:], obs_layout, n, copy=False)
    reply = bytearray(wire.HEADER.size + act_layout.batch_bytes(n))  # every answer is written here
    reply_actions = act_layout.decode(memoryview(reply)[wire.HEADER.size:], n, copy=False)
    _write_all(wfd, wire.HEADER.pack(wire.READY, 0))
    while True:
        if not _read_into(rfd, frame):
            return
        tag, seq = wire.HEADER.unpack_from(frame)
        if tag != wire.OBS:
            raise InvalidOutputError(f"the player expected an observation frame, got {tag!r}")
        rows = Rows(live=(flags & wire.LIVE) != 0, started=(flags & wire.EPISODE_START) != 0, action_seeds=seeds,
                    positions=(flags >> wire.POSITION_SHIFT) & wire.POSITION_MASK)
        actions = actor.act_rows(obs, rows, deterministic=deterministic)
        to_wire_actions(actions, act_space, act_layout, n, out=reply_actions)
        wire.HEADER.pack_into(reply, 0, wire.ACT, seq)
        _write_all(wfd, reply)


def answer(rfd: int, wfd: int, *, preload: bool = True, code_bearing: bool = True) -> None:
    """Serve the referee on (rfd, wfd), reporting any failure as an error frame; never raises.
    A cold player preloads and may play code-bearing formats; a warm job (a jailed fork of the
    zygote, `evaluator.sandbox.zygote`) is preloaded already and plays data-only formats only."""
    from . import wire
    from .limits import mentions_allocation_failure

    try:
        if preload:
            _preload()
        from evaluator.agents import torchscript
        from evaluator.errors import EvaluationError

        if code_bearing:
            torchscript.allow_code_bearing_formats()
        try:
            serve(rfd, wfd)
        except EvaluationError as err:
            _write_all(wfd, wire.encode_error(err.code.value, str(err)))
    except BrokenPipeError:
        pass  # the referee is gone: nothing to answer
    except BaseException as err:  # reported as a frame; the referee decides what it means
        import traceback

        traceback.print_exc()
        if isinstance(err, MemoryError) or mentions_allocation_failure(str(err)):
            code, message = "memory_limit", ("the agent ran out of memory while loading or acting (over the "
                                             f"sandbox's limit): {type(err).__name__}: {str(err)[:300]}")
        else:
            code = "internal_error"
            message = f"internal error ({type(err).__name__}: {str(err)[:2000]}); please report it"
        try:
            _write_all(wfd, wire.encode_error(code, message))
        except OSError:
            pass
    sys.stderr.flush()


def main() -> None:
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # fd 1 is stderr from now on: only `wfd` carries actions
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = sys.stderr
    from .limits import apply_limits_from_env

    apply_limits_from_env()
    answer(rfd, wfd)
    os._exit(0)  # no interpreter teardown: nothing of the agent's runs after the last answer


if __name__ == "__main__":
    main()
