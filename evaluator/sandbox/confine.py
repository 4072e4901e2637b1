"""Which confinement this machine offers, and the command line that applies it.

bubblewrap (`bwrap`) when it works here:
- a fresh mount namespace whose root is an empty tmpfs, remounted read-only once built;
  read-only binds of the system (`/usr`, the loader's cache), the Python interpreter, the
  virtualenv and the `evaluator` package; each snapshot file bound read-only, one by one; a
  private, size-capped tmpfs on `/tmp` (the ONLY writable place; nothing of the host is
  writable, so nothing the process writes outlives it);
- new network (no interface but a down loopback), pid, ipc, uts and cgroup namespaces;
  `--die-with-parent`, `--new-session` (no terminal injection);
- as root: the process drops to a uid of its own (leased by `evaluator.sandbox.uids`, one per
  concurrent process machine-wide) with every capability cleared and `no_new_privs`
  (setpriv), so per-uid process limits are per process. Not root: the caller's own uid in a
  user namespace (no per-process uid, so no process-count limit; README, Confinement).

Where bwrap is missing or unusable, a weaker confinement is used with a warning:
`unshare --net --pid` + rlimits (`UNSHARE`), else rlimits only (`NONE`). Code-bearing agent
formats are refused under both.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger("evaluator.sandbox")

MODE_ENV = "EVALUATOR_SANDBOX_MODE"  # auto (default), bwrap, unshare, none
BWRAP, UNSHARE, NONE = "bwrap", "unshare", "none"

MiB = 1 << 20
TMPFS_BYTES = 64 * MiB  # the private /tmp: the only writable place
SANDBOX_GID = 65534  # nogroup
SNAPSHOT_MOUNT = "/snapshot"


@dataclass(frozen=True)
class Confinement:
    kind: str  # bwrap, unshare, none
    drops_root: bool  # root here: each process runs as a leased unprivileged uid of its own
    unshare_argv: tuple[str, ...] = ()
    note: str = ""

    @property
    def isolated_fs(self) -> bool:
        return self.kind == BWRAP

    @property
    def runs_code(self) -> bool:
        """Whether code-bearing agent formats may run: only under the full confinement."""
        return self.kind == BWRAP


def _probe(argv: Sequence[str]) -> str | None:
    """None when `argv` runs and exits 0, else why not."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip()[-300:] or f"exit status {done.returncode}"
    return None


@functools.cache
def confinement() -> Confinement:
    """Probe once per process: bwrap if it works here, else `unshare`, else nothing."""
    mode = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", BWRAP, UNSHARE, NONE):
        raise ValueError(f"{MODE_ENV}={mode!r}: expected auto, bwrap, unshare or none")
    root = os.geteuid() == 0
    why_not = "not tried"
    if mode in ("auto", BWRAP):
        from .uids import UID_BASE

        bwrap = shutil.which("bwrap")
        setpriv = shutil.which("setpriv") if root else None
        if bwrap is None:
            why_not = "bubblewrap (bwrap) is not installed (scripts/install_system_deps.sh installs it)"
        elif root and setpriv is None:
            why_not = "setpriv (util-linux) is missing, so the sandbox could not drop root"
        else:
            candidate = Confinement(BWRAP, root)
            argv = bwrap_argv(candidate, uid=UID_BASE if root else None, ro=[], files={}) + ["/usr/bin/true"]
            why_not = _probe(argv) or ""
            if not why_not:
                return candidate
            why_not = f"bwrap does not work here ({why_not})"
        if mode == BWRAP:
            raise RuntimeError(f"{MODE_ENV}=bwrap but {why_not}")
        if root:  # fail closed: a weak sandbox as root exposes the host (README, Confinement)
            raise RuntimeError(
                f"the sandbox is unusable ({why_not}) and this process runs as root, where the weak fallbacks would "
                f"let an agent read and write the host as root: refused. Fix bubblewrap, or set {MODE_ENV}=unshare "
                "to accept the weak sandbox knowingly.")
    if mode in ("auto", UNSHARE):
        # --pid --fork --kill-child: a grandchild that calls setsid() still dies with the sandbox
        argv = ("unshare", "--net", "--ipc", "--pid", "--fork", "--kill-child")
        argv = argv if root else (*argv, "--map-root-user")
        problem = _probe([*argv, "true"]) if shutil.which("unshare") else "unshare is not installed"
        if not problem:
            weak = Confinement(UNSHARE, False, argv, note=f"{why_not}; using `{' '.join(argv)}` + rlimits")
            log.warning("WEAK SANDBOX: %s. Data-only agents run without network and under limits, but can read "
                        "every file the evaluating user can; code-bearing formats (TorchScript) are refused "
                        "(README, Confinement).", weak.note)
            return weak
        if mode == UNSHARE:
            raise RuntimeError(f"{MODE_ENV}=unshare but it does not work here ({problem})")
        why_not += f"; unshare does not work here ({problem})"
    weak = Confinement(NONE, False, note=f"{why_not}; using rlimits only")
    log.warning("NO SANDBOX: %s. Agents run as this user WITH network access and read access to its files; "
                "code-bearing formats (TorchScript) are refused (README, Confinement).", weak.note)
    return weak


