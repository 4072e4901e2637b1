"""Confined evaluation: a trusted referee and a confined player.

- `confine`: which confinement this machine offers, and bubblewrap's command line;
- `uids`: machine-wide leases of the unprivileged uid each confined process runs as;
- `limits`: the rlimits a confined process applies to itself first thing;
- `process`: starting, watching and killing a confined process;
- `wire`: the fixed binary frames between referee and player;
- `player`: the confined process that loads an agent and answers actions;
- `referee`: the trusted loop that owns envs, seeds, rewards and the replay (`play`);
- `warm` (referee side), `zygote`, `jail` (confined side), `launcher`: warm players, one jailed
  fork of a started zygote per data-only job.

Attributes are imported lazily: the player imports this package before it has applied its
limits, so nothing heavy may load here.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BWRAP": "confine", "UNSHARE": "confine", "NONE": "confine", "MODE_ENV": "confine",
    "Confinement": "confine", "confinement": "confine", "TMPFS_BYTES": "confine", "SNAPSHOT_MOUNT": "confine",
    "DEFAULT_MEMORY_BYTES": "process", "MAX_PROCESSES": "process", "SandboxRun": "process",
    "ConfinedProcess": "process", "run_in_sandbox": "process", "run_snippet": "process",
    "UID_BASE": "uids", "UID_COUNT": "uids", "lease_uid": "uids",
    "play": "referee", "job_timeout": "referee", "max_episode_steps": "referee", "STARTUP_SECONDS": "referee",
    "PER_STEP_SECONDS": "referee", "ACT_SECONDS": "referee",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
