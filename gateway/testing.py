"""A gateway run as a child process, exactly as the README starts it (``python -m gateway
--config PATH``), on loopback ports: for the test suite, the benchmarks and integration harnesses.

The configuration is written as YAML next to the log; the process is started with the
``UPSGW_*`` overrides of the calling environment removed (so it runs the given configuration, not
the caller's), and counts as started once ``/health`` answers 200.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

# The directory that holds the ``gateway`` package: importable by the child even when the package
# is not installed (a benchmark run from an exported copy of the repository).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment for a child Python process: the caller's, without its ``UPSGW_*``
    overrides, with the ``gateway`` package importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSGW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    return env


def merge(config: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """``config`` with ``extra``'s sections merged in (mapping sections key by key)."""
    for section, values in (extra or {}).items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    return config


class GatewayProcess:
    def __init__(self, workdir: Path, config: dict[str, Any], *, rest_port: int,
                 dimse_port: int, data_dir: Path, file_stem: str = "gateway"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.rest_port = rest_port
        self.dimse_port = dimse_port
        self.data_dir = Path(data_dir)
        self.config_path = self.workdir / f"{file_stem}.yaml"
        self.log_path = self.workdir / f"{file_stem}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        # For the /health probe over HTTPS (rest.tls): by default the loopback certificate is
        # not verified; set a context with a client certificate when the gateway requires one.
        self.ssl_context: ssl.SSLContext | None = None

    # ---- where it is -------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return bool(((self.config.get("rest") or {}).get("tls") or {}).get("cert_file"))

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.rest_port}"

    @property
    def base(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def ws_base(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.rest_port}/dicom-web"

    @property
    def redis_url(self) -> str:
        """The embedded Redis's socket (when the configuration has no Redis URL)."""
        return f"unix://{self.data_dir.resolve()}/redis/redis.sock"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def redis_pid(self) -> int | None:
        try:
            return int((self.data_dir / "redis" / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # ---- its life ----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0):
        self.config_path.write_text(yaml.safe_dump(self.config))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config",
                                      str(self.config_path)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=child_env(), cwd=PACKAGE_ROOT)
        deadline = time.monotonic() + timeout
        context = self.ssl_context
        if context is None and self.tls:
            context = ssl._create_unverified_context()  # noqa: S323 - loopback health probe
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1,
                                            context=context) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gateway did not become healthy in {timeout:.0f}s:\n{self.log()}")

    def check_alive(self) -> None:
        """Raise if the process has exited (e.g. killed from outside)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the gateway process exited (code {self.proc.returncode}); "
                               f"end of its log:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def log(self, chars: int = 5000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
