"""The Deep RL course's units, as its certification checks them: per unit, the env(s), the agent
format the course asks for, and the pass threshold on score = mean - std.

One table. A threshold that the env table already carries for this unit (`EnvSpec.unit_threshold`
with `course_unit` naming the unit) is read from there, never copied; a unit states its own only
where the env table has none for it (an env outside the table, or a second unit on the same env,
such as Unit 8's CleanRL LunarLander). Verifiability is computed, not declared: a part is
verifiable when the evaluator supports its env and one of its formats (`evaluator.envs`,
`evaluator.agents.FORMATS`), so later issues flip units to verifiable by supporting them.
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluator.errors import UnknownEnvError


@dataclass(frozen=True)
class UnitPart:
    unit: str  # "Unit 1", "Unit 8 part 1"
    env_id: str  # as the course names it (resolved through the env table)
    formats: tuple[str, ...]  # agent formats the course asks for (evaluator.agents.FORMATS names)
    what: str  # the format, in the course's words
    threshold: float | None = None  # None: the env table's unit_threshold for this unit
    note: str | None = None  # why it cannot be verified here, when that is not about support


COURSE_UNITS: tuple[UnitPart, ...] = (
    UnitPart("Unit 1", "LunarLander-v2", ("sb3",), "a Stable-Baselines3 agent (package_to_hub)"),
    UnitPart("Unit 2", "Taxi-v3", ("qlearning",), "a Q-learning table (q-learning.pkl)"),
    UnitPart("Unit 3", "SpaceInvadersNoFrameskip-v4", ("sb3",), "an RL Zoo DQN agent"),
    UnitPart("Unit 4", "CartPole-v1", ("reinforce",), "a REINFORCE module (model.pt)"),
    UnitPart("Unit 4", "Pixelcopter-PLE-v0", ("reinforce",), "a REINFORCE module (model.pt)", 5.0),
    UnitPart("Unit 5", "ML-Agents-SnowballTarget", ("mlagents",), "an ML-Agents ONNX agent", -100.0),
    UnitPart("Unit 5", "ML-Agents-Pyramids", ("mlagents",), "an ML-Agents ONNX agent", -100.0),
    UnitPart("Unit 6", "PandaReachDense-v3", ("sb3",), "an A2C agent with VecNormalize"),
    UnitPart("Unit 7", "ML-Agents-SoccerTwos", ("mlagents",), "an ML-Agents ONNX agent", None,
             "certified on an ELO between agents, not on a score"),
    UnitPart("Unit 8 part 1", "LunarLander-v2", ("cleanrl_ppo",), "a CleanRL PPO agent (model.pt state dict)",
             -100.0),  # the course checker's "pushed" bar (DESIGN.md)
    UnitPart("Unit 8 part 2", "doom_health_gathering_supreme", ("sample_factory",), "a Sample Factory agent",
             5.0, "Sample Factory 2.1.1 pins numpy<2, gymnasium<1 and huggingface-hub<1: neither its model "
             "code nor its enjoy script (the reference) can run beside this evaluator's pins"),
)


@dataclass(frozen=True)
class UnitCheck:
    """A unit part as this evaluator can check it."""

    part: UnitPart
    env_key: str | None  # the key results are ranked under; None when the env is not supported
    threshold: float | None
    verifiable: bool
    reason: str | None  # why not verifiable


def supported_formats() -> frozenset[str]:
    from evaluator.agents import FORMATS

    return frozenset(FORMATS)


def check_part(part: UnitPart) -> UnitCheck:
    """Resolve a unit part against the env table and the loader's formats."""
    from evaluator.envs import resolve_env

    threshold, env_key, reasons = part.threshold, None, []
    try:
        spec = resolve_env(part.env_id)
    except UnknownEnvError:
        reasons.append(f"the env {part.env_id} is not supported yet")
    else:
        env_key = spec.env_key
        if threshold is None and spec.course_unit == part.unit:
            threshold = spec.unit_threshold
    if not set(part.formats) & supported_formats():
        reasons.append(f"{part.what} is not a format the evaluator loads yet")
    if part.note:
        reasons.append(part.note)
    elif threshold is None:
        reasons.append("the course states no score threshold for it")
    reason = "; ".join(reasons) or None
    return UnitCheck(part, env_key, threshold, reason is None, reason)


def unit_checks() -> list[UnitCheck]:
    return [check_part(part) for part in COURSE_UNITS]


def thresholds_by_env_key() -> dict[str, list[tuple[str, float]]]:
    """env_key -> [(unit, threshold)] for the parts on supported envs: the pass lines a leaderboard
    view of that env shows."""
    shown: dict[str, list[tuple[str, float]]] = {}
    for check in unit_checks():
        if check.env_key is not None and check.threshold is not None:
            shown.setdefault(check.env_key, []).append((check.part.unit, check.threshold))
    return shown
