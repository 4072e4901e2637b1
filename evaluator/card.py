"""What a repo *claims*: the model card's score, the episode count behind it, the env id and
the algorithm. Parsed tolerantly (community cards vary) and never trusted for anything but
the claim verdict and finding the env."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import yaml

from .envs import resolve_env, supported_env_ids
from .errors import EvaluationError, UnknownEnvError
from .safe_yaml import StrictSafeLoader, check_structure
from .text import clean_text, clean_tree

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_CLAIM = re.compile(rf"^\s*(?:mean_reward\s*[:=]\s*)?({_NUMBER})\s*(?:(?:\+/-|\+-|±|\+/−)\s*({_NUMBER}))?\s*$")
MAX_CARD_CHARS = 200_000  # of the README read at all
MAX_FRONT_MATTER_CHARS = 64_000  # course and RL Zoo cards hold 1 to 5 KB of metadata
MAX_CLAIMED_EPISODES = 10_000_000  # more is not a real evaluation (and would overflow int64 columns)


@dataclass(frozen=True)
class Claim:
    mean_reward: float | None  # None: the card states a number that does not fit a float (`note` says)
    std_reward: float | None
    env_id: str | None  # the env the claim is for, as the card states it
    note: str | None = None


class _Unfit(ValueError):
    """A claimed number that does not fit a float (a 400-digit integer, `1e400`)."""


def front_matter(readme: str) -> dict:
    """The card's YAML metadata block, or {} when absent, malformed or hostile. Bounded by size
    and structure before parsing (safe_yaml), and every string in it sanitised (evaluator.text):
    this is where card text enters."""
    text = readme[:MAX_CARD_CHARS]
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        check_structure(text[3:end], max_chars=MAX_FRONT_MATTER_CHARS)
        data = yaml.load(text[3:end], Loader=StrictSafeLoader)  # noqa: S506  # safe: SafeLoader subclass
    except (yaml.YAMLError, EvaluationError, ArithmeticError, ValueError, TypeError, AttributeError, RecursionError):
        return {}  # cards are parsed in the calling process: a hostile one is simply no claim
    return clean_tree(data) if isinstance(data, dict) else {}


def _to_float(value: int | float | str) -> float:
    """A finite float, or _Unfit when the number does not fit one."""
    try:
        number = float(value)
    except OverflowError:
        raise _Unfit(value) from None
    if not math.isfinite(number):
        raise _Unfit(value)
    return number


def parse_claim_value(value) -> tuple[float, float | None] | None:
    """`"248.58 +/- 18.59"`, `"248.58"`, `248.58`, `"248.58 ± 18.59"` -> (mean, std or None).
    None when it does not parse; _Unfit when it parses to a number no float holds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (int, float)):
        return _to_float(value), None
    if not isinstance(value, str) or len(value) > 1000:
        return None
    match = _CLAIM.match(value)
    if not match:
        return None
    mean = _to_float(match.group(1))
    std = _to_float(match.group(2)) if match.group(2) is not None else None
    return mean, (abs(std) if std is not None else None)


def _results(meta: dict) -> list[dict]:
    index = meta.get("model-index")
    if not isinstance(index, list):
        return []
    out = []
    for model in index:
        if isinstance(model, dict) and isinstance(model.get("results"), list):
            out.extend(r for r in model["results"] if isinstance(r, dict))
    return out


def _dataset_env(result: dict) -> str | None:
    dataset = result.get("dataset")
    if isinstance(dataset, dict):
        for key in ("type", "name"):
            if isinstance(dataset.get(key), str) and 0 < len(dataset[key].strip()) <= 200:
                return dataset[key].strip()
    return None


def _is_mean_reward(metric: dict) -> bool:
    return "mean_reward" in (metric.get("type"), metric.get("name"))


def parse_claim(meta: dict) -> Claim | None:
    """The first `mean_reward` metric of the model-index (else the first metric that parses)."""
    for result in _results(meta):
        metrics = result.get("metrics")
        if not isinstance(metrics, list):
            continue
        ordered = sorted((m for m in metrics if isinstance(m, dict)), key=lambda m: not _is_mean_reward(m))
        for metric in ordered:
            try:
                parsed = parse_claim_value(metric.get("value"))
            except _Unfit as unfit:
                shown = clean_text(str(unfit.args[0]) if unfit.args else "?", 40)
                return Claim(None, None, _dataset_env(result), note=(
                    f"the card claims {shown}, a number that does not fit a float: treated as no claim (absent)"))
            if parsed is not None:
                return Claim(parsed[0], parsed[1], _dataset_env(result))
    return None


def _results_json(results_json: bytes | None) -> dict:
    """`results.json` as a dict, or {} when absent or unreadable."""
    if not results_json:
        return {}
    try:
        data = json.loads(results_json[:100_000])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def parse_results_claim(results_json: bytes | None) -> Claim | None:
    """The claim `results.json` states, for a card whose metadata states none: `mean_reward`,
    and `std_reward` where the course writes one (unit 8; Q-learning's has none)."""
    data = _results_json(results_json)
    try:
        mean = parse_claim_value(data.get("mean_reward"))
        std = parse_claim_value(data.get("std_reward"))
    except _Unfit:
        return None
    if mean is None:
        return None
    env = data.get("env_id")
    env = clean_text(env.strip(), 200) if isinstance(env, str) and 0 < len(env.strip()) <= 200 else None
    return Claim(mean[0], abs(std[0]) if std is not None else None, env)


def parse_claimed_episodes(results_json: bytes | None) -> int | None:
    """`n_eval_episodes` (RL Zoo, course units 1-3) or `n_evaluation_episodes` (course units 4
    and 8) from `results.json`, if it says."""
    data = _results_json(results_json)
    n = data.get("n_eval_episodes", data.get("n_evaluation_episodes"))
    valid = isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_CLAIMED_EPISODES
    return n if valid else None


def _known(env_id: str) -> bool:
    try:
        resolve_env(env_id)
    except UnknownEnvError:
        return False
    return True


def env_from_repo_name(name: str) -> str | None:
    """The longest supported env id standing as a whole `-`/`_`-delimited part of the name."""
    found = [env for env in supported_env_ids()
             if re.search(rf"(?:^|[-_]){re.escape(env)}(?:$|[-_])", name, re.IGNORECASE)]
    return max(found, key=len) if found else None


def infer_env_id(meta: dict, tags: list[str] | None, repo_id: str) -> str | None:
    """The env id the repo states: card dataset, then tags, then the repo name (DESIGN.md order).
    A stated id outside the table is still returned (so the error names it); None if nothing."""
    for result in _results(meta):
        env = _dataset_env(result)
        if env:
            return env
    for tag in tags or []:
        if isinstance(tag, str) and _known(tag):
            return tag
    return env_from_repo_name(repo_id.split("/")[-1])


def infer_algo(meta: dict) -> str | None:
    index = meta.get("model-index")
    if isinstance(index, list) and index and isinstance(index[0], dict):
        name = index[0].get("name")
        if isinstance(name, str) and name.strip():
            return name.strip().lower().replace("-", "")
    return None
