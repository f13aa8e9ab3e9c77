"""What pynetdicom 3.0.4 *peers* — the tests' and the benchmark's requestors and receivers, never
the gateway, which has its own asyncio upper layer in both directions — need on loopback:
TCP_NODELAY on their sockets, and a requestor that does not lose its DIMSE responses.
"""

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


def guard_responses(assoc):
    """Keep a requestor's reactor thread from stealing DIMSE responses; returns ``assoc``.

    pynetdicom 3.0.4's ``send_*`` pauses the reactor and then blocks on the message queue for the
    response, but the reactor, already past its pause checkpoint, may poll the queue once more.
    On loopback the response can arrive in that window: the reactor takes it, discards it as
    unexpected, and the sender waits out the whole DIMSE timeout (every few hundred messages
    under load). Responses only ever belong to the blocked sender, so the reactor's non-blocking
    poll is made to leave anything but a request in the queue.
    """
    provider = assoc.dimse
    original = provider.get_msg

    def get_msg(block: bool = False):
        if block:
            return original(block)
        q = provider.msg_queue
        with q.mutex:
            # (None, None) is pynetdicom's wake-up for a blocked sender on abort/close: leave it.
            if not q.queue or q.queue[0][1] is None or not q.queue[0][1].is_valid_request:
                return None, None
            item = q.queue.popleft()
            q.not_full.notify()
            return item

    provider.get_msg = get_msg
    return assoc
