"""The hostile corpus, end to end: each case is a repo on a localhub, evaluated through
`evaluate()` (so through the sandbox process), and must end as a `failed` result with a
specific, readable reason, while no payload runs and the calling process carries on.

Everything is generated here (no binary blobs). The sandboxed cases run two at a time in one
module-scoped batch (each sandbox process pays the interpreter and torch start-up)."""

from __future__ import annotations

import base64
import io
import os
import pickle
import signal
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import localhub
from evaluator.evaluate import evaluate
from evaluator.job import Job, execute
from evaluator.sandbox import referee
from tests.evaluator.payloads import SystemPayload
from tests.evaluator.sb3_zip_edit import rewrite_zip
from tests.evaluator.ts_agents import CartPoleLinear

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")]

CARTPOLE_CARD = ("---\nlibrary_name: stable-baselines3\ntags:\n- CartPole-v1\n- reinforcement-learning\n"
                 "model-index:\n- name: PPO\n  results:\n  - task:\n      type: reinforcement-learning\n"
                 "    dataset:\n      name: CartPole-v1\n      type: CartPole-v1\n---\n# agent\n")


def card(env_id: str) -> str:
    return CARTPOLE_CARD.replace("CartPole-v1", env_id)


# ---------------------------------------------------------------------------------------------
# Payloads: each would create `marker` (or crash) if anything ever ran it


class _Bytearray:
    """Permitted by torch's weights-only unpickler, and allocates whatever size it is given."""

    def __reduce__(self):
        return (bytearray, (8 << 30,))


def _payload(marker: Path) -> bytes:
    return pickle.dumps(SystemPayload(f"touch '{marker}'"), protocol=2)


# TorchScript agents (CartPole: obs (batch, 4) -> actions (batch,) or logits (batch, 2))


class TSLoop(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            i = (i + 1) % 1000
        return torch.zeros(x.shape[0], dtype=torch.long)


class TSReadFile(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, shared=False, size=1, dtype=torch.uint8)
        return (data[0].long() % 2).expand(x.shape[0])


class TSAlloc(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep: list[torch.Tensor] = []
        while len(keep) >= 0:
            keep.append(torch.empty(1 << 28))
        return torch.zeros(x.shape[0], dtype=torch.long)


class TSNaN(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2), float("nan"))


class TSOutOfRange(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), 7, dtype=torch.long)


class TSWrongShape(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 3)


