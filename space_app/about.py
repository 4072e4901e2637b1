"""The About view: the protocol as the evaluator runs it (read from its constants, not retyped)."""

from __future__ import annotations

from evaluator.drift import KNOWN_DRIFT
from evaluator.envs import ENV_TABLE, FAMILY_DETERMINISTIC, FAMILY_EPISODES
from evaluator.runner import BASE_SEED, BOOTSTRAP_RESAMPLES, PROTOCOL_VERSION


def about_markdown(where: str) -> str:
    episodes = ", ".join(f"{family.replace('_', ' ')} {n} episodes "
                         f"({'deterministic' if FAMILY_DETERMINISTIC[family] else 'stochastic'} actions)"
                         for family, n in FAMILY_EPISODES.items())
    aliases = ", ".join(sorted(f"`{k}` → `{e.eval_env_id}`" for k, e in ENV_TABLE.items()
                               if k != e.eval_env_id and e.supported and not k.startswith("FrozenLake-v1-")))
    drift = "".join(f"\n- **{k}**: {v}" for k, v in KNOWN_DRIFT.items()) or " none known."
    return f"""
## How every score here is measured (protocol v{PROTOCOL_VERSION})

- **Seeds.** Public seed set: episode *i* starts from `reset(seed={BASE_SEED} + i)`; every agent of an env plays
  the same episodes, which is what makes rows comparable (and pairable, in Compare). Rows on the private seed set
  were measured on seeds that are not published.
- **Episodes per env family:** {episodes}.
- **Score** = mean − std of the per-episode returns (std over the population, as SB3's `evaluate_policy`); the
  IQM and a {BOOTSTRAP_RESAMPLES:,}-resample bootstrap 95% CI of the mean are shown beside it.
- **Ranking:** per env, each repo's newest evaluated revision, by score, then mean, then repo id.
- **Claims:** the card's `model-index` mean ± std is checked against the measured returns: `consistent`,
  `inflated` (the claim is above what the agent does, beyond sampling error), `unverifiable` or `absent`.
- **Env aliases** (older ids run on their current version): {aliases}.
- **Measured drift:**{drift}

## Submit

Type a Hub repo id in **Submit**. It is checked first (the id, the repo, a supported agent file, a known env),
then queued; the page follows it from pending to finished or failed (with the reason).

## Run the same evaluation yourself

```
pip install -r requirements.txt
python -m evaluator evaluate NAMESPACE/REPO --revision SHA
```

Open a row for its exact command: a public-seed row reproduces bit for bit.

Data source of this Space: {where}.
"""
