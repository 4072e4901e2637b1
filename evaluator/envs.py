"""Canonical evaluation envs: the explicit alias table and the per-env protocol.

Env ids come from this table only. An id from repo metadata is looked up here, exactly (never
substring-matched), and never handed to `gym.make` as is: `"module:Env"` ids import code, and an
id outside the table has no protocol (episode count, kwargs, threshold) to run it under.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from evaluator.env_wrappers import EnvView, apply_view, default_view
from evaluator.errors import UnknownEnvError

CLASSIC_CONTROL = "classic_control"
BOX2D = "box2d"
TOY_TEXT = "toy_text"
ATARI = "atari"
PANDA = "panda"

# Episodes per evaluation and whether actions are deterministic, by family (DESIGN.md, protocol
# v1): the RL Zoo / course conventions (Atari agents act stochastically).
FAMILY_EPISODES = {CLASSIC_CONTROL: 50, BOX2D: 50, TOY_TEXT: 100, ATARI: 10, PANDA: 50}
FAMILY_DETERMINISTIC = {CLASSIC_CONTROL: True, BOX2D: True, TOY_TEXT: True, ATARI: False, PANDA: True}


def format_env_key(eval_env_id: str, eval_env_kwargs: dict[str, Any]) -> str:
    """`LunarLander-v3[continuous=True]`: kwargs sorted and repr'd, so equal envs share a key."""
    if not eval_env_kwargs:
        return eval_env_id
    args = ",".join(f"{k}={v!r}" for k, v in sorted(eval_env_kwargs.items()))
    return f"{eval_env_id}[{args}]"


@dataclass(frozen=True)
class EnvSpec:
    """What the repo asked for (`requested_id`) and what the evaluator runs, under which protocol."""

    requested_id: str
    eval_env_id: str
    eval_env_kwargs: dict[str, Any] = field(hash=False)
    env_key: str
    family: str
    n_episodes: int
    deterministic: bool
    unit_threshold: float | None = None
    course_unit: str | None = None
    return_bounds: tuple[float, float] | None = None  # (lowest, highest) achievable episode return
    # What the agent sees (wrappers, frame stack): the family's default here, the agent's own
    # (decided from its config.yml on the trusted side) after `evaluator.job.describe`.
    view: EnvView | None = None
    max_episode_steps: int | None = None  # a step cap the registry does not state (Atari)


@dataclass(frozen=True)
class _Entry:
    eval_env_id: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    family: str = CLASSIC_CONTROL
    unit_threshold: float | None = None
    course_unit: str | None = None
    supported: bool = True


# The episode returns an env can give at all, where they are known exactly from its reward
# function and time limit (protocol v1 runs the registered limits; actions are checked inside
# the action space). A claimed mean outside them is `inflated`, a claimed std wider than their
# span `unverifiable` (evaluator.stats.claim_verdict). Envs with shaped, unbounded-in-practice
# rewards (LunarLander, BipedalWalker) have none.
RETURN_BOUNDS: dict[str, tuple[float, float]] = {
    "CartPole-v1": (0.0, 500.0),  # +1 per step, 500 steps
    "Acrobot-v1": (-500.0, 0.0),  # -1 per step until the goal, 500 steps
    "MountainCar-v0": (-200.0, 0.0),  # -1 per step, 200 steps
    "MountainCarContinuous-v0": (-99.9, 100.0),  # -0.1 a^2 per step (|a| <= 1, 999 steps), +100 at the goal
    "Pendulum-v1": (-3255.0, 0.0),  # -(pi^2 + 0.1 * 8^2 + 0.001 * 2^2) per step at worst, 200 steps
    "FrozenLake-v1": (0.0, 1.0),  # 1 for reaching the goal, else 0
    "FrozenLake8x8-v1": (0.0, 1.0),
    "Taxi-v4": (-2000.0, 20.0),  # -1 per step, -10 for an illegal action, +20 for the drop-off, 200 steps
}


