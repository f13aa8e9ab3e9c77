"""The association's principal applied to DIMSE requests: the scope each operation class needs
(issue 17 — C-FIND and N-GET read, N-CREATE and N-SET write, N-ACTION 1-2 perform, N-ACTION 3-5
watch) and the AE titles a Receiving AE may be; and the negotiation's User Identity decision
as an A-ASSOCIATE-RJ or the AC's User Identity response."""

from __future__ import annotations

from pynetdicom.pdu_primitives import A_ASSOCIATE, UserIdentityNegotiation

from gateway.security.associations import AssociationAccess, IdentityRefused
from gateway.security.principal import PERFORM, READ, WATCH, WRITE, Principal
from gateway.ups.mpps import MPPS_CLASS
from gateway.ups.mwl import MWL_FIND

NOT_AUTHORIZED = 0x0124  # Refused: Not authorized (PS3.7 C.5.x, general status)
OPERATION_SCOPES = {"N-CREATE": WRITE, "N-SET": WRITE, "N-GET": READ, "C-FIND": READ}
ACTION_SCOPES = {1: PERFORM, 2: PERFORM, 3: WATCH, 4: WATCH, 5: WATCH}


class Grant:
    """What the negotiation decided: who, and whether the AC answers the User Identity."""

    def __init__(self, principal: Principal, respond: bool):
        self.principal = principal
        self.respond = respond

    @staticmethod
    def response() -> UserIdentityNegotiation:
        """The AC's positive response (PS3.7 D.3.3.7.2: zero length for types 1 and 2; the
        gateway returns no token of its own for type 5 either)."""
        item = UserIdentityNegotiation()
        item.server_response = b""
        return item


def decide(access: AssociationAccess, rq: A_ASSOCIATE, calling_ae: str) -> Grant:
    """The association's grant; raises ``IdentityRefused``."""
    item = next((i for i in rq.user_information if isinstance(i, UserIdentityNegotiation)),
                None)
    identity = None
    if item is not None:
        identity = (int(item.user_identity_type or 0), item.primary_field or b"",
                    item.secondary_field or b"")
    principal = access.grant(calling_ae, identity)
    respond = bool(item is not None and item.positive_response_requested and access.enabled
                   and identity[0] in (2, 5))
    return Grant(principal, respond)


# The other SOP classes the listener serves: an MPPS drives its UPS workitem (claims, completes,
# cancels it), so its changes need what a performer's do.
EXTENSION_SCOPES = {
    MWL_FIND: {"C-FIND": READ},
    MPPS_CLASS: {"N-CREATE": PERFORM, "N-SET": PERFORM, "N-GET": READ},
}


def denied(principal: Principal | None, op: str, action: int | None,
           sop_class: str | None = None) -> tuple[int, str] | None:
    """(0x0124, why) when ``principal`` may not do ``op`` (``action``: its Action Type) — on a
    UPS context, or on the context of ``sop_class`` (Modality Worklist, MPPS)."""
    if principal is None:
        return None
    if sop_class is not None:
        scope = EXTENSION_SCOPES.get(sop_class, {}).get(op, READ)
    else:
        scope = ACTION_SCOPES.get(action) if op == "N-ACTION" else OPERATION_SCOPES.get(op)
    if scope is None or principal.may(scope):
        return None
    return NOT_AUTHORIZED, f"Not authorized: {op} needs the scope {scope}"


def denied_watch(principal: Principal | None, receiving_ae: str) -> tuple[int, str] | None:
    if principal is None or principal.may_watch(receiving_ae):
        return None
    return NOT_AUTHORIZED, f"Not authorized to subscribe for AE {receiving_ae}"


__all__ = ["Grant", "IdentityRefused", "decide", "denied", "denied_watch"]
