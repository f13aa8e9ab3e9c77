"""Measuring a gateway process while it is abused: its resident memory (from /proc) and how fast
``/health`` answers meanwhile (a sampler thread). The figures are reported (printed, ``-s``
shows them); tests assert only generous bounds on them — performance belongs in ``bench/``."""

from __future__ import annotations

import gc
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HEALTH_BOUND_SECONDS = 5.0  # "answered at all": far above any healthy latency


def rss_mb(pid: int) -> float:
    """The process's resident set size (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def settled_rss_mb(pid: int, above: float, deadline: float = 10.0) -> float:
    """The RSS once it has come down to ``above`` (or the deadline passed): freed memory goes
    back to the system a little after the connections close."""
    gc.collect()
    end = time.monotonic() + deadline
    value = rss_mb(pid)
    while value > above and time.monotonic() < end:
        time.sleep(0.2)
        value = rss_mb(pid)
    return value


class HealthSampler:
    """GET /health every ``interval`` seconds from a thread while the block runs; each sample's
    latency in seconds, or None when it failed or took more than the bound."""

    def __init__(self, gw, interval: float = 0.2):
        self.url = f"{gw.url}/health"
        self.interval = interval
        self.samples: list[float | None] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(HEALTH_BOUND_SECONDS + 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=HEALTH_BOUND_SECONDS) as rsp:
                    rsp.read()
                self.samples.append(time.monotonic() - started)
            except (urllib.error.URLError, OSError) as exc:
                self.samples.append(None)
                self.errors.append(repr(exc)[:120])
            self._stop.wait(self.interval)

    def report(self, what: str) -> str:
        answered = [s for s in self.samples if s is not None]
        worst = max(answered) * 1000 if answered else float("nan")
        text = (f"/health during {what}: {len(answered)}/{len(self.samples)} answered, "
                f"worst {worst:.0f} ms" + (f"; {self.errors[0]}" if self.errors else ""))
        print(text)
        return text

    def assert_responsive(self, what: str) -> None:
        text = self.report(what)
        assert self.samples, "no /health sample was taken"
        assert all(s is not None for s in self.samples), text
