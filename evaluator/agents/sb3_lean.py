"""SB3 policies called lean: SB3's own actions, bit for bit, at a fraction of `predict`'s cost.

Why: at 8 rows per call, `BasePolicy.predict` spends most of its time on bookkeeping, not
arithmetic: `set_training_mode(False)` walks every module on every call, `obs_to_tensor` checks
shapes against the space, each `nn.Module.__call__` goes through hooks, and a deterministic
actor-critic action builds a `Categorical` (with argument validation and a `logsumexp`) only to
take an argmax. Here the policy is in eval mode once (at build), calls run under
`torch.inference_mode`, `Sequential` stacks of `Linear` and activations run as the functional
calls their `forward` makes, and no distribution object is built.

Exactness: every number comes from the same kernels on the same inputs as SB3's path. The
one shortcut that skips a computation, a discrete argmax taken on the logits instead of on
`softmax(logits - logsumexp(logits))`, is taken only when the top logit beats the second by a
margin no float32 rounding of that softmax can close (so both argmaxes are the same index); any
other batch (near-ties, non-finite values) goes through SB3's own `_predict`, which also raises
SB3's own errors. `tests/evaluator/test_sb3_lean.py` checks the actions against `predict` on
the real RL Zoo agents and on forced ties.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional

Forward = Callable[[torch.Tensor], torch.Tensor]

# A discrete argmax on the logits equals SB3's argmax on the probabilities when the best logit
# leads the second by more than this many float32 ulps of the largest magnitude involved: the
# softmax's roundings (a subtraction, an exp, a division: a few ulps each) cannot close it.
_TIE_ULPS = 64.0
_F32_EPS = float(np.finfo(np.float32).eps)


def fast_forward(module: nn.Module, leaves: list | None = None) -> Forward:
    """`module`'s forward as a plain function: `Sequential`s of `Linear`, `Tanh`, `ReLU`,
    `Flatten` and `Identity` run as the functional calls their own `forward` makes; any other
    module is called as itself (same numbers either way, fewer Python layers). `leaves`, when
    given, gets what each leaf does (`batch_invariant_graph` reads it)."""
    leaves = [] if leaves is None else leaves
    kind = type(module)
    if kind is nn.Sequential:
        leaves.append(("sequential", None))
        steps = [fast_forward(child, leaves) for child in module]

        def chain(x: torch.Tensor) -> torch.Tensor:
            for step in steps:
                x = step(x)
            return x

        return chain
    if kind is nn.Linear:
        leaves.append(("linear", module.out_features))
        weight, bias = module.weight, module.bias
        return lambda x: functional.linear(x, weight, bias)
    if kind is nn.Tanh:
        leaves.append(("tanh", None))
        return torch.tanh
    if kind is nn.ReLU and not module.inplace:
        leaves.append(("exact", None))
        return torch.relu
    if kind is nn.Identity:
        leaves.append(("exact", None))
        return lambda x: x
    if kind is nn.Flatten:
        leaves.append(("exact", None))
        start, end = module.start_dim, module.end_dim
        return lambda x: x.flatten(start, end)
    flatten = getattr(module, "flatten", None)
    if kind.__name__ == "FlattenExtractor" and type(flatten) is nn.Flatten and len(list(module.children())) == 1:
        return fast_forward(flatten, leaves)
    leaves.append(("opaque", None))
    return module


def batch_invariant_graph(leaves: list) -> bool:
    """Whether a graph of these leaves computes each row the same at any multiple of the policy
    batch, given Linear layers that do (checked by probes, `LeanSB3.fused_ok`): ReLU, Flatten
    and Identity are exact; torch runs `tanh` with a vectorised function but takes the elements
    past the last whole pair of vectors with the scalar one, which may round differently, so a
    `tanh` is accepted only on rows of a multiple of 8 values (8 rows of them fill whole pairs
    of 16-float vectors at every multiple of 8 rows). Anything else (a module called as itself)
    is not vouched for."""
    width = None
    for kind, value in leaves:
        if kind == "opaque":
            return False
        if kind == "sequential":
            width = None
        elif kind == "linear":
            width = value
        elif kind == "tanh" and (width is None or width % 8):
            return False
    return True


def _plain_observations(space: spaces.Space) -> bool:
    """Spaces whose batch goes to torch as is (no dict, no image transposition)."""
    from stable_baselines3.common.preprocessing import is_image_space

    if isinstance(space, spaces.Box):
        return not is_image_space(space)
    return isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))


def _needed_lead(top: float, k: int) -> float:
    return _TIE_ULPS * _F32_EPS * (1.0 + 2.0 * top + math.log(k))


def clear_lead(logits: np.ndarray) -> bool:
    """Whether every row's best logit leads the others by more than any rounding of SB3's
    `softmax(logits - logsumexp(logits))` can close (all finite). Float32 values and their
    differences are exact in float64. A policy batch's few numbers are checked in plain Python
    (cheaper than numpy calls there), a fused call's many with numpy: the same rule."""
    return clear_argmax(logits) is not None