def _system_binds() -> list[tuple[str, str]]:
    """(kind, path) for the system part of the sandbox's root: read-only, no /etc but the loader's."""
    out: list[tuple[str, str]] = [("ro", "/usr")]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            out.append(("symlink", name))
        elif os.path.isdir(name):
            out.append(("ro", name))
    for name in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
                 "/etc/alternatives"):
        if os.path.exists(name):
            out.append(("ro", name))
    return out


def project_root() -> str:
    """The folder holding the `evaluator` package (the confined process's PYTHONPATH)."""
    import evaluator

    return str(Path(evaluator.__file__).resolve().parent.parent)


def _python_paths() -> list[str]:
    """The interpreter, the virtualenv and the evaluator package: all read-only."""
    package = os.path.join(project_root(), "evaluator")
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), package}
    executable = os.path.realpath(sys.executable)
    if not any(executable.startswith(p + os.sep) for p in paths):
        paths.add(os.path.dirname(executable))
    return sorted(p for p in paths if not p.startswith("/usr/") and p != "/usr")


def _parents(path: str) -> list[str]:
    parts = PurePosixPath(path).parents
    return [str(p) for p in reversed(list(parts)) if str(p) != "/"]


# What a warm player's zygote keeps of root (root only): enough to drop each job's fork to the
# job's own uid and clear that fork's bounding set; nothing else (README, Confinement).
ZYGOTE_CAPS = "-all,+setuid,+setgid,+setpcap"


def bwrap_argv(conf: Confinement, *, uid: int | None, ro: Sequence[str], files: Mapping[str, str],
               seccomp_fd: int | None = None, zygote: bool = False) -> list[str]:
    """bwrap's command line up to (not including) the program. `ro`: host paths bound read-only
    at the same place; `files`: inside path -> host file (read-only); `uid`: the unprivileged
    uid to drop to (root only); `seccomp_fd`: an open file holding a BPF filter to load
    (`evaluator.sandbox.seccomp`); `zygote`: as root, keep uid 0 with only ZYGOTE_CAPS (the
    warm player's zygote drops each job's fork itself: `evaluator.sandbox.jail`). The working
    directory is `/`, read-only."""
    argv = ["bwrap"]
    if not conf.drops_root:
        argv += ["--unshare-all"]  # includes a user namespace: the caller's own uid inside
    else:  # root: no user namespace, so that setpriv can drop to a real unprivileged uid
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    argv += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--proc", "/proc",
             "--perms", "0755", "--tmpfs", "/dev"]  # a few device nodes, no pty multiplexer
    for node in ("null", "zero", "full", "random", "urandom"):
        argv += ["--dev-bind", f"/dev/{node}", f"/dev/{node}"]
    argv += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    made: set[str] = set()

    def dirs_for(path: str) -> None:  # parents world-traversable (bwrap would make them 0700)
        for parent in _parents(path):
            if parent not in made and parent not in ("/usr", "/tmp", "/proc", "/dev"):
                made.add(parent)
                argv.extend(["--perms", "0755", "--dir", parent])

    for kind, path in _system_binds():
        if kind == "symlink":
            argv += ["--symlink", os.readlink(path), path]
        else:
            dirs_for(path)
            argv += ["--ro-bind", path, path]
    for path in [*_python_paths(), *ro]:
        dirs_for(path)
        argv += ["--ro-bind", path, path]
    for inside, host in sorted(files.items()):
        dirs_for(inside)
        argv += ["--ro-bind", host, inside]
    argv += ["--remount-ro", "/", "--chdir", "/"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--"]
    if conf.drops_root and zygote:
        argv += [shutil.which("setpriv") or "/usr/bin/setpriv", "--clear-groups", "--inh-caps=-all",
                 f"--bounding-set={ZYGOTE_CAPS}", "--no-new-privs"]
    elif conf.drops_root:
        if uid is None:
            raise ValueError("a root sandbox needs the uid to drop to")
        argv += [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={uid}",
                 f"--regid={SANDBOX_GID}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                 "--no-new-privs"]
    return argv


def environment(limits_json: str, *, home: str = "/tmp") -> dict[str, str]:
    """The confined process's whole environment: nothing inherited (no HF_TOKEN, no private salt)."""
    from .limits import LIMITS_ENV, SANDBOX_ENV

    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": project_root(),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "SDL_VIDEODRIVER": "dummy",
        "SDL_AUDIODRIVER": "dummy",
        "PYGAME_HIDE_SUPPORT_PROMPT": "1",
        "MPLCONFIGDIR": f"{home}/matplotlib",
        "XDG_CACHE_HOME": f"{home}/cache",
        "HF_HUB_OFFLINE": "1",
        SANDBOX_ENV: "1",
        LIMITS_ENV: limits_json,
    }
