"""Warm players (evaluator.sandbox.warm / zygote / jail): the same per-episode results as cold
players with 1 or 2 players per evaluation, each job jailed as a cold player is (own uid, no
capability, the seccomp filter, its rlimits), one zygote reused across jobs and retired after a
failure or its job quota, code-bearing and oversized agents on cold players."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from evaluator import errors
from evaluator.envs import resolve_env
from evaluator.evaluate import run_job
from evaluator.job import Job
from evaluator.runner import public_seeds
from evaluator.sandbox import confinement, referee, warm
from evaluator.sandbox.process import ConfinedProcess
from scripts import course_agents as ca
from tests.evaluator.ts_agents import CartPoleLinear

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*"),
]


@pytest.fixture
def fresh_pool(monkeypatch):
    """A pool of this test's own (closed after it)."""
    pool = warm.WarmPool()
    monkeypatch.setattr(warm, "_POOL", pool)
    monkeypatch.setenv(warm.ENABLED_ENV, "1")
    yield pool
    pool.close()


def _sb3(folder: Path, env_id: str, seed: int) -> Job:
    torch.manual_seed(seed)
    model = PPO("MlpPolicy", env_id, seed=seed, device="cpu", policy_kwargs={"net_arch": [16]})
    model.save(folder / f"ppo-{env_id}.zip")
    os.chmod(folder / f"ppo-{env_id}.zip", 0o644)
    return Job(str(folder), "sb3", f"ppo-{env_id}.zip", (f"ppo-{env_id}.zip",), env_id, 6, tuple(public_seeds(6)))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, Job]:
    """Data-only agents of three kinds: discrete and Box SB3, a sampled course format."""
    out = {"ppo-cartpole": _sb3(tmp_path_factory.mktemp("cp"), "CartPole-v1", 1),
           "ppo-pendulum": _sb3(tmp_path_factory.mktemp("pd"), "Pendulum-v1", 2)}
    folder = tmp_path_factory.mktemp("cleanrl")
    ca.package_cleanrl(folder, ca.train_cleanrl("LunarLander-v2", seed=1, updates=1), env_id="LunarLander-v2")
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    names = tuple(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    out["cleanrl"] = Job(str(folder), "cleanrl_ppo", "model.pt", names, "LunarLander-v2", 6, tuple(public_seeds(6)))
    return out


def _numbers(outcome) -> tuple:
    e = outcome.episodes
    return tuple(float(r).hex() for r in e.returns), tuple(e.lengths), tuple(e.seeds)


def test_results_are_identical_with_and_without_the_pool_with_1_or_2_players(jobs, fresh_pool, monkeypatch):
    for name, job in jobs.items():
        monkeypatch.setenv(warm.ENABLED_ENV, "0")
        cold = _numbers(run_job(job, processes=1))
        cold2 = _numbers(run_job(job, processes=2))
        started = fresh_pool.started
        monkeypatch.setenv(warm.ENABLED_ENV, "1")
        warm1 = _numbers(run_job(job, processes=1))
        warm2 = _numbers(run_job(job, processes=2))
        assert cold == cold2 == warm1 == warm2, name
        assert fresh_pool.started - started <= 2, "warm players are reused, not started per job"
    assert fresh_pool.started == 2  # two players at once at most, reused across all six agents


def test_a_warm_pool_is_off_when_asked(jobs, fresh_pool, monkeypatch):
    monkeypatch.setenv(warm.ENABLED_ENV, "0")
    referee.play(jobs["ppo-cartpole"])
    assert fresh_pool.started == 0


def test_code_bearing_and_oversized_agents_get_cold_players(jobs, fresh_pool, monkeypatch, tmp_path):
    torch.jit.save(torch.jit.script(CartPoleLinear()), str(tmp_path / "agent.pt"))
    os.chmod(tmp_path / "agent.pt", 0o644)
    ts = Job(str(tmp_path), "torchscript", "agent.pt", ("agent.pt",), "CartPole-v1", 2, tuple(public_seeds(2)))
    referee.play(ts)
    assert fresh_pool.started == 0
    monkeypatch.setattr(warm, "MAX_JOB_BYTES", 100)
    small_cap = _numbers(referee.play(jobs["ppo-cartpole"]))
    assert fresh_pool.started == 0
    monkeypatch.setattr(warm, "MAX_JOB_BYTES", 48 << 20)
    assert _numbers(referee.play(jobs["ppo-cartpole"])) == small_cap and fresh_pool.started == 1


def test_one_zygote_serves_jobs_until_a_failure_or_its_quota(jobs, fresh_pool, monkeypatch, tmp_path):
    monkeypatch.setenv(warm.MAX_JOBS_ENV, "3")
    for _ in range(3):
        referee.play(jobs["ppo-cartpole"])
    assert fresh_pool.started == 1
    referee.play(jobs["ppo-cartpole"])  # the first retired after 3 jobs
    assert fresh_pool.started == 2
    model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs={"net_arch": [16]})
    with torch.no_grad():
        for param in model.policy.parameters():
            param.fill_(float("nan"))
    model.save(tmp_path / "ppo-CartPole-v1.zip")  # read fine by the referee, refused by the player
    os.chmod(tmp_path / "ppo-CartPole-v1.zip", 0o644)
    os.chmod(tmp_path, 0o755)
    broken = replace(jobs["ppo-cartpole"], root=str(tmp_path))
    with pytest.raises(errors.InvalidWeightsError):
        referee.play(broken)
    assert not fresh_pool._idle  # the failing job's zygote was retired
    referee.play(jobs["ppo-cartpole"])
    assert fresh_pool.started == 3


