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
from gateway.metrics import Metrics

log = logging.getLogger("gateway.dimse")

STOP_GRACE_SECONDS = 2.0  # how long requests in flight may finish when the gateway stops


class Listener:
    """What every association shares: configuration, negotiation policy, handlers."""

    def __init__(self, config: Dimse, handlers: DimseHandlers, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.policy = negotiation.Policy(config.max_pdu, frozenset(config.allowed_calling_aes),
                                         tuple(handlers.extensions))
        self.supported = self.policy.supported()
        self.handlers = handlers
        self.connections: set[Association] = set()

    def negotiate(self, rq) -> negotiation.Agreement | negotiation.Rejection:
        if self.established() >= self.config.max_associations:
            outcome = negotiation.TOO_MANY
        else:
            outcome = negotiation.negotiate(rq, self.policy, self.supported)
        if isinstance(outcome, negotiation.Rejection):
            self.metrics.associations_rejected.labels(outcome.reason).inc()
        else:
            self.metrics.associations_accepted.inc()
        return outcome

    def established(self) -> int:
        return sum(1 for a in self.connections if a.is_established)


class DimseServer:
    def __init__(self, config: Dimse, ae_title: str, handlers: DimseHandlers,
                 metrics: Metrics | None = None):
        self.config = config
        self.ae_title = ae_title
        self.handlers = handlers
        self.metrics = metrics or handlers.metrics
        self.server: asyncio.AbstractServer | None = None
        self.listener: Listener | None = None

    async def start(self) -> None:
        cfg = self.config
        self.listener = listener = Listener(cfg, self.handlers, self.metrics)
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(lambda: Association(listener),
                                                   cfg.host, cfg.port, reuse_address=True)
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(f"dimse.port: {cfg.host}:{cfg.port} {reason}") from None
        log.info("DIMSE listener started", extra={"ae": self.ae_title,
                                                  "address": f"{cfg.host}:{cfg.port}"})

    def open_associations(self) -> int:
        return self.listener.established() if self.listener else 0

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
