"""The Modality Worklist SCP (PS3.4 Annex K): C-FIND on the Modality Worklist Information Model -
FIND SOP class, answered from the UPS worklist through the core's projection (``ups.mwl``).

Registered with ``DimseHandlers`` for its SOP class: the handlers' plumbing (decoding, responses,
statuses, logs) is shared; only the identifier's meaning differs from a UPS C-FIND.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.dimse import convert
from gateway.ups import status as st
from gateway.ups.mwl import MWL_FIND, ModalityWorklist

if TYPE_CHECKING:
    from gateway.dimse.handlers import DimseHandlers, Request
    from gateway.dimse.upper_layer import Association

C_FIND = 0x0020


class MwlFind:
    """C-FIND requests on an MWL context."""

    sop_class = MWL_FIND

    def __init__(self, worklist: ModalityWorklist):
        self.worklist = worklist

    async def serve(self, handlers: DimseHandlers, assoc: Association, req: Request) -> None:
        from gateway.dimse.handlers import UNRECOGNIZED_OPERATION, Refused, _decoded

        if req.message.command_field != C_FIND:
            comment = f"{req.op} is not offered on a Modality Worklist context"
            handlers.done(req, UNRECOGNIZED_OPERATION, comment)
            await handlers.respond(assoc, req, UNRECOGNIZED_OPERATION, comment)
            return
        try:
            identifier = convert.identifier_to_canonical(_decoded(req, "Identifier"))
            query = self.worklist.from_identifier(identifier)
        except Exception as exc:  # noqa: BLE001 - every failure gets an explicit status
            await handlers.find_failure(assoc, req, exc)
            return
        stream = self.worklist.find(query)
        count = 0
        try:
            while assoc.is_established:
                if req.msg_id in assoc.cancelled:
                    handlers.done(req, st.CANCEL, "", results=count)
                    await handlers.respond(assoc, req, st.CANCEL, "")
                    return
                async with asyncio.timeout(handlers.timeout):
                    entry = await anext(stream, None)
                if entry is None:
                    break
                result = convert.encode(entry, req.syntax)
                if result is None:
                    raise Refused(st.UNABLE_TO_PROCESS, "A worklist entry cannot be encoded")
                count += 1
                await handlers.respond(assoc, req, st.PENDING, "", result)
                await asyncio.sleep(0)  # let a C-CANCEL in
        except Exception as exc:  # noqa: BLE001
            await handlers.find_failure(assoc, req, exc)
            return
        finally:
            await stream.aclose()
        handlers.done(req, st.SUCCESS, "", results=count)
        await handlers.respond(assoc, req, st.SUCCESS, "")