def _fl(map_name: str, slippery: bool) -> _Entry:
    # FrozenLake always states map and slipperiness: the repo names are ambiguous about both.
    # No course threshold: the course certifies Unit 2 on Taxi.
    return _Entry("FrozenLake-v1", (("map_name", map_name), ("is_slippery", slippery)), TOY_TEXT)


_LUNAR = _Entry("LunarLander-v3", (), BOX2D, 200.0, "Unit 1")
_LUNAR_CONT = _Entry("LunarLander-v3", (("continuous", True),), BOX2D)
_TAXI = _Entry("Taxi-v4", (), TOY_TEXT, 4.5, "Unit 2")

# requested id -> entry. Aliases point at the same entry as their canonical id, so they share an
# env_key. Notes: LunarLander-v2 no longer exists in gymnasium 1.x (v3 fixed determinism);
# Taxi-v4 only fixed the opt-in `is_rainy` / `fickle_passenger` modes, the default env is v3's.
# BipedalWalkerHardcore-v3 and FrozenLake8x8-v1 keep their own registrations because their time
# limits differ from the base id's.
ENV_TABLE: dict[str, _Entry] = {
    "CartPole-v1": _Entry("CartPole-v1", (), CLASSIC_CONTROL, 350.0, "Unit 4"),
    "Acrobot-v1": _Entry("Acrobot-v1"),
    "MountainCar-v0": _Entry("MountainCar-v0"),
    "MountainCarContinuous-v0": _Entry("MountainCarContinuous-v0"),
    "Pendulum-v1": _Entry("Pendulum-v1"),
    "LunarLander-v2": _LUNAR,
    "LunarLander-v3": _LUNAR,
    "LunarLanderContinuous-v2": _LUNAR_CONT,
    "LunarLanderContinuous-v3": _LUNAR_CONT,
    "BipedalWalker-v3": _Entry("BipedalWalker-v3", (), BOX2D),
    "BipedalWalkerHardcore-v3": _Entry("BipedalWalkerHardcore-v3", (), BOX2D),
    "FrozenLake-v1": _fl("4x4", True),
    "FrozenLake-v1-4x4": _fl("4x4", True),
    "FrozenLake-v1-4x4-no_slippery": _fl("4x4", False),
    "FrozenLake-v1-8x8": _fl("8x8", True),
    "FrozenLake-v1-8x8-no_slippery": _fl("8x8", False),
    "FrozenLake8x8-v1": _Entry("FrozenLake8x8-v1", (), TOY_TEXT),
    "Taxi-v3": _TAXI,
    "Taxi-v4": _TAXI,
}

# Atari (ALE, registered lazily by `make_env`): `XNoFrameskip-v4` under the RL Zoo's AtariWrapper
# and a frame stack of 4 (`evaluator.atari`); an episode is a full game, capped at ALE v4's own
# 108,000 frames (27,000 agent steps).
_ATARI_GAMES = ("SpaceInvaders", "Breakout", "Pong", "Qbert", "Seaquest", "BeamRider",
                "Enduro", "Asteroids", "MsPacman", "RoadRunner")
for _game in _ATARI_GAMES:
    ENV_TABLE[f"{_game}NoFrameskip-v4"] = _Entry(
        f"{_game}NoFrameskip-v4", (), ATARI,
        200.0 if _game == "SpaceInvaders" else None,
        "Unit 3" if _game == "SpaceInvaders" else None,
    )


# panda-gym (`evaluator.panda`): the v3 ids (not PandaFlip: its texture is missing from the
# panda-gym 3.0.7 wheel, the env cannot be built), the RL Zoo's and the course's older v1/v2 ids aliased
# (same task and observation keys; v3 ends episodes at success: see evaluator.panda). Sparse rewards are
# -1 per step until the goal is reached, 50 steps.
for _task in ("Reach", "Push", "Slide", "PickAndPlace", "Stack"):
    for _dense in ("", "Dense"):
        _panda = _Entry(f"Panda{_task}{_dense}-v3", (), PANDA,
                        -3.5 if (_task, _dense) == ("Reach", "Dense") else None,
                        "Unit 6" if (_task, _dense) == ("Reach", "Dense") else None)
        for _version in ("v1", "v2", "v3"):
            ENV_TABLE[f"Panda{_task}{_dense}-{_version}"] = _panda
        if not _dense:
            RETURN_BOUNDS[f"Panda{_task}-v3"] = (-50.0, 0.0)


