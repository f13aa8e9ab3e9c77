"""The Modality Performed Procedure Step SCP (PS3.4 Annex F): N-CREATE, N-SET and N-GET on the
MPPS SOP class, each one call of the core's ``MppsService`` (``ups.mpps``).

Registered with ``DimseHandlers`` for its SOP class; decoding, statuses, Error Comments and logs
are the handlers' own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.dimse import convert
from gateway.dimse import messages as m
from gateway.dimse.decoding import (UNRECOGNIZED_OPERATION, Refused, canonical, requested_uid,
                                    uid_param)
from gateway.ups import status as st
from gateway.ups.dataset import select
from gateway.ups.mpps import MPPS_CLASS, MppsService

if TYPE_CHECKING:
    from gateway.dimse.handlers import DimseHandlers, Request
    from gateway.dimse.upper_layer import Association

N_CREATE, N_SET, N_GET = 0x0140, 0x0120, 0x0110


class MppsScp:
    sop_class = MPPS_CLASS

    def __init__(self, service: MppsService):
        self.service = service

    async def serve(self, handlers: DimseHandlers, assoc: Association, req: Request) -> None:
        bodies = {N_CREATE: self.n_create, N_SET: self.n_set, N_GET: self.n_get}
        body = bodies.get(req.message.command_field)
        try:
            if body is None:
                raise Refused(UNRECOGNIZED_OPERATION,
                              f"{req.op} is not offered on a Modality Performed Procedure Step "
                              "context")
            if req.message.sop_class and req.message.sop_class != MPPS_CLASS:
                raise Refused(0x0122, f"SOP Class {req.message.sop_class} is not supported on "
                              "an MPPS context")
            code, comment, reply = await body(handlers, req)
        except Exception as exc:  # noqa: BLE001 - every failure gets an explicit status
            code, comment = handlers.classify(req, exc)
            reply = None
        handlers.done(req, code, comment)
        await handlers.respond(assoc, req, code, comment, reply)

    async def n_create(self, handlers: DimseHandlers, req: Request):
        uid = req.uid = uid_param(req.message.text(m.AFFECTED_SOP_INSTANCE),
                                  "Affected SOP Instance UID")
        ds = canonical(req, "Attribute List")
        outcome = await handlers.core(self.service.create(ds, uid, requester=req.ae))
        req.uid = req.instance = outcome.uid
        return st.SUCCESS, "", None

    async def n_set(self, handlers: DimseHandlers, req: Request):
        uid = req.uid = requested_uid(req)
        mods = canonical(req, "Modification List")
        await handlers.core(self.service.update(uid, mods, requester=req.ae))
        req.instance = uid
        return st.SUCCESS, "", None

    async def n_get(self, handlers: DimseHandlers, req: Request):
        uid = req.uid = requested_uid(req)
        keys = [f"{tag:08X}" for tag in req.message.tags(m.ATTRIBUTE_IDENTIFIERS)]
        ds = await handlers.core(self.service.retrieve(uid))
        if keys:
            ds = select(ds, keys)
        reply = convert.encode(ds, req.syntax)
        if reply is None:
            raise Refused(st.PROCESSING_FAILURE, f"MPPS {uid} cannot be encoded")
        req.instance = uid
        return st.SUCCESS, "", reply