def test_a_referee_window_wider_than_the_default_is_played(jobs, fresh_pool, monkeypatch):
    """The player accepts any call up to MAX_CALL_ROWS, not just the default window (a referee
    configured for 128 episodes in flight sends 104-row calls for 100 episodes)."""
    import evaluator.runner as runner

    job = replace(jobs["ppo-cartpole"], n_episodes=100, seeds=tuple(public_seeds(100)))
    default = _numbers(referee.play(job))
    monkeypatch.setattr(runner, "MAX_WINDOW", 128)
    assert runner.window_rows(resolve_env(job.env_id), 100) == 104
    assert _numbers(referee.play(job)) == default


def test_a_warm_job_past_its_budget_is_stopped_and_its_zygote_retired(jobs, fresh_pool):
    with pytest.raises(errors.EvalTimeoutError):
        # 1,000,000 steps: many times what the fastest path plays in 1.5 s
        referee.play(replace(jobs["ppo-pendulum"], n_episodes=5000, seeds=tuple(public_seeds(5000))), timeout=1.5)
    assert not fresh_pool._idle
    assert _numbers(referee.play(jobs["ppo-pendulum"]))  # the next job gets a new one


# A zygote-confined program (the zygote's own sandbox, caps and environment) that forks and
# jails the fork exactly as a warm job's fork is jailed, then reports what the fork can do.
JAILED = """
import json, os, sys
from evaluator.sandbox import jail
uid = {uid}
pid = os.fork()
if pid == 0:
    out = {{}}
    try:
        jail.enter(uid, {{"as": 3 << 30, "cpu": 30, "nofile": 256, "fsize": 1 << 20, "core": 0}})
        status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
        out = {{k: status[k].strip() for k in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs",
                                              "Seccomp")}}
        out["groups"] = os.getgroups()
        try:
            os.fork()
            out["fork"] = "allowed"
        except OSError as err:
            out["fork"] = err.errno
        try:
            os.setsid()
            out["setsid"] = "allowed"
        except OSError as err:
            out["setsid"] = err.errno
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for name, nr, args in (("shmget", 29, (0, 4096, 0o1600)), ("semget", 64, (0, 1, 0o1600)),
                               ("msgget", 68, (0, 0o1600)), ("mq_open", 240, (b"/q", 0o102, 0o600, None)),
                               ("add_key", 248, (b"user", b"note", b"x", 1, -4)),  # -4: the user keyring
                               ("keyctl", 250, (0, -4, 0))):  # KEYCTL_GET_KEYRING_ID of it
            ok = libc.syscall(nr, *args) != -1
            out[name] = "allowed" if ok else ctypes.get_errno()
        try:
            open("/tmp/x", "w").write("x" * 2_000_000)
            out["fsize"] = "unbounded"
        except OSError as err:
            out["fsize"] = err.errno
        import resource
        out["cpu"] = resource.getrlimit(resource.RLIMIT_CPU)[0]
    except BaseException as err:
        out["error"] = repr(err)
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_warm_jobs_fork_is_jailed_as_a_cold_player(tmp_path):
    import errno
    import signal

    conf = confinement()
    uid = 2_000_000_777 if conf.drops_root else None
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    proc = ConfinedProcess(["-c", textwrap.dedent(JAILED.format(uid=uid))], memory_bytes=3 << 30, cpu_seconds=60,
                           zygote=True)
    with proc:
        out = proc.proc.stdout.read()
        proc.wait(30)
    report = json.loads(out)
    assert "error" not in report, report
    if uid is not None:
        assert report["Uid"].split() == [str(uid)] * 4 and report["Gid"].split()[0] == "65534"
        assert report["groups"] == []
    assert report["CapEff"] == report["CapPrm"] == report["CapBnd"] == report["CapAmb"] == "0" * 16
    assert report["NoNewPrivs"] == "1" and report["Seccomp"] == "2"
    assert report["fork"] == errno.EPERM and report["setsid"] == errno.EPERM
    # no IPC object that would outlive the job in the namespace the zygote's jobs share
    assert [report[k] for k in ("shmget", "semget", "msgget", "mq_open")] == [errno.EPERM] * 4
    # nor a key in the uid's keyring, which would outlive it for the next job of that uid
    assert [report[k] for k in ("add_key", "keyctl")] == [errno.EPERM] * 2
    assert report["fsize"] == errno.EFBIG and report["cpu"] == 30


def test_the_zygote_keeps_only_the_capabilities_to_drop_a_fork():
    if not confinement().drops_root:
        pytest.skip("not root: the zygote runs in a user namespace with no capability at all")
    code = "print(dict(l.split(':', 1) for l in open('/proc/self/status') if l.startswith('Cap')))"
    with ConfinedProcess(["-c", code], memory_bytes=3 << 30, cpu_seconds=60, zygote=True) as proc:
        caps = {k: int(v.strip(), 16) for k, v in eval(proc.proc.stdout.read().decode()).items()}  # noqa: S307
    assert caps["CapEff"] == caps["CapBnd"] == (1 << 6) | (1 << 7) | (1 << 8)  # setgid, setuid, setpcap
    assert caps["CapInh"] == caps["CapAmb"] == 0


def test_job_files_travel_as_bytes_into_a_read_only_folder(jobs, fresh_pool):
    job = jobs["ppo-cartpole"]
    payload = warm.job_payload(job.root, job.files)
    with fresh_pool.job(payload, cpu_seconds=30) as proc:
        assert proc.hello_root.startswith("/tmp/job-") and len(proc.hello_root) == len("/tmp/job-") + 32
        remote_w, remote_r = proc.channel_fds()
        os.close(remote_w)  # a player whose input ends at once: it exits cleanly, unasked
        proc._obs_w = -1
    assert proc.status == 0
    assert fresh_pool._idle  # a clean job: the zygote goes back to the pool
    with pytest.raises(errors.CorruptFileError):
        warm.job_payload(job.root, ("../etc/passwd",))
    assert np.isfinite(proc.cpu)


def test_an_idle_zygote_that_died_is_replaced(jobs, fresh_pool):
    first = _numbers(referee.play(jobs["ppo-cartpole"]))
    (idle,) = fresh_pool._idle
    idle.proc.kill()
    idle.proc.wait(10)
    assert _numbers(referee.play(jobs["ppo-cartpole"])) == first
    assert fresh_pool.started == 2 and fresh_pool._idle and fresh_pool._idle[0] is not idle