def _spec(requested_id: str, entry: _Entry) -> EnvSpec:
    kwargs = dict(entry.kwargs)
    return EnvSpec(
        requested_id=requested_id,
        eval_env_id=entry.eval_env_id,
        eval_env_kwargs=kwargs,
        env_key=format_env_key(entry.eval_env_id, kwargs),
        family=entry.family,
        n_episodes=FAMILY_EPISODES[entry.family],
        deterministic=FAMILY_DETERMINISTIC[entry.family],
        unit_threshold=entry.unit_threshold,
        course_unit=entry.course_unit,
        return_bounds=RETURN_BOUNDS.get(entry.eval_env_id),
        view=default_view(entry.family == ATARI),
        max_episode_steps=_atari_steps() if entry.family == ATARI else None,
    )


def _atari_steps() -> int:
    from evaluator.atari import MAX_AGENT_STEPS

    return MAX_AGENT_STEPS


def supported_env_ids() -> list[str]:
    """Every id `resolve_env` accepts from a repo (aliases included), sorted."""
    return sorted(k for k, e in ENV_TABLE.items() if e.supported)


def supported_env_keys() -> list[str]:
    """The distinct canonical env keys (what results are stored and ranked under)."""
    return sorted({_spec(k, e).env_key for k, e in ENV_TABLE.items() if e.supported})


def _by_key() -> dict[str, _Entry]:
    return {_spec(k, e).env_key: e for k, e in ENV_TABLE.items()}


def resolve_env(env_id: str) -> EnvSpec:
    """Map an env id as a repo states it (or a canonical env key) to its evaluation spec.

    Raises UnknownEnvError, naming the supported ids, for anything outside the table.
    """
    if not isinstance(env_id, str) or not env_id.strip():
        raise UnknownEnvError(f"No env id given. Supported env ids: {', '.join(supported_env_ids())}")
    requested = env_id.strip()
    supported = ", ".join(supported_env_ids())
    if ":" in requested:
        raise UnknownEnvError(
            f"Env id {requested!r} names a Python module ('module:Env' imports code): refused. "
            f"Use one of the supported env ids: {supported}"
        )
    entry = ENV_TABLE.get(requested) or _by_key().get(requested)
    if entry is None:
        close = difflib.get_close_matches(requested, supported_env_ids(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownEnvError(
            f"Env id {requested!r} is not in the evaluator's env table.{hint} "
            f"Supported env ids: {supported}"
        )
    if not entry.supported:
        raise UnknownEnvError(
            f"Env {requested!r} ({entry.family}) is listed but not verifiable here. "
            f"Supported env ids: {supported}"
        )
    return _spec(requested, entry)


def make_env(spec: EnvSpec, **kwargs: Any) -> gym.Env:
    """One evaluation env under the spec's view; `kwargs` are for the caller's own needs
    (e.g. `render_mode`)."""
    if spec.family == ATARI:
        from evaluator.atari import register_ale

        register_ale()
    if spec.family == PANDA:  # PyBullet prints on fd 1 when it connects
        from evaluator.panda import make_panda

        env = make_panda(spec.eval_env_id, disable_env_checker=True, **spec.eval_env_kwargs, **kwargs)
        return apply_view(env, spec.view)
    env = gym.make(spec.eval_env_id, disable_env_checker=True, **spec.eval_env_kwargs, **kwargs)
    return apply_view(env, spec.view)


def make_vector_env(spec: EnvSpec, n_slots: int, **kwargs: Any) -> list[gym.Env]:
    """`n_slots` independent envs, stepped one by one by the runner.

    A plain list rather than a gymnasium VectorEnv: autoreset would start the next episode
    from the env's own RNG, while the protocol resets every episode with its own seed.
    """
    if n_slots < 1:
        raise ValueError(f"n_slots must be >= 1, got {n_slots}")
    return [make_env(spec, **kwargs) for _ in range(n_slots)]
