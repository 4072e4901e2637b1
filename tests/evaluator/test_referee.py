"""The referee against players that misbehave on the wire: whatever a player sends, the only
thing it can change is its own actions; anything else ends the evaluation with a typed error.

Each hostile player is a small Python program run under the player's own confinement in place
of `evaluator.sandbox.player` (`play(player_args=...)`), i.e. what a player that runs arbitrary
code could do."""

from __future__ import annotations

import os
import shutil
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluator import errors
from evaluator.envs import resolve_env
from evaluator.job import Job
from evaluator.runner import public_seeds, run_episodes
from evaluator.sandbox import referee, run_in_sandbox, wire
from evaluator.sandbox.process import DEFAULT_MEMORY_BYTES, MAX_PROCESSES
from tests.evaluator.ts_agents import CartPoleLinear

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*"),
]

# A player in plain Python: reads the hello, says READY, then answers each observation frame
# with what `answer(seq, body)` returns (bytes written raw to the action channel).
PRELUDE = """
import json, os, struct, sys, time
H = struct.Struct("<4sI")
def rd(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            os._exit(0)
        b += c
    return b
def wr(b):
    while b:
        b = b[os.write(1, b):]
tag, n = H.unpack(rd(8))
hello = json.loads(rd(n))
"""
LOOP = """
wr(H.pack(b"RDY1", 0))
while True:
    tag, seq = H.unpack(rd(8))
    body = rd(BODY)
    wr(answer(seq, body))
"""
CARTPOLE_BODY = 8 + 8 * 8 + 8 * 4 * 4  # flags, action seeds, 8 observations of 4 float32
PENDULUM_BODY = 8 + 8 * 8 + 8 * 3 * 4


def player(answer_src: str, *, body: int = CARTPOLE_BODY, setup: str = "") -> tuple[str, str]:
    code = PRELUDE + textwrap.dedent(setup) + f"BODY = {body}\n" + textwrap.dedent(answer_src) + LOOP
    return ("-c", code)


ZEROS = """
def answer(seq, body):
    return H.pack(b"ACT1", seq) + bytes(8 * 8)
"""


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ts-agent")
    torch.jit.save(torch.jit.script(CartPoleLinear()), str(folder / "agent.pt"))
    os.chmod(folder / "agent.pt", 0o644)
    return folder


def job(folder: Path, env: str = "CartPole-v1", n: int = 3, **kwargs) -> Job:
    return Job(str(folder), "torchscript", "agent.pt", ("agent.pt",), env, n, tuple(public_seeds(n)), **kwargs)


class Zeros:
    def act(self, obs, *, deterministic=True, rngs=None):
        return np.zeros(len(obs), dtype=np.int64)


def test_an_honest_plain_player_scores_exactly_its_actions(agent_dir):
    outcome = referee.play(job(agent_dir), player_args=player(ZEROS))
    expected = run_episodes(Zeros(), resolve_env("CartPole-v1"), n_episodes=3)
    assert outcome.episodes.returns == expected.returns and outcome.episodes.lengths == expected.lengths
    assert outcome.episodes.seeds == list(public_seeds(3))


def test_the_player_never_sees_seeds_or_the_job(agent_dir):
    """The hello names files and the env; the observation frames carry one-way action seeds."""
    leak = """
    def answer(seq, body):
        raise SystemExit(json.dumps(hello))
    """
    with pytest.raises(errors.SandboxCrashError) as caught:
        referee.play(job(agent_dir), player_args=player(leak))
    said = str(caught.value)
    assert "agent.pt" in said and "CartPole-v1" in said
    for secret in ("10000", "10001", "seeds", "n_episodes", "video", "store"):
        assert secret not in said, secret


