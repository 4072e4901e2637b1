"""Issue 11, acceptance 1: through `localhub` and the normal CLI, an Atari SpaceInvaders agent, a
PandaReachDense agent and a TimeFeatureWrapper RL Zoo agent (trained here in seconds, laid out as
RL Zoo repos with their cards) finish ranked, under the protocol of their family, with the
wrappers decided from their config.yml. Their fidelity tests (bit for bit against SB3's own
stack, reruns and splits included) are in test_atari.py, test_panda.py and test_env_wrappers.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import localhub
from evaluator.result import EvalResult
from scripts.zoo_agents import model_card, train_atari, train_panda, train_time_feature

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[2]

# repo id -> (env key, algo, episodes, deterministic)
EXPECTED = {
    "zoo/ppo-SpaceInvadersNoFrameskip-v4": ("SpaceInvadersNoFrameskip-v4", "ppo", 10, False),
    "zoo/a2c-PandaReachDense-v3": ("PandaReachDense-v3", "a2c", 50, True),
    "zoo/ppo-Pendulum-v1": ("Pendulum-v1", "ppo", 50, True),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub11")
    atari = train_atari(root / "zoo/ppo-SpaceInvadersNoFrameskip-v4", algo="ppo", steps=64, seed=1)
    (atari / "README.md").write_text(model_card("ppo", "SpaceInvadersNoFrameskip-v4", 150.0, 50.0))
    panda = train_panda(root / "zoo/a2c-PandaReachDense-v3", steps=200, seed=2)
    (panda / "README.md").write_text(model_card("a2c", "PandaReachDense-v3", -40.0, 5.0))
    tf = train_time_feature(root / "zoo/ppo-Pendulum-v1", steps=256, seed=3)
    (tf / "README.md").write_text(model_card("ppo", "Pendulum-v1", -1500.0, 100.0))
    with localhub.serve(root, state=tmp_path_factory.mktemp("state")) as running:
        yield running


def _cli(hub, repo_id: str, tmp_path: Path) -> EvalResult:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", repo_id, "--json", "--no-store"],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return EvalResult.from_dict(json.loads(proc.stdout))  # stdout is exactly one JSON document


@pytest.mark.parametrize("repo_id", list(EXPECTED))
def test_new_family_agent_finishes_ranked_through_localhub_and_the_cli(hub, repo_id, tmp_path):
    env_key, algo, episodes, deterministic = EXPECTED[repo_id]
    result = _cli(hub, repo_id, tmp_path)
    assert result.status == "finished", result.error
    assert (result.env_key, result.algo, result.n_episodes, result.deterministic) == (
        env_key, algo, episodes, deterministic)
    assert result.ranked is True and result.claim.verdict == "consistent", (result.claim, result.mean_reward)
    assert len(result.episode_returns) == episodes
    assert len(set(result.episode_returns)) > 1  # seeded episodes differ (Atari: sampled actions too)
