"""Peak memory of a benchmark: its own process and every process it starts.

`resource.getrusage` cannot give this. RUSAGE_CHILDREN counts only children already waited
for, gives the largest one rather than a sum, and on Linux a child's figure starts from
its parent's peak, which exec carries over. So the benchmark's own peak is the kernel's
high-water mark (VmHWM), and a thread samples its process tree a few times a second:
the largest child's high-water mark, and the largest sum of resident memory over the
whole tree at one moment (what the machine had to hold). A child living less than one
interval may be missed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from types import TracebackType

#: seconds between samples of the process tree
INTERVAL = 0.1


def _status(pid: int, *fields: str) -> dict[str, int]:
    """The named fields (kB) of /proc/PID/status; empty when the process is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in fields:
                    found[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return found


def _children(pid: int) -> list[int]:
    """The processes started by pid (every thread's children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    return _status(os.getpid(), "VmRSS").get("VmRSS", 0) / 1024


#: the highest of this process's high-water marks that phase_peak_mb has reset, in kB
_reset_peak_kb = 0


def own_peak_mb() -> float:
    """This process's peak resident memory so far, in MB (the kernel's high-water mark, and
    those phase_peak_mb reset before it)."""
    return max(_reset_peak_kb, _status(os.getpid(), "VmHWM").get("VmHWM", 0)) / 1024


def phase_peak_mb() -> float:
    """This process's peak resident memory since the last call (or since it started), in
    MB: the kernel's high-water mark, which is then reset (/proc/self/clear_refs), so that
    each phase of a benchmark shows its own peak. own_peak_mb still counts it."""
    global _reset_peak_kb
    found = _status(os.getpid(), "VmHWM").get("VmHWM", 0)
    _reset_peak_kb = max(_reset_peak_kb, found)
    with contextlib.suppress(OSError):  # not Linux, or not allowed: the mark keeps growing
        Path("/proc/self/clear_refs").write_text("5")
    return found / 1024


class MemoryWatch:
    """Samples this process and its descendants while in a `with` block."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.tree_peak_kb = 0
        self.child_peak_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        """One look at the whole tree."""
        me = os.getpid()
        tree, seen = [me], 0
        while seen < len(tree):
            tree += _children(tree[seen])
            seen += 1
        total = 0
        for pid in tree:
            status = _status(pid, "VmRSS", "VmHWM")
            total += status.get("VmRSS", 0)
            if pid != me and status:
                self.child_peak_kb[pid] = max(self.child_peak_kb.get(pid, 0), status["VmHWM"])
        self.tree_peak_kb = max(self.tree_peak_kb, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
        self.sample()

    def figures(self) -> dict[str, float]:
        """peak_rss_mb: this process (exact); children_peak_rss_mb: the largest child;
        tree_peak_rss_mb: the whole tree at its largest moment (sampled)."""
        self.sample()
        own = own_peak_mb()
        return {
            "peak_rss_mb": round(own, 1),
            "children_peak_rss_mb": round(max(self.child_peak_kb.values(), default=0) / 1024, 1),
            # a sample may miss this process's own peak, which the whole holds at least
            "tree_peak_rss_mb": round(max(self.tree_peak_kb / 1024, own), 1),
        }