def clear_argmax(logits: np.ndarray) -> np.ndarray | None:
    """Each row's argmax (int64, as torch's) when every row has a `clear_lead`, else None. With
    a clear lead there is no tie, so any argmax is SB3's: it comes from the same pass that
    measures the lead."""
    if len(logits) > 8:
        return _clear_argmax_many(logits)
    rows = logits.tolist()
    if not math.isfinite(sum(map(sum, rows))):  # NaN or inf (or an overflowing sum): SB3's path decides
        return None
    if not rows or len(rows[0]) < 2:
        return np.zeros(len(rows), dtype=np.int64)
    top, lead, best = 0.0, math.inf, []
    for row in rows:
        ordered = sorted(row)
        first = ordered[-1]
        top = max(top, -ordered[0], first)
        lead = min(lead, first - ordered[-2])
        best.append(row.index(first))
    if not lead > _needed_lead(top, len(rows[0])):
        return None
    return np.array(best, dtype=np.int64)


def _clear_argmax_many(logits: np.ndarray) -> np.ndarray | None:
    a = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(a).all():
        return None
    if a.ndim != 2 or a.shape[1] < 2:
        return np.zeros(len(a), dtype=np.int64)
    top2 = np.partition(a, a.shape[1] - 2, axis=1)[:, -2:]  # each row's second best, then its best
    if not float((top2[:, 1] - top2[:, 0]).min()) > _needed_lead(float(np.abs(a).max()), a.shape[1]):
        return None
    return a.argmax(axis=1)


def _clear_lead_many(logits: np.ndarray) -> bool:
    return _clear_argmax_many(logits) is not None


def _gaussian_mode(hidden: Forward, mean_net: Forward, squash: Forward | None, dist: Any,
                   log_std: torch.Tensor) -> Callable[[Any], torch.Tensor | None] | None:
    """The mode of a gSDE distribution: `mean` (tanh'd when squashed). Its `Normal(mean,
    sqrt(latent**2 @ std**2 + eps))` refuses a NaN mean or scale; with std**2 finite and
    positive (checked once) and a finite latent the scale cannot be NaN: only those are checked."""
    if getattr(dist, "bijector", None) is not None and squash is None:
        squash = torch.tanh
    try:
        std = dist.get_std(log_std.detach())
    except Exception:  # noqa: BLE001 - an odd distribution: SB3's own path decides
        return None
    square = std ** 2
    if not bool((torch.isfinite(square) & (square > 0)).all()):  # else 0 * inf could make a NaN scale
        return None

    def mode(obs: Any) -> torch.Tensor | None:
        h = hidden(obs)
        mean = mean_net(h)
        if not bool(torch.isfinite(h).all()) or bool(torch.isnan(mean).any()):
            return None
        return squash(mean) if squash is not None else mean

    return mode


