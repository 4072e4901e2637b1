"""CleanRL PPO agents of the Deep RL course (unit 8, part 1): `model.pt` =
`torch.save(agent.state_dict())` of CleanRL's `Agent`: `critic.{0,2,4}` and `actor.{0,2,4}`
Linear layers with Tanh between them (64 units in the course, read from the shapes here).

A plain state dict, so it goes through `torch.load(weights_only=True, map_location="cpu")`
(`torch_pickle.load_weights_only`); the actor is rebuilt from the keys' shapes and acts as the
course evaluates it: `Categorical(logits=actor(x)).sample()`, per episode (`course_policies`).
The critic is checked for shape and ignored (it does not act).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from evaluator.agents.base import AgentFiles, LoadedAgent
from evaluator.agents.course_policies import CategoricalMLP, check_chain, check_spaces
from evaluator.agents.torch_pickle import MAX_TORCH_BYTES, load_weights_only, read_bounded
from evaluator.errors import InvalidWeightsError
from evaluator.text import clean_text

WHAT = "model.pt"
LAYERS = ("0", "2", "4")
KEYS = frozenset(f"{net}.{i}.{p}" for net in ("actor", "critic") for i in LAYERS for p in ("weight", "bias"))


def looks_like_cleanrl(keys: tuple[str, ...] | list[str]) -> bool:
    """Whether a state dict's names are CleanRL's discrete PPO `Agent` (at least both first layers)."""
    return {"actor.0.weight", "critic.0.weight"} <= set(keys)


def check_keys(keys: set[str]) -> None:
    missing, extra = sorted(KEYS - keys), sorted(keys - KEYS)
    if missing or extra:
        raise InvalidWeightsError(
            f"{WHAT} is not CleanRL's PPO Agent state dict"
            + (f"; missing {', '.join(missing[:6])}" if missing else "")
            + (f"; unexpected {', '.join(clean_text(k, 60) for k in extra[:6])}" if extra else "")
            + " (expected actor.{0,2,4} and critic.{0,2,4} Linear layers).")


def _actor(state: dict[str, Any]):
    import torch
    from torch.nn import functional

    layers = [(state[f"actor.{i}.weight"], state[f"actor.{i}.bias"]) for i in LAYERS]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for j, (weight, bias) in enumerate(layers):
            x = functional.linear(x, weight, bias)
            if j < len(layers) - 1:
                x = torch.tanh(x)
        return functional.softmax(x, dim=1)  # Categorical(logits=...) samples from these probabilities

    return forward


def load_cleanrl(files: AgentFiles, observation_space: gym.Space, action_space: gym.Space) -> LoadedAgent:
    """CleanRL's PPO actor from its state dict, for the env's spaces; nothing from the repo runs."""
    n_inputs, n_actions = check_spaces("A CleanRL PPO agent", observation_space, action_space)
    state = load_weights_only(read_bounded(files, MAX_TORCH_BYTES), WHAT)
    check_keys(set(state))
    for net, outputs in (("actor", n_actions), ("critic", 1)):
        check_chain(f"{WHAT} ({net})", [(f"{net}.{i}", state[f"{net}.{i}.weight"], state[f"{net}.{i}.bias"])
                                        for i in LAYERS], n_inputs, outputs)
    details = {"hidden": [int(state[f"actor.{i}.weight"].shape[0]) for i in LAYERS[:2]]}
    return LoadedAgent(CategoricalMLP(_actor(state), WHAT), "ppo", "cleanrl_ppo", details)
