"""Resource limits a confined process applies to itself, first thing, before any heavy import.

Kept free of heavy imports (stdlib only): the player imports it before torch, so the limits are
in force while anything of the agent's is read."""

from __future__ import annotations

import json
import os
import resource

LIMITS_ENV = "EVALUATOR_SANDBOX_LIMITS"
SANDBOX_ENV = "EVALUATOR_SANDBOX"

_RLIMITS = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "core": resource.RLIMIT_CORE,
}


def apply_limits(limits: dict[str, int]) -> None:
    """Lower soft and hard limits (never raise them), so nothing later in this process can
    undo them. CPU gets a 5 s grace between SIGXCPU (soft) and SIGKILL (hard)."""
    for name, value in limits.items():
        which = _RLIMITS[name]
        _, hard = resource.getrlimit(which)
        value = int(value)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        top = value
        if name == "cpu":
            top = value + 5 if hard == resource.RLIM_INFINITY else min(value + 5, hard)
        resource.setrlimit(which, (value, top))


ALLOCATION_FAILURE_WORDS = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "out of memory")


def mentions_allocation_failure(text: str) -> bool:
    """Whether an error text says an allocation failed (the memory limit, not the agent's file)."""
    lower = text.lower()
    return any(w in lower for w in ALLOCATION_FAILURE_WORDS)


def apply_limits_from_env() -> None:
    apply_limits(json.loads(os.environ.get(LIMITS_ENV) or "{}"))
