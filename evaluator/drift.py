"""Known drift of the env stack: envs whose dynamics changed since older agents were trained,
so a faithful evaluation scores those agents below their (honestly measured) cards. The
leaderboard says so next to the verdict instead of hiding it."""

from __future__ import annotations

# env_key -> what changed and what it means for a score
KNOWN_DRIFT = {
    "BipedalWalker-v3": (
        "BipedalWalker's Box2D physics differ from the 2021 gym stack this agent was trained on: "
        "agents of that era fall on some seeds here (bimodal returns), with SB3's own loader too. "
        "A score below the card is drift of the environment, not of the agent or the loader."
    ),
}


for _task in ("Reach", "Push", "Slide", "PickAndPlace", "Stack"):
    for _dense in ("", "Dense"):
        KNOWN_DRIFT[f"Panda{_task}{_dense}-v3"] = (
            "panda-gym v1/v2 agents (SB3 1.x era) run on panda-gym v3 here (gymnasium, PyBullet 3.2.7): "
            "same task and observation keys, but v3 ends an episode at success where v1 played all 50 steps, "
            "so a dense return here is higher than on v1 (a reaching controller: -0.24 here, -0.32 on v1; the "
            "simulation itself agrees to 1e-3 in that return: scripts/panda_drift.py). Compare with care."
        )


def drift_notes(env_key: str | None, saved_with: str | None) -> list[str]:
    """Notes for an agent saved with SB3 `saved_with` (None: unknown, i.e. very old)."""
    note = KNOWN_DRIFT.get(env_key or "")
    if note is None:
        return []
    old = saved_with is None or saved_with.split(".")[0] in ("0", "1")
    return [note] if old else []