class TSSlow(torch.nn.Module):
    """A valid controller that takes a while per step: killed mid-episode by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.0, 0.0], [0.0, 0.0], [-1.0, 1.0], [-1.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(64, 64)
        for _ in range(300):
            a = torch.tanh(a @ a)
        return x @ self.w + a[0, 0] * 0.0


def _script(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# SB3 zips


def _state(zip_bytes: bytes) -> dict[str, torch.Tensor]:
    raw = zipfile.ZipFile(io.BytesIO(zip_bytes)).read("policy.pth")
    return torch.load(io.BytesIO(raw), weights_only=True)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _zip_bomb(zip_bytes: bytes) -> bytes:
    """300 MB of zeros in a ~300 KB member (over the per-member limit), declared honestly."""
    out = io.BytesIO(rewrite_zip(zip_bytes))
    with zipfile.ZipFile(out, "a") as zf:
        info = zipfile.ZipInfo("bomb.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as handle:
            chunk = bytes(1 << 24)
            for _ in range(18):
                handle.write(chunk)
    return out.getvalue()


def _many_entries(zip_bytes: bytes, n: int = 100_000) -> bytes:
    out = io.BytesIO(rewrite_zip(zip_bytes))
    with zipfile.ZipFile(out, "a") as zf:
        for i in range(n):
            zf.writestr(f"e/{i}", b"")
    return out.getvalue()


@pytest.fixture(scope="module")
def base_zip(tmp_path_factory) -> bytes:
    """An (untrained) PPO CartPole agent as SB3 saves it: a valid agent to poison."""
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=3,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    path = tmp_path_factory.mktemp("base") / "ppo-CartPole-v1.zip"
    model.save(path)
    return path.read_bytes()


# case id -> (files, expected error_code, words in the error, evaluate kwargs)
def _corpus(zip_bytes: bytes, marker: Path, secret: Path) -> dict[str, tuple[dict, str, str, dict]]:
    payload = base64.b64encode(_payload(marker)).decode()

    def serialized(key, module=None, type_=None):
        def edit(data):
            data[key][":serialized:"] = payload
            if module:
                data[key]["__module__"] = module
                data[key]["__init__"] = "<function Evil.__init__ at 0x7f00>"
            if type_:
                data[key][":type:"] = type_
        return edit

    def invented_kwarg(data):
        data["policy_kwargs"] = {":type:": "<class 'dict'>", ":serialized:": payload, "evil_kwarg": 1}

    def net_arch(data):
        data["policy_kwargs"] = {"net_arch": [200000, 200000]}

    state = _state(zip_bytes)
    nan_state = {k: (torch.full_like(v, float("nan")) if i == 0 else v) for i, (k, v) in enumerate(state.items())}
    reduce_state = {**state, "evil": SystemPayload(f"touch '{marker}'")}
    bomb_state = {**state, "evil": _Bytearray()}
    cfg = "!!python/object/apply:collections.OrderedDict\n"
    sb3 = "ppo-CartPole-v1.zip"
    ts = {"README.md": CARTPOLE_CARD}
    return {
        "payload-in-policy-class": ({sb3: rewrite_zip(zip_bytes, serialized("policy_class", module="__main__"))},
                                    "unsafe_content", "custom policy class __main__.Evil", {}),
        "payload-in-observation-space": ({sb3: rewrite_zip(zip_bytes, serialized(
            "observation_space", type_="<class 'evil.spaces.Space'>"))}, "unsupported_format", "not a gym space", {}),
        "payload-under-invented-kwarg": ({sb3: rewrite_zip(zip_bytes, invented_kwarg)}, "unsupported_format",
                                         "evil_kwarg", {}),
        "reduce-in-policy-pth": ({sb3: rewrite_zip(zip_bytes, replace={"policy.pth": _torch_bytes(reduce_state)})},
                                 "unsafe_content", "weights-only", {}),
        "allocation-bomb-in-policy-pth": (
            {sb3: rewrite_zip(zip_bytes, replace={"policy.pth": _torch_bytes(bomb_state)})},
                                          "memory_limit", "out of memory", {}),
        "zip-bomb": ({sb3: _zip_bomb(zip_bytes)}, "too_large", "bytes uncompressed", {}),
        "100k-entries": ({sb3: _many_entries(zip_bytes)}, "too_large", "100", {}),
        "parent-path-member": ({sb3: rewrite_zip(zip_bytes, extra={"../../evil.sh": b"touch x"})}, "corrupt_file",
                               "unsafe path", {}),
        "huge-net-arch": ({sb3: rewrite_zip(zip_bytes, net_arch)}, "too_large", "parameters", {}),
        "nan-weights": ({sb3: rewrite_zip(zip_bytes, replace={"policy.pth": _torch_bytes(nan_state)})},
                        "invalid_weights", "NaN", {}),
        "vec-normalize-payload": ({sb3: zip_bytes, "vec_normalize.pkl": _payload(marker)}, "unsafe_content",
                                  "allowlist", {}),
        "q-learning-payload": ({"q-learning.pkl": _payload(marker)}, "unsafe_content", "allowlist", {}),
        "config-yml-os-system": ({sb3: zip_bytes,
                                  "config.yml": f"!!python/object/apply:os.system ['touch {marker}']\n"},
                                 "unsafe_content", "", {}),
        "config-yml-normalize-code": ({sb3: zip_bytes, "vec_normalize.pkl": b"",
                                       "config.yml": cfg + f"- - - normalize\n    - \"__import__('os').system('touch "
                                                           f"{marker}')\"\n"}, "unsafe_content", "normalize", {}),
        "module-env-id": ({sb3: zip_bytes, "README.md": card("os:Foo-v0")}, "unknown_env", "imports code", {}),
        "ts-reads-etc-hostname": ({"agent.pt": _script(TSReadFile("/etc/hostname")), **ts}, "invalid_action",
                                  "/etc/hostname", {}),
        "ts-reads-host-secret": ({"agent.pt": _script(TSReadFile(str(secret))), **ts}, "invalid_action",
                                 secret.name, {}),
        "ts-allocates-without-bound": ({"agent.pt": _script(TSAlloc()), **ts}, "memory_limit", "memory", {}),
        "ts-nan-actions": ({"agent.pt": _script(TSNaN()), **ts}, "invalid_action", "NaN", {}),
        "ts-out-of-range": ({"agent.pt": _script(TSOutOfRange()), **ts}, "invalid_action", "outside", {}),
        "ts-wrong-shape": ({"agent.pt": _script(TSWrongShape()), **ts}, "invalid_action", "shape (8, 3)", {}),
        "ts-not-torchscript": ({"agent.pt": b"PK\x03\x04 not a module", **ts}, "corrupt_file", "TorchScript", {}),
    }


@pytest.fixture(scope="module")
def world(base_zip, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-hub")
    work = tmp_path_factory.mktemp("hostile-work")
    marker, secret = work / "payload-ran", work / "host-secret.txt"
    secret.write_text("1")
    os.chmod(secret, 0o644)
    corpus = _corpus(base_zip, marker, secret)
    repos = {**{name: files for name, (files, *_rest) in corpus.items()},
             "ts-loops-forever": {"agent.pt": _script(TSLoop()), "README.md": CARTPOLE_CARD},
             "ts-slow": {"agent.pt": _script(TSSlow()), "README.md": CARTPOLE_CARD},
             "ts-good": {"agent.pt": _script(CartPoleLinear()), "README.md": CARTPOLE_CARD},
             "good": {"ppo-CartPole-v1.zip": base_zip}}
    for name, files in repos.items():
        files = {"README.md": CARTPOLE_CARD, **files}
        for fname, content in files.items():
            path = root / "evil" / name / fname
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
    with localhub.serve(root, state=tmp_path_factory.mktemp("hostile-state")) as hub:
        yield {"hub": hub, "corpus": corpus, "marker": marker, "secret": secret, "work": work,
               "cache": work / "cache"}


def _evaluate(world, name: str, **kwargs):
    return evaluate(f"evil/{name}", endpoint=world["hub"].url, cache_dir=world["cache"], token=False, **kwargs)


@pytest.fixture(scope="module")
def corpus_results(world):
    """Every corpus case evaluated once, two sandboxes at a time (the machine has two cores)."""
    names = list(world["corpus"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(names, pool.map(lambda n: _evaluate(world, n, episodes=2), names), strict=True))
    return results


@pytest.mark.parametrize("name", [
    "payload-in-policy-class", "payload-in-observation-space", "payload-under-invented-kwarg",
    "reduce-in-policy-pth", "allocation-bomb-in-policy-pth", "zip-bomb", "100k-entries", "parent-path-member",
    "huge-net-arch", "nan-weights", "vec-normalize-payload", "q-learning-payload", "config-yml-os-system",
    "config-yml-normalize-code", "module-env-id", "ts-reads-etc-hostname", "ts-reads-host-secret",
    "ts-allocates-without-bound", "ts-nan-actions", "ts-out-of-range", "ts-wrong-shape", "ts-not-torchscript",
])
def test_corpus_case_fails_cleanly(world, corpus_results, name):
    _, code, words, _ = world["corpus"][name]
    result = corpus_results[name]
    assert result.status == "failed", f"{name} finished: {result.episode_returns}"
    assert result.error_code == code, f"{name}: {result.error_code}: {result.error}"
    assert words.lower() in result.error.lower(), result.error
    assert len(result.error) > 20 and result.ranked is False and result.episode_returns is None
    assert not world["marker"].exists(), f"{name}: a payload ran"


def test_infinite_loop_is_a_timeout(world, monkeypatch):
    """A policy call that never returns is stopped at the per-call deadline; an evaluation
    that outlives its whole budget is stopped too."""
    monkeypatch.setattr(referee, "ACT_SECONDS", 5.0)
    result = _evaluate(world, "ts-loops-forever", episodes=1)
    assert result.status == "failed" and result.error_code == "timeout", result.error
    assert "took too long to choose its actions" in result.error
    monkeypatch.setattr(referee, "ACT_SECONDS", 600.0)
    monkeypatch.setattr(referee, "job_timeout", lambda job: 12.0)
    result = _evaluate(world, "ts-loops-forever", episodes=1)
    assert result.error_code == "timeout" and "did not finish within 12 s" in result.error, result.error


def _sandbox_children() -> list[int]:
    """Pids of sandbox processes descending from this test process."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"evaluator.sandbox.player" not in cmdline or b"bwrap" in cmdline.split(b"\0")[0]:
            continue
        pid = int(entry.name)
        while pid > 1:
            try:
                stat_text = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            pid = int(stat_text.rsplit(")", 1)[1].split()[1])
            if pid == me:
                found.append(int(entry.name))
                break
    return found


