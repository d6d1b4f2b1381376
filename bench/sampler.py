"""Watch a process tree while a system runs: per-process peak RSS and CPU time, and other load on the machine."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import psutil

# Ray's own service processes; they are never the ones doing the embedding work.
RAY_SERVICE_MARKERS = (
    "IDLE",
    "_StatsActor",
    "AutoscalingRequester",
    "SplitCoordinator",
    "Dashboard",
    "DashboardAgent",
)


@dataclass
class ProcRecord:
    """What the sampler saw of one process."""

    pid: int
    name: str
    peak_rss: int = 0
    cpu_s: float = 0.0


@dataclass
class TreeSampler:
    """Poll `root` and its descendants every `interval` seconds on a background thread."""

    root: int
    interval: float = 0.05
    procs: dict[int, ProcRecord] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _busy0: float = 0.0
    _t0: float = 0.0
    busy_s: float = 0.0
    wall_s: float = 0.0

    def start(self) -> TreeSampler:
        """Begin sampling."""
        self._busy0, self._t0 = machine_busy_s(), time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and record the machine's busy CPU seconds over the run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.busy_s = machine_busy_s() - self._busy0
        self.wall_s = time.monotonic() - self._t0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one reading of every process in the tree."""
        try:
            root = psutil.Process(self.root)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for p in tree:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    title = process_title(p)
                    rec = self.procs.get(p.pid)
                    if rec is None:
                        rec = self.procs[p.pid] = ProcRecord(p.pid, title)
                    elif title.startswith("ray::") and not title.startswith("ray::IDLE"):
                        rec.name = title  # Ray retitles a worker once it hosts an actor
                    rec.peak_rss = max(rec.peak_rss, rss)
                    rec.cpu_s = max(rec.cpu_s, t.user + t.system)
            except psutil.Error:
                continue

    def tree_cpu_s(self) -> float:
        """CPU seconds the tree's processes used (as last seen)."""
        return sum(r.cpu_s for r in self.procs.values())

    def other_load(self) -> float:
        """Average number of cores busy with processes outside this tree while it ran (0 = quiet machine)."""
        if self.wall_s <= 0:
            return 0.0
        return max(0.0, (self.busy_s - self.tree_cpu_s()) / self.wall_s)


def process_title(p: psutil.Process) -> str:
    """A process's title as Ray sets it (`ray::Actor.method`) or its command line."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        cmd = []
    return " ".join(cmd)[:200] if cmd else p.name()


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def work_processes(procs: list[ProcRecord], root: int, mode: str, n_workers: int = 1) -> list[ProcRecord]:
    """The processes that do a system's work: `self` (root), `tree` (root and children) or `ray` (the actors).

    For `ray`, the actors are the `n_workers` largest `ray::` worker processes that are not Ray services.
    """
    if mode == "self":
        return [p for p in procs if p.pid == root]
    if mode == "tree":
        return [
            p
            for p in procs
            if not p.name.startswith("ray::") and "raylet" not in p.name and "gcs_server" not in p.name
        ]
    if mode == "ray":
        actors = [
            p
            for p in procs
            if p.name.startswith("ray::") and not any(m in p.name for m in RAY_SERVICE_MARKERS)
        ]
        return sorted(actors, key=lambda p: p.peak_rss, reverse=True)[:n_workers]
    raise ValueError(f"unknown work-process mode {mode!r}; valid: 'self', 'tree', 'ray'")
