"""The sandbox process: confinement (network, files, uid, environment, limits), the parent's
timeout and output caps, and the checks the parent applies to whatever the child answers."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest
import torch

from evaluator import errors, sandbox
from evaluator.agents import find_agent
from evaluator.agents.base import AgentFiles
from evaluator.job import Job
from evaluator.runner import public_seeds
from tests.evaluator.ts_agents import CartPoleLinear

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (scripts/install_system_deps.sh)")


def snippet(code: str, **kwargs) -> sandbox.SandboxRun:
    return sandbox.run_snippet(textwrap.dedent(code), **kwargs)


def lines(run: sandbox.SandboxRun) -> dict[str, str]:
    out = {}
    for line in run.stdout.decode().splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


@pytest.fixture
def mode(monkeypatch):
    """Force a confinement mode for one test (the probe result is cached per process)."""

    def use(name: str) -> sandbox.Confinement:
        monkeypatch.setenv(sandbox.MODE_ENV, name)
        sandbox.confinement.cache_clear()
        return sandbox.confinement()

    yield use
    sandbox.confinement.cache_clear()


@needs_bwrap
def test_bwrap_is_used_when_installed():
    sandbox.confinement.cache_clear()
    conf = sandbox.confinement()
    assert conf.kind == sandbox.BWRAP, conf.note
    assert conf.drops_root == (os.geteuid() == 0) and conf.runs_code


@needs_bwrap
def test_no_network_not_even_the_hosts_loopback():
    """A listener on the host's 127.0.0.1 is unreachable: the sandbox has its own (down) loopback."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    run = snippet(f"""
        import socket
        print("ifaces=" + ",".join(n for _, n in socket.if_nameindex()))
        for host, port in (("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)):
            s = socket.socket()
            s.settimeout(3)
            try:
                s.connect((host, port))
                print(f"{{host}}=CONNECTED")
            except OSError as err:
                print(f"{{host}}=refused:{{type(err).__name__}}:{{err.errno}}")
        """)
    server.setblocking(False)
    try:  # a connection that got through would wait in the backlog
        reached = server.accept()
    except BlockingIOError:
        reached = None
    server.close()
    out = lines(run)
    assert run.returncode == 0, run.stderr_tail
    assert out["ifaces"] == "lo"
    assert out["127.0.0.1"].startswith("refused") and out["1.1.1.1"].startswith("refused")
    assert out["8.8.8.8"].startswith("refused")
    assert reached is None, "the sandbox reached the host's listener"


@needs_bwrap
def test_sees_only_what_it_is_given(tmp_path, monkeypatch):
    """Host files (a secret beside the snapshot, /etc/hostname, the home dir, the HF cache) are
    absent; a file given is readable, not writable; nothing but the private /tmp is writable,
    the working directory included; the uid is a leased sandbox uid of its own."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    given = tmp_path / "given.txt"
    given.write_text("hello")
    monkeypatch.setenv("HF_TOKEN", "hf_should_not_leak")
    run = snippet(f"""
        import os, resource
        def attempt(label, fn):
            try:
                print(f"{{label}}=" + str(fn()))
            except OSError as err:
                print(f"{{label}}=denied:{{type(err).__name__}}")
        attempt("secret", lambda: open({str(secret)!r}).read())
        attempt("hostname", lambda: open("/etc/hostname").read())
        attempt("passwd", lambda: open("/etc/passwd").read()[:10])
        attempt("home", lambda: os.listdir(os.path.expanduser("~root")))
        attempt("given", lambda: open("/snapshot/given.txt").read())
        attempt("write_given", lambda: open("/snapshot/given.txt", "a").write("x"))
        attempt("write_project", lambda: open({str(Path(sandbox.__file__).parent / "evil.py")!r}, "w").write("x"))
        attempt("write_root", lambda: open("/evil", "w").write("x"))
        attempt("write_cwd", lambda: open("evil_cwd", "w").write("x"))
        attempt("out_dir", lambda: os.listdir("/out"))
        attempt("write_tmp", lambda: open("/tmp/scratch", "w").write("ok"))
        print("cwd=" + os.getcwd())
        print("uid=" + str(os.getuid()))
        print("token=" + str(os.environ.get("HF_TOKEN")))
        print("weights_only=" + str(os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")))
        print("as=" + str(resource.getrlimit(resource.RLIMIT_AS)[1]))
        print("core=" + str(resource.getrlimit(resource.RLIMIT_CORE)[1]))
        """, files={"/snapshot/given.txt": given})
    out = lines(run)
    assert run.returncode == 0, run.stderr_tail
    for key in ("secret", "hostname", "passwd", "home", "write_given", "write_project", "write_root", "write_cwd",
                "out_dir"):
        assert out[key].startswith("denied"), (key, out[key])
    assert out["given"] == "hello" and given.read_text() == "hello" and out["cwd"] == "/"
    assert out["write_tmp"] == "2" and not Path("/tmp/scratch").exists()
    assert not (Path(sandbox.__file__).parent / "evil.py").exists()
    assert out["token"] == "None" and out["weights_only"] == "1"
    assert int(out["as"]) == sandbox.DEFAULT_MEMORY_BYTES and out["core"] == "0"
    if os.geteuid() == 0:
        assert sandbox.UID_BASE <= int(out["uid"]) < sandbox.UID_BASE + sandbox.UID_COUNT


def test_wall_clock_timeout_kills_the_process_group():
    run = sandbox.run_in_sandbox(["-c", "import subprocess, time\n"
                                  "subprocess.Popen(['sleep', '300'])\n"
                                  "while True: time.sleep(0.1)"], timeout=3, memory_bytes=sandbox.DEFAULT_MEMORY_BYTES)
    assert run.timed_out and run.seconds < 30


def test_output_is_size_capped():
    run = sandbox.run_in_sandbox(["-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"], timeout=60,
                                 memory_bytes=sandbox.DEFAULT_MEMORY_BYTES, max_output=1 << 20)
    assert run.output_too_large and not run.timed_out


def test_memory_limit_stops_an_allocation():
    run = snippet("""
        try:
            block = bytearray(4 << 30)
            print("allocated")
        except MemoryError:
            print("refused")
        """, memory_bytes=1 << 30)
    assert run.stdout.decode().strip() == "refused", run.stderr_tail


# ---------------------------------------------------------------------------------------------
# Budgets


def test_timeout_scales_with_the_protocol():
    bipedal = Job("/x", "sb3", "a.zip", (), "BipedalWalker-v3", 50, tuple(public_seeds(50)))
    cartpole = Job("/x", "sb3", "a.zip", (), "CartPole-v1", 50, tuple(public_seeds(50)))
    frozen = Job("/x", "sb3", "a.zip", (), "FrozenLake-v1-4x4-no_slippery", 100, tuple(public_seeds(100)))
    assert sandbox.max_episode_steps("BipedalWalker-v3") == 1600
    # 80,000 steps: 0.3 ms each on an idle core, so 10x headroom on a loaded 2-core machine.
    assert sandbox.job_timeout(bipedal) >= sandbox.STARTUP_SECONDS + 80_000 * 0.003
    assert sandbox.job_timeout(bipedal) > sandbox.job_timeout(cartpole) > sandbox.job_timeout(frozen)
    half = Job("/x", "sb3", "a.zip", (), "CartPole-v1", 50, tuple(public_seeds(50)), episode_indices=tuple(range(25)))
    assert sandbox.job_timeout(half) < sandbox.job_timeout(cartpole)


# ---------------------------------------------------------------------------------------------
# TorchScript: code, so only inside a sandbox


def _torchscript_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    torch.jit.save(torch.jit.script(CartPoleLinear()), str(folder / "agent.pt"))
    os.chmod(folder / "agent.pt", 0o644)
    return folder


def test_find_agent_knows_torchscript_and_qtable():
    assert find_agent(["README.md", "agent.pt"]) == ("torchscript", "agent.pt")
    assert find_agent(["agent.pt", "ppo-CartPole-v1.zip"])[0] == "sb3"
    assert find_agent(["README.md", "q-learning.pkl"]) == ("qlearning", "q-learning.pkl")
    assert find_agent(["README.md", "model.pt"]) == ("torch_pickle", "model.pt")  # kind decided by its opcodes


def test_torchscript_is_refused_outside_a_player(tmp_path, monkeypatch):
    import gymnasium as gym

    from evaluator.agents.torchscript import load_torchscript

    folder = _torchscript_folder(tmp_path)
    monkeypatch.setenv("EVALUATOR_SANDBOX", "1")  # the variable alone is not enough
    env = gym.make("CartPole-v1")
    with pytest.raises(errors.UnsafeContentError, match="only ever loaded inside a player"):
        load_torchscript(AgentFiles(folder, "agent.pt", ("agent.pt",)), env.observation_space, env.action_space)


def _ts_job(folder: Path, n: int = 2) -> Job:
    return Job(str(folder), "torchscript", "agent.pt", ("agent.pt",), "CartPole-v1", n, tuple(public_seeds(n)))


@needs_bwrap
@pytest.mark.slow
def test_torchscript_agent_runs_in_the_sandbox(tmp_path):
    outcome = sandbox.play(_ts_job(_torchscript_folder(tmp_path)))
    assert outcome.format == "torchscript" and len(outcome.episodes.returns) == 2
    assert all(r > 100 for r in outcome.episodes.returns)  # the linear controller balances


@pytest.mark.slow
def test_weak_fallbacks_warn_and_refuse_code_bearing_formats(tmp_path, mode, caplog):
    """Under `none` and under `unshare` (which shares the host's files and uid), a TorchScript
    agent is refused before any player starts; a data-only agent still runs under `unshare`."""
    folder = _torchscript_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="evaluator.sandbox"):
        conf = mode("none")
    assert conf.kind == sandbox.NONE and "NO SANDBOX" in caplog.text and not conf.runs_code
    with pytest.raises(errors.UnsafeContentError, match="code-bearing"):
        sandbox.play(_ts_job(folder, 1))
    if shutil.which("unshare") is None:
        return
    try:
        conf = mode("unshare")
    except RuntimeError as err:
        pytest.skip(f"unshare unusable here: {err}")
    assert "WEAK SANDBOX" in caplog.text and not conf.runs_code
    with pytest.raises(errors.UnsafeContentError, match="code-bearing"):
        sandbox.play(_ts_job(folder, 1))
    run = snippet("import socket; print(','.join(n for _, n in socket.if_nameindex()))")
    assert run.stdout.decode().strip() == "lo"


def test_sigkill_is_reported_as_a_signal():
    run = snippet("import os, signal; print('x', flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    assert run.signal == signal.SIGKILL


def test_state_dict_bomb_is_a_memory_error_in_the_sandbox():
    """A policy.pth whose permitted globals allocate gigabytes (`bytearray(8 GiB)`)."""
    run = snippet("""
        import io, torch
        class Bomb:
            def __reduce__(self):
                return (bytearray, (8 << 30,))
        buf = io.BytesIO()
        torch.save({"w": torch.zeros(2), "b": Bomb()}, buf)
        from evaluator.agents.sb3 import load_state_dict_bytes
        try:
            load_state_dict_bytes(buf.getvalue())
        except MemoryError:
            print("memory_error")
        """, memory_bytes=2 << 30)
    assert run.stdout.decode().strip() == "memory_error", run.stderr_tail


def test_unshare_fallback_kills_a_grandchild_that_left_the_session(tmp_path, mode):
    """In the weak fallback too, nothing the agent started outlives the sandbox process."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    try:
        mode("unshare")
    except RuntimeError as err:
        pytest.skip(f"unshare unusable here: {err}")
    marker = tmp_path / "grandchild-survived"
    tmp_path.chmod(0o777)  # the fallback keeps the caller's uid; make the marker writable anyway
    snippet(f"""
        import subprocess
        subprocess.Popen(["sh", "-c", "sleep 2; touch {marker}"], start_new_session=True)
        print("started", flush=True)
    """, timeout=30)
    time.sleep(3.5)
    assert not marker.exists()


@needs_bwrap
def test_a_player_is_one_process_with_threads():
    """The player's seccomp filter: threads work (torch needs them); fork, setsid, unshare (so
    no nested user namespace and no private tmpfs of its own) are refused."""
    from evaluator.sandbox.process import ConfinedProcess
    from evaluator.sandbox.seccomp import program

    if program() is None:
        pytest.skip("the filter is defined for x86_64 only")
    code = textwrap.dedent("""
        import ctypes, os, threading
        t = threading.Thread(target=lambda: None); t.start(); t.join(); print("thread=ok")
        for name, call in (("fork", os.fork), ("setsid", os.setsid)):
            try:
                if call() == 0:
                    os._exit(0)
                print(name + "=ALLOWED")
            except OSError as err:
                print(f"{name}=refused:{err.errno}")
        libc = ctypes.CDLL(None, use_errno=True)
        print("unshare_user=" + ("refused" if libc.unshare(0x10000000) != 0 else "ALLOWED"))
        import torch
        print("torch=" + str(int(torch.ones(3).sum())))
    """)
    with ConfinedProcess(["-c", code], memory_bytes=sandbox.DEFAULT_MEMORY_BYTES, cpu_seconds=60,
                         single_process=True) as proc:
        out = proc.proc.stdout.read().decode()
        proc.wait(30)
    found = dict(line.split("=", 1) for line in out.splitlines())
    assert found == {"thread": "ok", "fork": "refused:1", "setsid": "refused:1", "unshare_user": "refused",
                     "torch": "3"}, out


def test_as_root_auto_never_falls_back_to_a_weak_sandbox(monkeypatch, mode):
    """When bubblewrap is unusable, root gets a clear refusal instead of a sandbox that would let
    an agent read and write the host as root; non-root callers get the warned fallback."""
    import evaluator.sandbox.confine as confine

    which = shutil.which
    monkeypatch.setattr(confine.shutil, "which", lambda name: None if name == "bwrap" else which(name))
    if os.geteuid() == 0:
        with pytest.raises(RuntimeError, match="refused"):
            mode("auto")
    else:
        assert mode("auto").kind in (sandbox.UNSHARE, sandbox.NONE)
