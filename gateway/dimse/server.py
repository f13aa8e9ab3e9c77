"""The DIMSE listener: the gateway's own upper layer (``upper_layer``) on its event loop.

Configuration (``dimse`` in config.yaml) is applied here and in the upper layer: the called AE
title (``called_ae_check``: any other is rejected, "called AE title not recognised"), the
calling-AE allowlist (an association from any other AE is rejected, "calling AE title not
recognised"), the maximum of concurrent associations, in all and per calling AE (more are
rejected as "local limit exceeded"), User Identity and the scopes of the association
(``dimse.access``, ``gateway.security.associations``), TLS (``dimse.tls``), the ACSE, DIMSE and
network timeouts and the largest PDU we receive.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from gateway.config import ConfigError, Dimse
from gateway.dimse import access as access_rules
from gateway.dimse import negotiation
from gateway.dimse.handlers import DimseHandlers
from gateway.dimse.upper_layer import Association
from gateway.metrics import Metrics
from gateway.security import tls
from gateway.security.associations import AssociationAccess

log = logging.getLogger("gateway.dimse")

STOP_GRACE_SECONDS = 2.0  # how long requests in flight may finish when the gateway stops
IDENTITY_REFUSED = "user identity refused"  # the metrics' reason for an _identify refusal
# Connections beyond dimse.max_associations still read, so that their A-ASSOCIATE-RQ is answered
# with A-ASSOCIATE-RJ ("local limit exceeded") rather than a bare close; beyond these few more,
# a connection is closed at once.
REJECT_ALLOWANCE = 8


class Listener:
    """What every association shares: configuration, negotiation policy, handlers."""

    def __init__(self, config: Dimse, handlers: DimseHandlers, ae_title: str | None = None,
                 access: AssociationAccess | None = None, metrics: Metrics | None = None):
        self.config = config
        self.access = access
        self.metrics = metrics or handlers.metrics
        self.policy = negotiation.Policy(
            config.max_pdu, frozenset(config.allowed_calling_aes), tuple(handlers.extensions),
            called_ae=ae_title if config.called_ae_check else None,
            identify=self._identify if access is not None else None)
        self.supported = self.policy.supported()
        self.handlers = handlers
        self.connections: set[Association] = set()
        self.audit = None  # (calling AE, address, Agreement | Rejection) -> None, when auditing

    def associated(self, calling_ae: str, address: str, outcome) -> None:
        """An A-ASSOCIATE-RQ was answered with ``outcome``."""
        if self.audit is not None:
            self.audit(calling_ae, address, outcome)

    def admit(self, association: Association) -> bool:
        """A new connection: counted from now on (False: too many, close it unread)."""
        if len(self.connections) >= self.config.max_associations + REJECT_ALLOWANCE:
            return False
        self.connections.add(association)
        return True

    def negotiate(self, rq, asking: Association | None = None
                  ) -> negotiation.Agreement | negotiation.Rejection:
        outcome = self._negotiate(rq, asking)
        if isinstance(outcome, negotiation.Rejection):
            # (an identity refusal's text names the credential: one bounded label for all)
            reason = IDENTITY_REFUSED if outcome.diagnostic == negotiation.NO_REASON_GIVEN \
                else outcome.reason
            self.metrics.associations_rejected.labels(reason).inc()
        else:
            self.metrics.associations_accepted.inc()
        return outcome

    def _negotiate(self, rq, asking: Association | None
                   ) -> negotiation.Agreement | negotiation.Rejection:
        # Connections still to send their A-ASSOCIATE-RQ hold a slot as associations do (each
        # for at most dimse.association_rq_timeout): a crowd of silent or trickling connections
        # cannot keep the limit's worth of associations out for longer than that.
        holding = sum(1 for a in self.connections if a is not asking and a.holds_slot)
        if holding >= self.config.max_associations:
            return negotiation.TOO_MANY
        calling = str(rq.calling_ae_title or "").strip()
        if sum(1 for a in self.connections if a.is_established and a.calling_ae == calling) \
                >= self.config.max_associations_per_ae:
            return negotiation.TOO_MANY
        return negotiation.negotiate(rq, self.policy, self.supported)

    def established(self) -> int:
        return sum(1 for a in self.connections if a.is_established)

    def _identify(self, rq, calling_ae: str):
        try:
            return access_rules.decide(self.access, rq, calling_ae)
        except access_rules.IdentityRefused as exc:
            return negotiation.Rejection(negotiation.REJECTED_PERMANENT,
                                         negotiation.SERVICE_USER, negotiation.NO_REASON_GIVEN,
                                         str(exc))


class DimseServer:
    def __init__(self, config: Dimse, ae_title: str, handlers: DimseHandlers,
                 access: AssociationAccess | None = None, audit=None,
                 metrics: Metrics | None = None):
        self.config = config
        self.ae_title = ae_title
        self.handlers = handlers
        self.access = access
        self.audit = audit  # told of every association answered (see Listener.associated)
        self.metrics = metrics or handlers.metrics
        self.server: asyncio.AbstractServer | None = None
        self.listener: Listener | None = None

    async def start(self) -> None:
        cfg = self.config
        self.listener = listener = Listener(cfg, self.handlers, self.ae_title, self.access,
                                            self.metrics)
        listener.audit = self.audit
        loop = asyncio.get_running_loop()
        context = None
        if cfg.tls.cert_file:  # the port then serves only TLS (PS3.15 B.1)
            try:
                context = tls.server_context(cfg.tls.cert_file, cfg.tls.key_file,
                                             cfg.tls.ca_file, cfg.tls.require_client_cert)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"dimse.tls: {exc}") from None
        try:
            self.server = await loop.create_server(
                lambda: Association(listener), cfg.host, cfg.port, reuse_address=True,
                ssl=context, ssl_handshake_timeout=(cfg.acse_timeout or None) if context else None)
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
