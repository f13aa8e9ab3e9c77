"""The DIMSE listener: the gateway's own upper layer (``upper_layer``) on its event loop.

Configuration (``dimse`` in config.yaml) is applied here and in the upper layer: the calling-AE
allowlist (an association from any other AE is rejected, "calling AE title not recognised"), the
maximum of concurrent associations (more are rejected as "local limit exceeded"), the ACSE,
DIMSE and network timeouts and the largest PDU we receive. The called AE title is not checked
(any is accepted, as before with pynetdicom's defaults).
"""

from __future__ import annotations

import asyncio
import errno
import logging

from gateway.config import ConfigError, Dimse
from gateway.dimse import negotiation
from gateway.dimse.handlers import DimseHandlers
from gateway.dimse.upper_layer import Association

log = logging.getLogger("gateway.dimse")

STOP_GRACE_SECONDS = 2.0  # how long requests in flight may finish when the gateway stops
# Connections beyond dimse.max_associations still read, so that their A-ASSOCIATE-RQ is answered
# with A-ASSOCIATE-RJ ("local limit exceeded") rather than a bare close; beyond these few more,
# a connection is closed at once.
REJECT_ALLOWANCE = 8


class Listener:
    """What every association shares: configuration, negotiation policy, handlers."""

    def __init__(self, config: Dimse, handlers: DimseHandlers):
        self.config = config
        self.policy = negotiation.Policy(config.max_pdu, frozenset(config.allowed_calling_aes))
        self.supported = self.policy.supported()
        self.handlers = handlers
        self.connections: set[Association] = set()

    def admit(self, association: Association) -> bool:
        """A new connection: counted from now on (False: too many, close it unread)."""
        if len(self.connections) >= self.config.max_associations + REJECT_ALLOWANCE:
            return False
        self.connections.add(association)
        return True

    def negotiate(self, rq, asking: Association | None = None
                  ) -> negotiation.Agreement | negotiation.Rejection:
        # Connections still to send their A-ASSOCIATE-RQ hold a slot as associations do (each
        # for at most dimse.association_rq_timeout): a crowd of silent or trickling connections
        # cannot keep the limit's worth of associations out for longer than that.
        holding = sum(1 for a in self.connections if a is not asking and a.holds_slot)
        if holding >= self.config.max_associations:
            return negotiation.TOO_MANY
        return negotiation.negotiate(rq, self.policy, self.supported)


class DimseServer:
    def __init__(self, config: Dimse, ae_title: str, handlers: DimseHandlers):
        self.config = config
        self.ae_title = ae_title
        self.handlers = handlers
        self.server: asyncio.AbstractServer | None = None
        self.listener: Listener | None = None

    async def start(self) -> None:
        cfg = self.config
        self.listener = listener = Listener(cfg, self.handlers)
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(lambda: Association(listener),
                                                   cfg.host, cfg.port, reuse_address=True)
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(f"dimse.port: {cfg.host}:{cfg.port} {reason}") from None
        log.info("DIMSE listener started", extra={"ae": self.ae_title,
                                                  "address": f"{cfg.host}:{cfg.port}"})

    def is_running(self) -> bool:
        return self.server is not None and self.server.is_serving()

    async def stop(self) -> None:
        """Stop accepting; let requests in flight finish briefly; abort what is left."""
        if self.server is None:
            return
        server, self.server = self.server, None
        server.close()
        associations = list(self.listener.connections)
        for association in associations:
            association.stop()
        if associations:
            await asyncio.wait([a.closed for a in associations], timeout=STOP_GRACE_SECONDS)
        for association in list(self.listener.connections):
            association.abort(None, "the gateway is stopping")
            association.close()
        await server.wait_closed()
        log.info("DIMSE listener stopped")
