"""Issue 10, acceptance 2: hostile and malformed course agents (Q-table pickles, REINFORCE
modules, state dicts) each fail as a clean `failed` result with a reason, and nothing runs (a
payload that ran would create the marker file)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import localhub
from evaluator.evaluate import evaluate
from scripts import course_agents as ca
from tests.evaluator import course_payloads as cp

# case -> (error_code, words the error must contain)
EXPECTED = {
    "q-os-system": ("unsafe_content", "posix.system"),
    "q-builtins-exec": ("unsafe_content", "builtins.exec"),
    "q-getattr-gadget": ("unsafe_content", "builtins.getattr"),
    "q-attrgetter-gadget": ("unsafe_content", "operator.attrgetter"),
    "q-numpy-load": ("unsafe_content", "numpy.load"),
    "q-torch-load": ("unsafe_content", "torch.load"),
    "q-copyreg-reconstructor": ("unsafe_content", "copyreg._reconstructor"),
    "q-copyreg-extension": ("unsafe_content", "extension 240"),
    "q-hidden-stack-global": ("unsafe_content", "posix.system"),
    "q-object-array": ("unsafe_content", "numbers only"),
    "q-nan-table": ("invalid_weights", "NaN"),
    "q-inf-table": ("invalid_weights", "infinite"),
    "q-wrong-shape": ("space_mismatch", "16 states x 4 actions"),
    "q-truncated": ("corrupt_file", "truncated"),
    "q-unknown-env-tag": ("unknown_env", "FrozenLake-v9"),
    "q-for-cartpole": ("space_mismatch", "Discrete"),
    "r-os-system-attribute": ("unsafe_content", "posix.system"),
    "r-getattr-gadget": ("unsafe_content", "builtins.getattr"),
    "r-attrgetter-gadget": ("unsafe_content", "operator.attrgetter"),
    "r-numpy-load": ("unsafe_content", "numpy.load"),
    "r-torch-load": ("unsafe_content", "torch.load"),
    "r-copyreg-reconstructor": ("unsafe_content", "copyreg._reconstructor"),
    "r-copyreg-extension": ("unsafe_content", "extension 240"),
    "r-hidden-stack-global": ("unsafe_content", "posix.system"),
    "r-extra-layer": ("unsupported_format", "fc4"),
    "r-tanh-module": ("unsupported_format", "torch.nn.modules.activation.Tanh"),
    "r-custom-activation": ("unsupported_format", "__main__.Swish"),
    "r-cuda-storage-type": ("unsafe_content", "torch.cuda.FloatStorage"),
    "r-truncated": ("corrupt_file", "zip"),
    "r-state-dict-unknown": ("unsupported_format", "fc9.weight"),
    "r-cleanrl-missing-key": ("invalid_weights", "missing actor.4.bias"),
    "r-cleanrl-extra-key": ("invalid_weights", "unexpected actor.6.weight"),
    "r-torchscript-named-model-pt": ("unsupported_format", "TorchScript"),
    "r-legacy-format": ("unsupported_format", "legacy"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-course")
    marker = tmp_path_factory.mktemp("marker") / "payload-ran"
    cases = {**{k: ("q-learning.pkl", v, "Taxi-v3") for k, v in cp.qtable_cases(marker).items()},
             **{k: ("model.pt", v, "CartPole-v1") for k, v in cp.reinforce_cases(marker).items()}}
    cases["q-unknown-env-tag"] = ("q-learning.pkl", cp.qtable_dict(__import__("numpy").zeros((16, 4))),
                                  "FrozenLake-v9")
    cases["q-for-cartpole"] = ("q-learning.pkl", cp.qtable_dict(__import__("numpy").zeros((16, 4))), "CartPole-v1")
    for name, (filename, raw, env_id) in cases.items():
        card = ca.model_card(name, env_id, [env_id, "custom-implementation"], 1.0, 0.0)
        ca._write(root / "evil" / name, {filename: raw, "README.md": card})
    with localhub.serve(root, state=tmp_path_factory.mktemp("state")) as hub:
        cache = tmp_path_factory.mktemp("cache")
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = dict(zip(cases, pool.map(
                lambda n: evaluate(f"evil/{n}", endpoint=hub.url, cache_dir=cache, token=False, episodes=2), cases),
                strict=True))
        yield {"results": results, "marker": marker, "names": set(cases)}


def test_every_case_is_built(world):
    assert world["names"] == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_hostile_course_agent_fails_cleanly(world, name):
    code, words = EXPECTED[name]
    result = world["results"][name]
    assert result.status == "failed", f"{name} finished: {result.episode_returns}"
    assert result.error_code == code, f"{name}: {result.error_code}: {result.error}"
    assert words.lower() in result.error.lower(), result.error
    assert result.ranked is False and result.episode_returns is None and len(result.error) < 2000
    assert not world["marker"].exists(), f"{name}: a payload ran"
