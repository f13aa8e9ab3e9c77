"""The Modality Worklist SCP (PS3.4 Annex K): C-FIND on the Modality Worklist Information Model -
FIND SOP class, answered from the UPS worklist through the core's projection (``ups.mwl``).

Registered with ``DimseHandlers`` for its SOP class: the handlers' plumbing (decoding, responses,
statuses, logs) is shared; only the identifier's meaning differs from a UPS C-FIND.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.dimse.decoding import UNRECOGNIZED_OPERATION
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
        if req.message.command_field != C_FIND:
            comment = f"{req.op} is not offered on a Modality Worklist context"
            handlers.done(req, UNRECOGNIZED_OPERATION, comment)
            await handlers.respond(assoc, req, UNRECOGNIZED_OPERATION, comment)
            return
        await handlers.stream_find(assoc, req, self.worklist.from_identifier,
                                   self.worklist.find, "Worklist entry")
