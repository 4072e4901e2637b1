"""Protocol v1's constants: what a result is stamped with. Changing any of them changes results,
so it bumps PROTOCOL_VERSION (`evaluator.runner` explains each rule; it re-exports these)."""

from __future__ import annotations

PROTOCOL_VERSION = 1
BASE_SEED = 10_000  # public seed set: episode i starts from reset(seed=BASE_SEED + i)
N_SLOTS = 8  # batch size of every policy call (>= 4: see evaluator.runner's docstring)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20_240_601
PRIVATE_SALT_ENV = "EVALUATOR_PRIVATE_SALT"

PUBLIC = "public"
PRIVATE = "private"
CUSTOM = "custom"  # seeds given explicitly that are neither set (not rankable)


def protocol_constants() -> dict[str, int]:
    """The constants a result is stamped with."""
    return {
        "protocol_version": PROTOCOL_VERSION,
        "base_seed": BASE_SEED,
        "n_slots": N_SLOTS,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "bootstrap_seed": BOOTSTRAP_SEED,
    }