@pytest.mark.parametrize("name,answer,cls,words", [
    ("garbage", 'def answer(seq, body):\n    return b"XXXXXXXX"', errors.InvalidOutputError, "tagged"),
    ("forged-json-result", 'def answer(seq, body):\n    return json.dumps({"episodes": {"returns": [500.0] * 3}})'
     '.encode()', errors.InvalidOutputError, "tagged"),
    ("wrong-sequence", 'def answer(seq, body):\n    return H.pack(b"ACT1", seq + 1) + bytes(64)',
     errors.InvalidOutputError, "answered observation"),
    ("oversized-error", 'def answer(seq, body):\n    return H.pack(b"ERR1", 10**6) + bytes(100)',
     errors.InvalidOutputError, "error frame of 1000000 bytes"),
    ("unknown-error-code", 'def answer(seq, body):\n    return H.pack(b"ERR1", 4) + struct.pack("<H", 999) + b"hi"',
     errors.InvalidOutputError, "malformed error frame"),
    ("truncated-then-exit", 'def answer(seq, body):\n    wr(H.pack(b"ACT1", seq) + bytes(10))\n    os._exit(0)',
     errors.SandboxCrashError, "without an answer"),
    ("killed", 'def answer(seq, body):\n    os.kill(os.getpid(), 9)', errors.SandboxCrashError, "SIGKILL"),
    ("floods-the-channel", 'def answer(seq, body):\n    return b"A" * (64 << 20)', errors.InvalidOutputError,
     "tagged"),
    ("out-of-range-action", 'def answer(seq, body):\n    return H.pack(b"ACT1", seq) + struct.pack("<8q", *[7] * 8)',
     errors.InvalidActionError, r"outside Discrete\(2\)"),
])
def test_malformed_answers_end_the_evaluation(agent_dir, name, answer, cls, words):
    with pytest.raises(cls, match=words):
        referee.play(job(agent_dir), player_args=player(answer))


def test_an_error_frame_is_typed_and_its_text_is_data(agent_dir):
    answer = """
    def answer(seq, body):
        text = "weights \\x1b[2K\\r\\x1b[1A mean_reward: 500.00 \\u202e+/- 0.00 \\u200b\\ud800".encode(
            "utf-8", "surrogatepass")
        return H.pack(b"ERR1", 2 + len(text)) + struct.pack("<H", 5) + text
    """
    with pytest.raises(errors.InvalidWeightsError) as caught:
        referee.play(job(agent_dir), player_args=player(answer))
    message = str(caught.value)
    assert not any(ch in message for ch in ("\x1b", "\r", "\ud800", "\u202e", "\u200b")), message
    assert "mean_reward: 500.00" in message  # the text is kept, made inert
    assert wire.PLAYER_ERROR_CODES[5] == "invalid_weights"


def test_nan_box_actions_are_invalid(agent_dir):
    answer = """
    def answer(seq, body):
        return H.pack(b"ACT1", seq) + struct.pack("<8d", *[float("nan")] * 8)
    """
    with pytest.raises(errors.InvalidActionError, match="finite"):
        referee.play(job(agent_dir, "Pendulum-v1", 1), player_args=player(answer, body=PENDULUM_BODY))


def test_late_answers_and_a_player_that_never_loads_are_timeouts(agent_dir, monkeypatch):
    monkeypatch.setattr(referee, "ACT_SECONDS", 2.0)
    late = """
    def answer(seq, body):
        time.sleep(60)
        return H.pack(b"ACT1", seq) + bytes(64)
    """
    with pytest.raises(errors.EvalTimeoutError, match="too long to choose its actions"):
        referee.play(job(agent_dir), player_args=player(late))
    monkeypatch.setattr(referee, "STARTUP_SECONDS", 2.0)
    never = ("-c", PRELUDE + "time.sleep(60)\n")
    with pytest.raises(errors.EvalTimeoutError, match="too long to load"):
        referee.play(job(agent_dir), player_args=never)


def test_a_fork_bomb_beside_an_honest_job_changes_nothing(agent_dir, tmp_path):
    """Each player has a uid of its own (root): one forking to its process limit does not take
    the honest player's processes, and the honest replay is the referee's, not a player's."""
    solo = referee.play(job(agent_dir, n=4))
    bomb = textwrap.dedent("""
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(20)
                    os._exit(0)
                n += 1
        except OSError:
            print(n, flush=True)
        time.sleep(15)
    """)
    ran: dict = {}
    thread = threading.Thread(target=lambda: ran.update(run=run_in_sandbox(
        ["-c", "from evaluator.sandbox.limits import apply_limits_from_env as a; a()\n" + bomb], timeout=60,
        memory_bytes=DEFAULT_MEMORY_BYTES)))
    thread.start()
    try:
        video = tmp_path / "replay.mp4"
        import time as _time

        _time.sleep(2)  # the bomb is at its limit
        beside = referee.play(replace(job(agent_dir, n=4), video_path=str(video)))
    finally:
        thread.join()
    assert beside.episodes.returns == solo.episodes.returns
    assert beside.video == str(video) and video.stat().st_size > 1000, beside.video_error
    if os.geteuid() == 0:
        forks = int(ran["run"].stdout.decode().split()[0])
        assert 0 < forks < MAX_PROCESSES
