"""Where audit messages go: a file (one XML message per line) and syslog (RFC 5424 messages;
UDP: one per datagram, RFC 5426; TCP and TLS: octet-counting framing, RFC 5425 §4.3)."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
from pathlib import Path

FACILITY_AUTHPRIV, SEVERITY_NOTICE = 10, 5
APP_NAME = "ups-gateway"
MSGID = "DICOM+RFC3881"
BOM = b"\xef\xbb\xbf"
UDP_MAX = 65000


class FileSink:
    name = "file"

    def __init__(self, path: str):
        self.path = Path(path)

    async def send(self, message: bytes) -> None:
        await asyncio.to_thread(self._append, message)

    def _append(self, message: bytes) -> None:
        with open(self.path, "ab") as out:
            out.write(message + b"\n")

    async def close(self) -> None:
        pass


def rfc5424(message: bytes, hostname: str) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY_NOTICE
    header = f"<{pri}>1 {now.replace('+00:00', 'Z')} {hostname or '-'} {APP_NAME} " \
             f"{os.getpid()} {MSGID} - "
    return header.encode("ascii", "replace") + BOM + message


class SyslogSink:
    name = "syslog"

    def __init__(self, host: str, port: int, transport: str, context: ssl.SSLContext | None,
                 timeout: float = 5.0):
        self.host, self.port, self.transport = host, port, transport
        self.context = context
        self.timeout = timeout
        self.hostname = socket.gethostname()
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None

    async def send(self, message: bytes) -> None:
        frame = rfc5424(message, self.hostname)
        if self.transport == "udp":
            if self._udp is None:
                loop = asyncio.get_running_loop()
                self._udp, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, remote_addr=(self.host, self.port))
            self._udp.sendto(frame[:UDP_MAX])
            return
        try:
            async with asyncio.timeout(self.timeout):
                if self._writer is None or self._writer.is_closing():
                    _, self._writer = await asyncio.open_connection(
                        self.host, self.port, ssl=self.context,
                        server_hostname=self.host if self.context else None)
                self._writer.write(str(len(frame)).encode() + b" " + frame)
                await self._writer.drain()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
