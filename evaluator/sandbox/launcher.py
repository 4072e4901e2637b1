"""One long-lived thread that starts the processes which must outlive the thread asking for them.

Why: bubblewrap's `--die-with-parent` is PR_SET_PDEATHSIG, which fires when the *thread* that
forked the process exits, not the process. A warm player's zygote is asked for by whatever thread
needs it first (e.g. one of `run_job`'s part threads, gone a moment later) and must live as long
as the process that pools it; so it is started from this thread, which lives as long as the
process."""

from __future__ import annotations

import queue
import threading

_LAUNCHER: queue.SimpleQueue | None = None
_LAUNCHER_LOCK = threading.Lock()


def _launcher_loop(requests: queue.SimpleQueue) -> None:
    while True:
        fn, done, event = requests.get()
        try:
            done.append((True, fn()))
        except BaseException as err:  # handed back to the caller
            done.append((False, err))
        event.set()


def run_in_launcher(fn):
    """Run `fn` (which starts a zygote) in one thread that lives as long as this process: bwrap's
    `--die-with-parent` is PR_SET_PDEATHSIG, which fires when the *thread* that started it
    exits, and zygotes outlive the threads that ask for them (e.g. run_job's part threads)."""
    global _LAUNCHER
    with _LAUNCHER_LOCK:
        if _LAUNCHER is None:
            _LAUNCHER = queue.SimpleQueue()
            threading.Thread(target=_launcher_loop, args=(_LAUNCHER,), name="zygote-launcher", daemon=True).start()
    done: list = []
    event = threading.Event()
    _LAUNCHER.put((fn, done, event))
    event.wait()
    ok, value = done[0]
    if not ok:
        raise value
    return value