def test_sandbox_killed_mid_episode_is_a_failed_result(world):
    killed: list[int] = []

    def progress(done, total):  # after the first finished episode: mid-evaluation
        if not killed:
            for pid in _sandbox_children():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    result = _evaluate(world, "ts-slow", episodes=16, progress=progress)
    assert killed, "no sandbox process was found to kill"
    assert result.status == "failed" and result.error_code == "sandbox_crash", result.error
    assert "SIGKILL" in result.error


def test_after_the_corpus_a_normal_agent_still_evaluates_exactly(world, corpus_results, tmp_path):
    """Same calling process, after every hostile case: the sandboxed result equals an
    unsandboxed run of the same job, episode by episode; a TorchScript agent runs too."""
    assert corpus_results  # the corpus ran first in this process
    result = _evaluate(world, "good", episodes=10)
    assert result.status == "finished", result.error
    snapshot = next(world["cache"].glob("models--evil--good/snapshots/*"))
    job = Job(str(snapshot), "sb3", "ppo-CartPole-v1.zip", ("ppo-CartPole-v1.zip", "README.md"), "CartPole-v1", 10,
              tuple(result.seeds))
    unsandboxed = execute(job)
    assert result.episode_returns == unsandboxed.episodes.returns
    assert result.episode_lengths == unsandboxed.episodes.lengths
    ts = _evaluate(world, "ts-good", episodes=4)
    assert ts.status == "finished" and ts.format == "torchscript", ts.error
    assert min(ts.episode_returns) > 100
    assert not world["marker"].exists()
    leftovers = [p.name for p in world["work"].iterdir() if p.name not in ("cache", world["secret"].name)]
    assert leftovers == [], "something wrote outside the output dir"
