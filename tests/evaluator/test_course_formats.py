"""The course formats' loaders and the one restricted unpickler, piece by piece: what loads,
what is refused and why, and that the payloads of the hostile tests are live attacks."""

from __future__ import annotations

import copyreg
import io
import pickle
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from evaluator.agents import STOCHASTIC_FORMATS, SUPPORTED_FORMATS, AgentFiles, acts_deterministically
from evaluator.agents.cleanrl import load_cleanrl
from evaluator.agents.course_detect import classify_model_pt, settle
from evaluator.agents.course_policies import sample
from evaluator.agents.qlearning import QTablePolicy, course_env_id, read_qtable
from evaluator.agents.reinforce import load_reinforce, read_reinforce
from evaluator.errors import (
    CorruptFileError,
    EvaluationError,
    SpaceMismatchError,
    TooLargeError,
    UnsafeContentError,
)
from evaluator.pickle_scan import scan_pickle
from evaluator.restricted_pickle import StandIn, restricted_load
from scripts import course_agents as ca
from tests.evaluator import course_payloads as cp

PROJECT = Path(__file__).resolve().parents[2]
CARTPOLE = gym.make("CartPole-v1")


def _files(tmp_path: Path, name: str, raw: bytes) -> AgentFiles:
    (tmp_path / name).write_bytes(raw)
    return AgentFiles(tmp_path, name, (name,))


def test_the_formats_are_named_for_the_units_table():
    assert {"sb3", "qlearning", "reinforce", "cleanrl_ppo"} <= SUPPORTED_FORMATS
    assert STOCHASTIC_FORMATS == {"reinforce", "cleanrl_ppo"}
    assert acts_deterministically(True, "qlearning") and not acts_deterministically(True, "reinforce")
    assert not acts_deterministically(False, "sb3")


# ------------------------------------------------------------------------------------------ Q-tables


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_qtable_reads_in_every_protocol(protocol):
    table = np.arange(24, dtype=np.float64).reshape(6, 4)
    raw = pickle.dumps({"env_id": "FrozenLake-v1", "qtable": table, "eval_seed": [np.int64(3)], "gamma": 0.95},
                       protocol=protocol)
    read, plain = read_qtable(raw)
    assert np.array_equal(read, table) and plain == {"env_id": "FrozenLake-v1", "gamma": 0.95}


def test_qtable_of_lists_and_integer_dtypes():
    assert read_qtable(cp.qtable_dict([[1, 2], [3.5, 0]]))[0].tolist() == [[1, 2], [3.5, 0]]
    assert read_qtable(cp.qtable_dict(np.ones((3, 2), dtype=np.int32)))[0].dtype == np.float64


def test_greedy_actions_break_ties_to_the_lowest_index():
    policy = QTablePolicy(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0], [5.0, -1.0, 5.0]]))
    assert policy.act(np.array([0, 1, 2, 1])).tolist() == [0, 1, 0, 1]


def test_frozenlake_id_from_the_pickle_and_the_tag():
    scan = scan_pickle(cp.qtable_dict(np.zeros((64, 4)), "FrozenLake-v1", map_name="8x8", slippery=False))
    assert course_env_id(scan, "FrozenLake-v1") == "FrozenLake-v1-8x8-no_slippery"
    assert course_env_id(scan, None) == "FrozenLake-v1-8x8-no_slippery"
    assert course_env_id(scan, "FrozenLake-v1-8x8-no_slippery") == "FrozenLake-v1-8x8-no_slippery"
    with pytest.raises(SpaceMismatchError, match="8x8"):
        course_env_id(scan, "FrozenLake-v1-4x4-no_slippery")
    slippery = scan_pickle(cp.qtable_dict(np.zeros((16, 4)), "FrozenLake-v1", map_name="4x4"))
    assert course_env_id(slippery, "FrozenLake-v1") == "FrozenLake-v1-4x4"
    assert course_env_id(scan_pickle(cp.qtable_dict(np.zeros((500, 6)))), None) == "Taxi-v3"
    # older notebooks wrote no `slippery`: the tag decides, the pickle's map must agree
    old = scan_pickle(cp.qtable_dict(np.zeros((16, 4)), "FrozenLake-v1", map_name="4x4"))
    assert course_env_id(old, "FrozenLake-v1-4x4-no_slippery") == "FrozenLake-v1-4x4-no_slippery"
    with pytest.raises(SpaceMismatchError, match="4x4"):
        course_env_id(old, "FrozenLake-v1-8x8")
    with pytest.raises(SpaceMismatchError, match="not slippery"):
        course_env_id(scan, "FrozenLake-v1-8x8")


