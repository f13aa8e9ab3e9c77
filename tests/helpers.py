"""Shared test helpers: real gateway processes, free ports, and workitem builders."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

PUSH = "1.2.840.10008.5.1.4.34.6.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_uid() -> str:
    return "2.25." + str(uuid.uuid4().int)


class GatewayProcess:
    """A gateway started exactly as the README starts it: ``python -m gateway --config PATH``."""

    def __init__(self, workdir: Path, *, redis_url: str | None = None,
                 data_dir: Path | None = None, ae_title: str = "UPS_GATEWAY",
                 extra: dict[str, Any] | None = None, dimse: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rest_port = free_port()
        self.dimse_port = free_port()
        self.data_dir = Path(data_dir or self.workdir / "data")
        config: dict[str, Any] = {
            "ae_title": ae_title,
            "data_dir": str(self.data_dir),
            "rest": {"host": "127.0.0.1", "port": self.rest_port},
            "dimse": {"host": "127.0.0.1", "port": self.dimse_port, "enabled": dimse},
            "redis": {"url": redis_url},
            "log": {"level": "INFO", "format": "json"},
        }
        for section, values in (extra or {}).items():
            if isinstance(values, dict) and isinstance(config.get(section), dict):
                config[section].update(values)
            else:
                config[section] = values
        self.config = config
        self.config_path = self.workdir / f"config-{self.rest_port}.yaml"
        self.log_path = self.workdir / f"gateway-{self.rest_port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def base(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def redis_socket(self) -> str:
        return f"unix://{self.data_dir.resolve()}/redis/redis.sock"

    def start(self, timeout: float = 30.0) -> "GatewayProcess":
        self.config_path.write_text(yaml.safe_dump(self.config))
        self._log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPSGW_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config",
                                      str(self.config_path)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-5000:]
        except OSError:
            return ""


def element(vr: str, *values: Any) -> dict:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def code(value: str, scheme: str = "99LOCAL", meaning: str | None = None) -> dict:
    return {"00080100": element("SH", value), "00080102": element("SH", scheme),
            "00080104": element("LO", meaning or value)}


def workitem(uid: str | None = None, *, label: str = "AI", station: str = "STATION1",
             start: str = "20261125100000", patient_id: str = "PID1",
             patient_name: str = "Doe^John", accession: str | None = None,
             study_uid: str | None = None, priority: str = "MEDIUM",
             **extra: dict) -> dict:
    """A valid Create Workitem payload (DICOM JSON) with the common worklist attributes."""
    ds = {
        "00741000": element("CS", "SCHEDULED"),
        "00741200": element("CS", priority),
        "00741204": element("LO", "AI analysis"),
        "00741202": element("LO", label),
        "00404005": element("DT", start),
        "00404041": element("CS", "READY"),
        "00100010": element("PN", {"Alphabetic": patient_name}),
        "00100020": element("LO", patient_id),
        "00404025": element("SQ", code(station)),
        "00404018": element("SQ", code("AI-CT", "99LOCAL", "AI CT analysis")),
        "00081195": element("UI"),
    }
    if uid:
        ds["00080018"] = element("UI", uid)
    if accession or study_uid:
        request = {"00080050": element("SH", accession or ""),
                   "0020000D": element("UI", study_uid or new_uid())}
        ds["0040A370"] = element("SQ", request)
    if study_uid:
        ds["0020000D"] = element("UI", study_uid)
    ds.update(extra)
    return ds


def state_payload(state: str, tx: str | None = None) -> dict:
    ds = {"00741000": element("CS", state)}
    if tx:
        ds["00081195"] = element("UI", tx)
    return ds


def completion_payload() -> dict:
    """Update payload that satisfies the COMPLETED final-state requirements."""
    return {"00741216": element("SQ", {
        "00404028": element("SQ", code("STATION1")),
        "00404019": element("SQ", code("AI-CT", "99LOCAL", "AI CT analysis")),
        "00404050": element("DT", "20261125100000"),
        "00404051": element("DT", "20261125101000"),
        "00404033": element("SQ"),
    })}


def dumps(obj: Any) -> str:
    return json.dumps(obj)
