"""Socket settings for every association, accepted or requested."""

from __future__ import annotations

import socket

from pynetdicom import evt


def set_nodelay(event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle. pynetdicom writes a DIMSE message as two sends
    (command PDU, dataset PDU); with Nagle on, the second waits ~40 ms for the peer's delayed ACK."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, set_nodelay)
