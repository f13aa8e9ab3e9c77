"""What every scenario gets: sizes for this run (full or --quick), a work directory, shared
figures (scenario 3's target is relative to scenario 1's creates/s), server CPU accounting and
optional py-spy profiling of the gateway."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass
class Sizes:
    create_seconds: float
    create_warmup: float
    search_sizes: list[int]
    search_queries: int         # per query kind, per repetition
    claim_items: int
    dimse_seconds: float
    dimse_warmup: float
    events: int                 # events per direction, per repetition
    fanout_subscribers: int
    fanout_changes: int         # per repetition
    ws_for_rss: int


FULL = Sizes(create_seconds=8, create_warmup=1.5, search_sizes=[1000, 10000, 100000],
             search_queries=300, claim_items=1000, dimse_seconds=5, dimse_warmup=1,
             events=500, fanout_subscribers=100, fanout_changes=60, ws_for_rss=100)
QUICK = Sizes(create_seconds=2.5, create_warmup=0.5, search_sizes=[1000, 5000],
              search_queries=100, claim_items=300, dimse_seconds=1.5, dimse_warmup=0.3,
              events=100, fanout_subscribers=100, fanout_changes=15, ws_for_rss=100)


@dataclass
class Context:
    sizes: Sizes
    repeat: int
    workdir: Path
    quick: bool
    profile_dir: Path | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)


class CpuMeter:
    """CPU seconds used by some processes between ``start`` and ``stop``."""

    def __init__(self, *pids: int | None):
        self.procs = []
        for pid in pids:
            try:
                if pid:
                    self.procs.append(psutil.Process(pid))
            except psutil.Error:
                pass  # gone: the caller's liveness check says why
        self.before = 0.0
        self.seconds = 0.0

    def _total(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> "CpuMeter":
        self.before = self._total()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = self._total() - self.before


class Profiler:
    """py-spy record of one process for a bounded time (``--profile DIR``); raw collapsed stacks
    plus an SVG flame graph are written to DIR."""

    def __init__(self, ctx: Context, pid: int, name: str, seconds: float):
        self.ctx, self.pid, self.name, self.seconds = ctx, pid, name, seconds
        self.proc: subprocess.Popen | None = None
        self.raw: Path | None = None

    def __enter__(self) -> "Profiler":
        if self.ctx.profile_dir is None:
            return self
        self.ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        self.raw = self.ctx.profile_dir / f"{self.name}.txt"
        py_spy = Path(sys.executable).with_name("py-spy")
        exe = str(py_spy) if py_spy.exists() else "py-spy"
        try:
            self.proc = subprocess.Popen(
                [exe, "record", "--pid", str(self.pid), "--duration", str(int(self.seconds) + 1),
                 "--rate", "200", "--format", "raw", "--nonblocking", "--threads",
                 "-o", str(self.raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            self.ctx.log("py-spy is not installed (pip install py-spy): not profiling")
            self.proc = None
        time.sleep(0.3)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(self.seconds + 30)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(5)
            self.ctx.log(f"profile written: {self.raw}")


def foreign_cpu(seconds: float = 1.0) -> float:
    """CPU used by processes outside this benchmark's process tree, in % of one core, over
    ``seconds`` — other work on the machine that will disturb the measurements."""
    import os

    me = psutil.Process(os.getpid())
    ours = {me.pid, *(p.pid for p in me.children(recursive=True))}

    def snapshot() -> dict[int, float]:
        out = {}
        for p in psutil.process_iter(["pid"]):
            if p.pid in ours:
                continue
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    used = sum(after[p] - before[p] for p in after if p in before)
    return 100 * used / seconds


def wait_for_quiet(ctx: "Context", limit_pct: float = 25.0, max_wait: float = 0.0) -> float:
    """Measure foreign CPU; wait (up to ``max_wait`` s) for it to drop below ``limit_pct``."""
    deadline = time.monotonic() + max_wait
    busy = foreign_cpu()
    while busy > limit_pct and time.monotonic() < deadline:
        ctx.log(f"machine busy: other processes use {busy:.0f}% of a core; waiting")
        time.sleep(4)
        busy = foreign_cpu()
    if busy > limit_pct:
        ctx.log(f"WARNING: other processes use {busy:.0f}% of a core: figures will be noisy")
    return busy
