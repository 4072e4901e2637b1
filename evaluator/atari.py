"""Atari through ALE, scored as the RL Zoo scores it.

The RL Zoo evaluates an Atari agent on `make_vec_env(env_id, wrapper_class=AtariWrapper)` +
`VecFrameStack`: a `Monitor` right above the ALE env records the full game's unclipped return,
the `AtariWrapper` above it (noop reset up to 30, frame skip 4 with max-pooling, `EpisodicLifeEnv`,
`FireResetEnv` where the game needs it, 84x84 grayscale, reward clipping) is what the agent sees.
A lost life ends the *wrapper's* episode: the vector env resets the wrapper stack (which only
presses no-op / FIRE: the game goes on) and clears the frame stack. The score of one protocol
episode is the Monitor's: the whole game (every life), unclipped.

Here one env does the same for the runner (`FullGames`): it steps the wrapper stack, restarts it
after a lost life as the vector env would, reports the unclipped rewards a `ScoreTap` (where the
Monitor sits) saw during the step, and ends the episode only when the game is over.

Step cap: ALE v4's own, `max_num_frames_per_episode=108000` (30 minutes of play at 60 Hz), i.e.
27,000 agent steps at frame skip 4; the game is truncated there, as in the reference stack.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

MAX_GAME_FRAMES = 108_000  # ALE v4 registration's max_num_frames_per_episode
FRAME_SKIP = 4  # AtariWrapper's default (the RL Zoo's)
CONSOLE_HZ = 60
MAX_AGENT_STEPS = MAX_GAME_FRAMES // FRAME_SKIP


def register_ale() -> None:
    """Register ALE's ids with gymnasium (ROMs ship in the `ale-py` wheel): the step users miss."""
    import ale_py

    gym.register_envs(ale_py)


class ScoreTap(gym.Wrapper):
    """Right above the ALE env, where the RL Zoo's Monitor sits: sums the raw (unclipped) rewards
    of every frame since the last `take()` and knows when the game itself is over."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.pending = 0.0
        self.game_over = False

    def reset(self, **kwargs: Any) -> Any:
        self.game_over = False
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.pending += float(reward)
        self.game_over = bool(terminated or truncated)
        return obs, reward, terminated, truncated, info

    def take(self) -> float:
        reward, self.pending = self.pending, 0.0
        return reward


class FullGames(gym.Wrapper):
    """One protocol episode = one full game. A lost life (the wrapper stack's `terminated`, the
    game going on) restarts the stack as SB3's vector env does; the step then reports
    `restarted` in its info, so a frame stack above clears as `VecFrameStack` does on `done`.
    Rewards are the tap's: unclipped, every frame (the restart's no-op/FIRE frames included)."""

    def __init__(self, env: gym.Env, tap: ScoreTap, frame_skip: int = FRAME_SKIP) -> None:
        super().__init__(env)
        self.tap = tap
        # the replay shows one frame per agent step: the console's 60 Hz over the frame skip
        self.metadata = {**self.env.metadata, "render_fps": max(1, round(CONSOLE_HZ / max(frame_skip, 1)))}

    def reset(self, **kwargs: Any) -> Any:
        self.tap.take()
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        obs, _, terminated, truncated, info = self.env.step(action)
        if (terminated or truncated) and not self.tap.game_over:
            obs, info = self.env.reset()  # EpisodicLifeEnv: no-op (and FIRE) steps, same game
            info = {**info, "restarted": True}
            terminated = truncated = self.tap.game_over  # the restart's own frames ended the game
        return obs, self.tap.take(), terminated, truncated, info


def wrap_atari(env: gym.Env, kwargs: dict[str, Any]) -> gym.Env:
    """The RL Zoo's Atari stack over a raw ALE env: tap, `AtariWrapper(**kwargs)`, full games."""
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    tap = ScoreTap(env)
    return FullGames(AtariWrapper(tap, **kwargs), tap, int(kwargs.get("frame_skip", FRAME_SKIP)))