def test_settle_refuses_payloads_from_the_opcodes_alone(tmp_path, marker):
    (tmp_path / "q-learning.pkl").write_bytes(cp.gadgets(marker)["getattr-gadget"])
    with pytest.raises(UnsafeContentError, match="builtins.getattr"):
        settle("qlearning", tmp_path, "q-learning.pkl", "Taxi-v3")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ the unpickler


def test_registered_copyreg_extension_is_still_refused(marker):
    copyreg.add_extension("posix", "system", 240)
    try:
        raw = cp.gadgets(marker)["copyreg-extension"]
        with pytest.raises(UnsafeContentError, match="extension 240"):
            restricted_load(raw, {}, what="x.pkl", max_bytes=1 << 20)
    finally:
        copyreg.remove_extension("posix", "system", 240)
    assert not marker.exists()


class _Box(StandIn):
    pass


def test_build_only_on_stand_ins_and_calls_only_to_the_allowlist():
    allow = {("m", "Box"): _Box, ("builtins", "set"): set}
    box = restricted_load(b"\x80\x02cm\nBox\n)R}X\x01\x00\x00\x00aK\x01sb.", allow, what="x", max_bytes=100)
    assert isinstance(box, _Box) and box.state == {"a": 1}
    for raw in (b"\x80\x02cm\nBox\n}X\x01\x00\x00\x00aK\x01sb.",  # BUILD on the class itself
                b"\x80\x02cbuiltins\nset\n)R}X\x01\x00\x00\x00aK\x01sb."):  # BUILD on a real object
        with pytest.raises(UnsafeContentError, match="BUILD"):
            restricted_load(raw, allow, what="x", max_bytes=100)
    assert not hasattr(_Box, "a")
    with pytest.raises(UnsafeContentError, match="NEWOBJ_EX"):
        restricted_load(b"\x80\x04cm\nBox\n)}X\x01\x00\x00\x00kK\x01s\x92.", allow, what="x", max_bytes=100)


def test_nesting_memo_size_and_persistent_ids_are_bounded():
    deep = b"\x80\x02" + b"]" * 20_000 + b"a" * 19_999 + b"."  # [[[...]]] 20,000 deep
    with pytest.raises(TooLargeError, match="nests"):
        restricted_load(deep, {}, what="x", max_bytes=1 << 22)
    memo = b"\x80\x02N" + b"".join(b"r" + i.to_bytes(4, "little") for i in range(100_001)) + b"."
    with pytest.raises(TooLargeError, match="memo"):
        restricted_load(memo, {}, what="x", max_bytes=1 << 22)
    with pytest.raises(TooLargeError):
        restricted_load(b"x" * 101, {}, what="x", max_bytes=100)
    with pytest.raises(UnsafeContentError, match="persistent"):
        restricted_load(b"\x80\x02X\x01\x00\x00\x00aQ.", {}, what="x", max_bytes=100)
    with pytest.raises(CorruptFileError, match="truncated"):
        restricted_load(pickle.dumps({"a": [1, 2, 3]})[:-3], {}, what="x", max_bytes=100)


@pytest.mark.parametrize("name", ["getattr-gadget", "attrgetter-gadget", "hidden-stack-global",
                                  "copyreg-reconstructor"])
def test_gadgets_are_live_attacks_for_a_plain_unpickler(tmp_path, name):
    """Proof the hostile cases are real: a plain `pickle.loads` (in a throwaway process) runs them."""
    marker = tmp_path / "ran"
    raw = cp.gadgets(marker)[name]
    code = "import pickle, sys\ntry:\n    pickle.loads(sys.stdin.buffer.read())\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], input=raw, check=True, timeout=60)
    assert marker.exists() or name == "copyreg-reconstructor"  # _reconstructor(os.system, object, s) fails late


# ------------------------------------------------------------------------------------------ REINFORCE


@pytest.fixture(scope="module")
def policies():
    torch.manual_seed(0)
    return {layers: ca.Policy(4, 2, 8, layers) for layers in (2, 3)}


