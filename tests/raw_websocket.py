"""A WebSocket client by hand (RFC 6455) over a plain TCP socket, for what a library client would
not do: leave right after the 101 as a browser does when the handshake lacks its subprotocol, or
never read at all. It answers nothing unless told to; frames are read only when asked."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


@dataclass
class Frame:
    opcode: int
    payload: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.payload)

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 status: int, headers: dict[str, str]):
        self.reader, self.writer = reader, writer
        self.status, self.headers = status, headers

    @classmethod
    async def connect(cls, url: str, *, protocols: tuple[str, ...] = (),
                      receive_buffer: int | None = None) -> "RawWebSocket":
        """Send the upgrade request and read the response head (not its body)."""
        parts = urlsplit(url)
        sock_kw = {}
        if receive_buffer is not None:  # a small kernel buffer: a non-reader fills it soon
            import socket
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.connect((parts.hostname, parts.port))
            sock.setblocking(False)
            sock_kw = {"sock": sock}
            reader, writer = await asyncio.open_connection(**sock_kw)
        else:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        head = [f"GET {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket",
                "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if protocols:
            head.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(reader, writer, status, headers)

    async def frame(self) -> Frame:
        """The next frame from the server (unmasked, unfragmented as the gateway sends them)."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return Frame(first & 0x0F, await self.reader.readexactly(length))

    async def frames_until_closed(self) -> list[Frame]:
        found = []
        try:
            while True:
                found.append(await self.frame())
                if found[-1].opcode == CLOSE:
                    return found
        except (asyncio.IncompleteReadError, ConnectionError):
            return found

    def abort(self) -> None:
        """Leave without a close handshake, as a browser drops a 101 it does not accept."""
        transport = self.writer.transport
        transport.abort()
