"""DIMSE requests and associations as audit events (``gateway.audit``)."""

from __future__ import annotations

from typing import Any, Callable

from gateway.audit import messages as a
from gateway.dimse import access

Record = Callable[[a.AuditEvent], None]
_ACTIONS = {"N-CREATE": "C", "N-SET": "U", "N-GET": "R", "N-ACTION": "U"}
_SUCCEEDED = frozenset((0x0000, 0xFF00, 0xFF01, 0xFE00))


def request_event(req: Any, code: int, message: str) -> a.AuditEvent | None:
    """The audit event of one answered DIMSE request (``handlers.Request``), or None (C-ECHO,
    unserved operations)."""
    outcome = a.SUCCESS if code in _SUCCEEDED or 0xB000 <= code <= 0xBFFF else a.MINOR_FAILURE
    principal = getattr(req, "principal", None)
    user = principal.name if principal is not None and principal.method != "none" else None
    common = {"user": user, "ae": req.ae, "address": req.address,
              "description": message if outcome != a.SUCCESS else None}
    if code == access.NOT_AUTHORIZED:
        return a.AuditEvent(a.SECURITY_ALERT, "E", a.MINOR_FAILURE,
                            type_code=a.USE_OF_RESTRICTED_FUNCTION, workitem=req.uid, **common)
    if req.op == "C-FIND":
        return a.AuditEvent(a.QUERY, "E", outcome, query=req.message.sop_class or "", **common)
    action = _ACTIONS.get(req.op)
    if action is None:
        return None
    event = a.AuditEvent(a.PROCEDURE_RECORD, action, outcome, workitem=req.uid, **common)
    patient_id, name = getattr(req, "patient", None) or (None, None)
    if isinstance(name, dict):
        name = name.get("Alphabetic")
    event.patient_id = patient_id if isinstance(patient_id, str) else None
    event.patient_name = name if isinstance(name, str) else None
    return event


def association_event(calling_ae: str, address: str, outcome: Any) -> a.AuditEvent:
    """An association accepted (``negotiation.Agreement``) or rejected (``Rejection``)."""
    principal = getattr(outcome, "principal", None)
    reason = getattr(outcome, "reason", None)
    return a.AuditEvent(a.USER_AUTHENTICATION, "E",
                        a.SUCCESS if reason is None else a.MINOR_FAILURE,
                        user=principal.name if principal is not None else None,
                        ae=calling_ae or None, address=address, type_code=a.LOGIN,
                        description=f"association rejected: {reason}" if reason else None)