@pytest.mark.parametrize("layers", [2, 3])
def test_reinforce_module_gives_the_modules_own_probabilities(tmp_path, policies, layers):
    policy = policies[layers]
    raw = ca.save_as_main(policy)
    assert classify_model_pt(raw) == "reinforce"
    agent = load_reinforce(_files(tmp_path, "model.pt", raw), CARTPOLE.observation_space, CARTPOLE.action_space)
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    expected = policy(torch.as_tensor(obs)).detach().numpy()
    assert np.array_equal(agent.policy.forward(torch.as_tensor(obs)).numpy(), expected)
    assert agent.policy.act(obs).tolist() == expected.argmax(axis=1).tolist()


def test_module_saved_on_a_gpu_loads_on_the_cpu(policies):
    raw = cp.on_gpu(ca.save_as_main(policies[2]))
    assert b"cuda:0" in raw
    layers = read_reinforce(raw)
    assert all(w.device.type == "cpu" for _, w, _ in layers)
    assert torch.equal(layers[0][1], policies[2].fc1.weight.detach())


def test_reinforce_for_the_wrong_env_is_a_space_mismatch(tmp_path, policies):
    lunar = gym.make("LunarLander-v3")
    with pytest.raises(SpaceMismatchError, match="input has 8 values"):
        load_reinforce(_files(tmp_path, "model.pt", ca.save_as_main(policies[2])), lunar.observation_space,
                       lunar.action_space)


def test_stochastic_draws_follow_the_episode_not_the_slot():
    probs = np.tile([[0.2, 0.3, 0.5]], (8, 1))
    rngs = [np.random.default_rng(7)] + [None] * 7
    shifted = [None] * 5 + [np.random.default_rng(7)] + [None] * 2
    first, second = sample(probs, rngs), sample(probs, shifted)
    assert first[0] == second[5] and first[1:].tolist() == [0] * 7
    draws = [sample(probs, [np.random.default_rng(s)] + [None] * 7)[0] for s in range(2000)]
    assert np.bincount(draws, minlength=3) / 2000 == pytest.approx([0.2, 0.3, 0.5], abs=0.04)


# ------------------------------------------------------------------------------------------ CleanRL


def test_cleanrl_state_dict_rebuilds_the_actor(tmp_path):
    torch.manual_seed(1)
    agent = ca.Agent(4, 2)
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    assert classify_model_pt(buffer.getvalue()) == "cleanrl_ppo"
    loaded = load_cleanrl(_files(tmp_path, "model.pt", buffer.getvalue()), CARTPOLE.observation_space,
                          CARTPOLE.action_space)
    obs = torch.randn(8, 4)
    assert torch.allclose(loaded.policy.forward(obs), torch.softmax(agent.actor(obs), dim=1).detach())
    assert loaded.format == "cleanrl_ppo" and loaded.details == {"hidden": [64, 64]}


def test_every_hostile_reinforce_case_is_refused_in_process(tmp_path, marker):
    """The same cases as the end-to-end corpus, straight through classification and loading."""
    for name, raw in cp.reinforce_cases(marker).items():
        with pytest.raises(EvaluationError):
            kind = classify_model_pt(raw)
            files = _files(tmp_path, "model.pt", raw)
            (load_reinforce if kind == "reinforce" else load_cleanrl)(files, CARTPOLE.observation_space,
                                                                        CARTPOLE.action_space)
        assert not marker.exists(), name


def test_results_json_claim_for_a_card_without_one():
    from evaluator.card import parse_claimed_episodes, parse_results_claim

    unit8 = b'{"env_id": "LunarLander-v2", "mean_reward": -150.5, "std_reward": 88.0, "n_evaluation_episodes": 10}'
    claim = parse_results_claim(unit8)
    assert (claim.mean_reward, claim.std_reward, claim.env_id) == (-150.5, 88.0, "LunarLander-v2")
    assert parse_claimed_episodes(unit8) == 10
    unit2 = b'{"env_id": "Taxi-v3", "mean_reward": 7.5, "n_eval_episodes": 100}'
    assert parse_results_claim(unit2).std_reward is None and parse_claimed_episodes(unit2) == 100
    for raw in (None, b"", b"[1]", b'{"mean_reward": "lots"}', b'{"mean_reward": true}', b"{"):
        assert parse_results_claim(raw) is None