def _is_contrib(policy: nn.Module, package: str, name: str) -> bool:
    import importlib

    try:
        cls = getattr(importlib.import_module(f"sb3_contrib.{package}.policies"), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(policy, cls)


def _numpy(actions: torch.Tensor | np.ndarray) -> np.ndarray:
    return actions if isinstance(actions, np.ndarray) else actions.numpy()


def _rows(obs: Any, rows: slice) -> Any:
    return {k: v[rows] for k, v in obs.items()} if isinstance(obs, dict) else obs[rows]


class LeanSB3:
    """Deterministic actions of a rebuilt SB3 policy, exactly as `policy.predict(obs, True)`."""

    def __init__(self, policy: nn.Module) -> None:
        from stable_baselines3.common.preprocessing import preprocess_obs

        policy.set_training_mode(False)
        self.policy = policy
        self.space = policy.action_space
        self.obs_space = policy.observation_space
        self.plain_obs = _plain_observations(self.obs_space)
        self.preprocess = lambda obs: preprocess_obs(obs, policy.observation_space,
                                                     normalize_images=policy.normalize_images)
        if self.plain_obs and isinstance(self.obs_space, spaces.Box):  # SB3's own branch for these, taken once
            self.preprocess = lambda obs: obs.float()
        self.box = isinstance(self.space, spaces.Box)
        self.shape = tuple(self.space.shape or ())
        if self.box:
            self.low, self.high = policy.action_space.low, policy.action_space.high
        # `head` = `finish(raw(obs))` where the family allows: `raw` the network's output (logits,
        # means, Q-values), `finish` the action taken from it (a tensor or an array; None:
        # `_predict` decides).
        self.raw: Forward | None = None
        self.finish: Callable[[torch.Tensor], torch.Tensor | np.ndarray | None] | None = None
        self.leaves: list = []  # what `raw`'s modules do (batch_invariant_graph)
        self.fused: dict[int, bool] = {}  # rows -> whether a call of that many rows may be fused
        self.head = self._head()

    # ------------------------------------------------------------------ per family
    def _head(self) -> Callable[[Any], torch.Tensor | None] | None:
        """A lean forward from a tensor batch to actions (it returns None to fall back on
        `_predict` for that batch), or None when this policy has no lean form."""
        from stable_baselines3.common.policies import ActorCriticPolicy
        from stable_baselines3.dqn.policies import DQNPolicy
        from stable_baselines3.sac.policies import SACPolicy
        from stable_baselines3.td3.policies import TD3Policy

        p = self.policy
        if isinstance(p, ActorCriticPolicy):
            return self._actor_critic()
        if isinstance(p, DQNPolicy):
            extract = fast_forward(p.q_net.features_extractor, self.leaves)
            net = fast_forward(p.q_net.q_net, self.leaves)
            self.raw = raw = lambda obs: net(extract(self.preprocess(obs)))  # noqa: E731
            self.finish = finish = lambda q: q.argmax(dim=1).reshape(-1)  # noqa: E731
            return lambda obs: finish(raw(obs))
        if isinstance(p, TD3Policy):
            extract, mu = fast_forward(p.actor.features_extractor), fast_forward(p.actor.mu)
            return lambda obs: mu(extract(self.preprocess(obs)))
        if isinstance(p, SACPolicy) or _is_contrib(p, "tqc", "TQCPolicy"):
            return self._squashed_gaussian()
        if _is_contrib(p, "ars", "ARSPolicy"):
            extract, net = fast_forward(p.features_extractor), fast_forward(p.action_net)
            if self.box:
                return lambda obs: net(extract(self.preprocess(obs)))
            return lambda obs: torch.argmax(net(extract(self.preprocess(obs))), dim=1)
        return None  # QR-DQN and the rest: `_predict` (no distribution object there either)

    def _actor_critic(self) -> Callable[[Any], torch.Tensor | None] | None:
        p = self.policy
        extractor = p.mlp_extractor
        leaves: list = []
        if type(extractor).__name__ == "MlpExtractor":
            latent = fast_forward(extractor.policy_net, leaves)
        elif type(extractor).__name__ == "LegacyMlpExtractor":
            shared, pi = fast_forward(extractor.shared_net, leaves), fast_forward(extractor.policy_net, leaves)
            latent = lambda x: pi(shared(x))  # noqa: E731
        else:
            return None
        features = fast_forward(getattr(p, "pi_features_extractor", None) or p.features_extractor, leaves)
        head = fast_forward(p.action_net, leaves)
        raw = lambda obs: head(latent(features(self.preprocess(obs))))  # noqa: E731

        if isinstance(self.space, spaces.Discrete):
            def argmax(logits: torch.Tensor) -> np.ndarray | None:
                return clear_argmax(logits.numpy())

            self.raw, self.finish, self.leaves = raw, argmax, leaves
            return lambda obs: argmax(raw(obs))
        if not (self.box and hasattr(p, "log_std")):
            return None
        if p.use_sde:
            return _gaussian_mode(lambda obs: latent(features(self.preprocess(obs))), head, None, p.action_dist,
                                  p.log_std)
        # DiagGaussian: Normal(mean, exp(log_std)) validates loc (no NaN) and scale (> 0); the
        # scale does not depend on the observation, so it is checked once, here.
        if not bool(torch.all(p.log_std.detach().exp() > 0)):
            return None

        def finite(mean: torch.Tensor) -> torch.Tensor | None:
            return None if bool(torch.isnan(mean).any()) else mean

        self.raw, self.finish, self.leaves = raw, finite, leaves
        return lambda obs: finite(raw(obs))

    def _squashed_gaussian(self) -> Callable[[Any], torch.Tensor | None] | None:
        """SAC/TQC actors: `tanh(mu(latent))`. `Normal(mean, exp(clamped log_std))` refuses NaN
        only, so a batch with a NaN mean or log-std goes to `_predict`; with gSDE, as below."""
        actor = self.policy.actor
        if not isinstance(self.space, spaces.Box):
            return None
        features, latent = fast_forward(actor.features_extractor), fast_forward(actor.latent_pi)
        mu = fast_forward(actor.mu)
        hidden = lambda obs: latent(features(self.preprocess(obs)))  # noqa: E731
        if getattr(actor, "use_sde", False):
            return _gaussian_mode(hidden, mu, torch.tanh, actor.action_dist, actor.log_std)
        log_std = fast_forward(actor.log_std)

        def squashed(obs: Any) -> torch.Tensor | None:
            h = hidden(obs)
            mean = mu(h)
            if bool(torch.isnan(mean).any()) or bool(torch.isnan(log_std(h)).any()):
                return None
            return torch.tanh(mean)

        return squashed

    # ------------------------------------------------------------------ the call
    def to_tensor(self, obs: Any) -> Any:
        if self.plain_obs:
            return torch.from_numpy(np.ascontiguousarray(obs))
        tensor, _ = self.policy.obs_to_tensor(obs)
        return tensor

    def act(self, obs: Any) -> np.ndarray:
        """SB3's `predict(obs, deterministic=True)[0]` for a batch (post-processing included)."""
        with torch.inference_mode():
            x = self.to_tensor(obs)
            actions = self.head(x) if self.head is not None else None
            if actions is None:
                actions = self.policy._predict(x, deterministic=True)
            return self._post(_numpy(actions).reshape((-1, *self.shape)))

    def act_many(self, obs: Any, batch: int) -> np.ndarray:
        """`act` on each `batch` rows of `obs` in turn, concatenated; computed in one call of all
        the rows where that gives the same numbers (`fused_ok`), else batch by batch."""
        n = len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)
        if n <= batch:
            return self.act(obs)
        if n % batch == 0 and self.fused_ok(n, batch):
            with torch.inference_mode():
                actions = self.finish(self.raw(self.to_tensor(obs)))
                if actions is not None:  # else a near-tie or a NaN somewhere: batch by batch below
                    return self._post(_numpy(actions).reshape((-1, *self.shape)))
        return np.concatenate([self.act(_rows(obs, slice(k, k + batch))) for k in range(0, n, batch)])

    def fused_ok(self, n: int, batch: int) -> bool:
        """Whether `raw` gives every row of an `n`-row call bitwise what it gives that row in a
        `batch`-row call. The graph must be one `batch_invariant_graph` accepts, and probes of
        random observations must agree for this `n`: which GEMM kernel (and how it splits the
        rows) depends on the shapes only, never on the values, so an `n` that agrees on probes
        agrees on all inputs. Decided once per `n`."""
        if n not in self.fused:
            self.fused[n] = self._probe(n, batch)
        return self.fused[n]

    def _probe(self, n: int, batch: int) -> bool:
        if self.raw is None or not self.box_observations() or not batch_invariant_graph(self.leaves):
            return False
        rng = np.random.default_rng(n)
        with torch.inference_mode():
            for _ in range(2):
                obs = rng.standard_normal((n, *self.obs_space.shape)).astype(self.obs_space.dtype)
                whole = self.raw(self.to_tensor(obs))
                parts = torch.cat([self.raw(self.to_tensor(obs[k:k + batch])) for k in range(0, n, batch)])
                if not torch.equal(whole, parts):
                    return False
        return True

    def box_observations(self) -> bool:
        return self.plain_obs and isinstance(self.obs_space, spaces.Box) and self.obs_space.dtype == np.float32

    def _post(self, out: np.ndarray) -> np.ndarray:
        if self.box:
            if self.policy.squash_output:
                return self.policy.unscale_action(out)
            return np.clip(out, self.low, self.high)
        return out
