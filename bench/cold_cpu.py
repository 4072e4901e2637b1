"""CPU seconds of cold players, for bench/ scripts: a cold player is killed with its process group
when its evaluation ends (`ConfinedProcess.close`), before bubblewrap reaps it, so its CPU never
reaches this process's RUSAGE_CHILDREN. `ColdPlayerCpu` reads the process tree's CPU from /proc
just before each kill (and counts what was reaped normally through RUSAGE_CHILDREN)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """utime + stime of `pid` and its live descendants, in seconds."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


class ColdPlayerCpu:
    """Sum of the CPU of every cold player killed or reaped while it is active."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> ColdPlayerCpu:
        from evaluator.sandbox.process import ConfinedProcess

        self._original = ConfinedProcess.kill
        meter = self

        def kill(proc: ConfinedProcess) -> None:
            if proc.proc is not None and proc.proc.poll() is None:
                meter.seconds += tree_cpu(proc.proc.pid)
            meter._original(proc)

        ConfinedProcess.kill = kill
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = usage.ru_utime + usage.ru_stime
        return self

    def __exit__(self, *exc) -> None:
        from evaluator.sandbox.process import ConfinedProcess

        ConfinedProcess.kill = self._original
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.seconds += usage.ru_utime + usage.ru_stime - self._children
