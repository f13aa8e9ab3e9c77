"""The DIMSE listener: a pynetdicom acceptor for the UPS SOP classes and Verification.

Handlers (``gateway.dimse.handlers``) run in pynetdicom's association threads and reach the UPS
core through ``LoopBridge``.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from pynetdicom import AE, evt
from pynetdicom.sop_class import (UnifiedProcedureStepEvent, UnifiedProcedureStepPull,
                                  UnifiedProcedureStepPush, UnifiedProcedureStepQuery,
                                  UnifiedProcedureStepWatch, Verification)

from gateway.config import ConfigError
from gateway.dimse import handlers
from gateway.dimse.bridge import LoopBridge
from gateway.dimse.net import NODELAY_HANDLER

log = logging.getLogger("gateway.dimse")

UPS_SOP_CLASSES = (UnifiedProcedureStepPush, UnifiedProcedureStepPull, UnifiedProcedureStepWatch,
                   UnifiedProcedureStepEvent, UnifiedProcedureStepQuery)
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"]


class DimseServer:
    def __init__(self, gateway):
        self.gateway = gateway
        self.config = gateway.config
        self.server = None
        self.bridge: LoopBridge | None = None

    def _make_ae(self) -> AE:
        cfg = self.config.dimse
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout
        ae.dimse_timeout = cfg.dimse_timeout
        ae.network_timeout = cfg.network_timeout
        ae.maximum_pdu_size = cfg.max_pdu
        ae.require_calling_aet = list(cfg.allowed_calling_aes)
        for sop_class in UPS_SOP_CLASSES:
            # The Event SOP class is accepted in both roles: a subscriber may open the association
            # and receive N-EVENT-REPORTs on it.
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        return ae

    async def start(self) -> None:
        cfg = self.config.dimse
        self.bridge = LoopBridge(asyncio.get_running_loop(), cfg.request_timeout)
        ae = self._make_ae()
        bound = handlers.bind(self.gateway, self.bridge)
        try:
            self.server = ae.start_server((cfg.host, cfg.port), block=False,
                                          evt_handlers=[NODELAY_HANDLER, *bound])
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(f"dimse.port: {cfg.host}:{cfg.port} {reason}") from None
        log.info("DIMSE listener started", extra={"ae": self.config.ae_title,
                                                  "address": f"{cfg.host}:{cfg.port}"})

    def is_running(self) -> bool:
        sock = getattr(self.server, "socket", None)
        return sock is not None and sock.fileno() != -1

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await asyncio.to_thread(server.shutdown)
            log.info("DIMSE listener stopped")
