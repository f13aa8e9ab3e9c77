"""Association negotiation (PS3.8 §7.1, Annex D). As the acceptor (the listener):
A-ASSOCIATE-RQ in, A-ASSOCIATE-AC or -RJ out. As the requestor (``requestor``, sending event
reports): A-ASSOCIATE-RQ out, A-ASSOCIATE-AC or -RJ in.

The PDU codecs and the presentation-context matching are pynetdicom's public pieces
(``pynetdicom.pdu``, ``pynetdicom.presentation.negotiate_as_acceptor`` / ``_as_requestor``);
this module only holds the gateway's policy: which SOP classes and transfer syntaxes it takes,
who may associate, and what it tells the peer about itself — the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (A_ASSOCIATE, AsynchronousOperationsWindowNegotiation,
                                       ImplementationClassUIDNotification,
                                       ImplementationVersionNameNotification,
                                       MaximumLengthNotification, SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import (PresentationContext, negotiate_as_acceptor,
                                     negotiate_as_requestor)

from gateway import __version__
from gateway.dimse.binary import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE
from gateway.ups.uids import UPS_EVENT, UPS_PULL, UPS_PUSH, UPS_QUERY, UPS_WATCH

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # the DICOM application context (PS3.7 A.2.1)
VERIFICATION = "1.2.840.10008.1.1"
TRANSFER_SYNTAXES = (EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE)
UPS_SOP_CLASSES = (UPS_PUSH, UPS_PULL, UPS_WATCH, UPS_EVENT, UPS_QUERY)

# Who the gateway says it is (PS3.7 D.3.3.2): a UUID-derived UID (PS3.5 B.2) fixed for the
# gateway's upper layer, and its version (at most 16 characters).
IMPLEMENTATION_CLASS_UID = "2.25.48937909397859884075901396105969556661"
IMPLEMENTATION_VERSION_NAME = f"UPS_GATEWAY_{__version__.replace('.', '')}"[:16]

# A-ASSOCIATE-RJ (PS3.8 Table 9-21): result, source, reason/diagnostic.
REJECTED_PERMANENT, REJECTED_TRANSIENT = 1, 2
SERVICE_USER, SERVICE_PROVIDER_PRESENTATION = 1, 3
NO_REASON_GIVEN, APPLICATION_CONTEXT_NOT_SUPPORTED, CALLING_AE_NOT_RECOGNIZED = 1, 2, 3
CALLED_AE_NOT_RECOGNIZED = 7  # (service-user)
LOCAL_LIMIT_EXCEEDED = 2  # service-provider (presentation)


@dataclass
class Rejection:
    result: int
    source: int
    diagnostic: int
    reason: str

    def pdu(self) -> bytes:
        primitive = A_ASSOCIATE()
        primitive.result, primitive.result_source = self.result, self.source
        primitive.diagnostic = self.diagnostic
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(primitive)
        return pdu.encode()

    @property
    def permanent(self) -> bool:
        return self.result == REJECTED_PERMANENT


TOO_MANY = Rejection(REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED,
                     "local limit exceeded")


@dataclass
class Agreement:
    """An accepted association: what both sides agreed, and the A-ASSOCIATE-AC that says so."""

    calling_ae: str
    called_ae: str
    contexts: dict[int, str]  # accepted context ID -> abstract syntax
    transfer_syntaxes: dict[int, str]  # accepted context ID -> transfer syntax
    peer_max_pdu: int  # the peer's Maximum Length Received (0: no limit)
    # The SCP/SCU Role Selection items the peer sent: SOP class -> (SCU role, SCP role), as
    # proposed (we accept) or as answered (we request).
    roles: dict[str, tuple[bool | None, bool | None]] = field(default_factory=dict)
    ac: bytes = field(repr=False, default=b"")
    principal: Any = None  # who the association acts as (gateway.security); None: unchecked


@dataclass(frozen=True)
class Policy:
    max_pdu: int  # ours: the largest P-DATA-TF variable field we receive (0: no limit)
    allowed_calling_aes: frozenset[str] = frozenset()  # empty: anyone
    extra_sop_classes: tuple[str, ...] = ()  # served besides UPS (Modality Worklist, MPPS)
    called_ae: str | None = None  # set: the only Called AE title accepted (dimse.called_ae_check)
    # (request, calling AE) → a grant (``.principal``, ``.respond``: answer the User Identity)
    # or a Rejection: the security decision (``dimse.access.decide``); None: no checks.
    identify: Callable[[A_ASSOCIATE, str], Any] | None = None

    def supported(self) -> list[PresentationContext]:
        contexts = []
        for abstract in (*UPS_SOP_CLASSES, *self.extra_sop_classes, VERIFICATION):
            cx = PresentationContext()
            cx.abstract_syntax = abstract
            for syntax in TRANSFER_SYNTAXES:
                cx.add_transfer_syntax(syntax)
            if abstract == UPS_EVENT:
                # Both roles: a subscriber may propose either (PS3.4 CC.3.3) and then hold the
                # association open.
                cx.scu_role = cx.scp_role = True
            contexts.append(cx)
        return contexts


def decode_request(raw: bytes) -> A_ASSOCIATE:
    """An A-ASSOCIATE-RQ PDU (header included) as pynetdicom's primitive; raises on garbage."""
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(raw)
    return pdu.to_primitive()


def negotiate(rq: A_ASSOCIATE, policy: Policy, supported: list[PresentationContext]
              ) -> Agreement | Rejection:
    calling = str(rq.calling_ae_title or "").strip()
    if str(rq.application_context_name or "") != APPLICATION_CONTEXT:
        return Rejection(REJECTED_PERMANENT, SERVICE_USER, APPLICATION_CONTEXT_NOT_SUPPORTED,
                         "application context name not supported")
    if policy.called_ae is not None and \
            str(rq.called_ae_title or "").strip() != policy.called_ae:
        return Rejection(REJECTED_PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNIZED,
                         "called AE title not recognised")
    if policy.allowed_calling_aes and calling not in policy.allowed_calling_aes:
        return Rejection(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED,
                         "calling AE title not recognised")
    grant = policy.identify(rq, calling) if policy.identify is not None else None
    if isinstance(grant, Rejection):
        return grant
    peer_max_pdu, roles = _user_information(rq)
    window_proposed = any(isinstance(item, AsynchronousOperationsWindowNegotiation)
                          for item in rq.user_information)
    results, role_replies = negotiate_as_acceptor(rq.presentation_context_definition_list,
                                                  supported, roles or None)
    _prefer_the_requestors_order(rq, results)
    agreement = _agreement(rq, results, peer_max_pdu, roles)
    extra = []
    if grant is not None:
        agreement.principal = grant.principal
        if grant.respond:
            extra.append(grant.response())
    agreement.ac = _accept_pdu(rq, results, [*role_replies, *extra], policy, window_proposed)
    return agreement


def _prefer_the_requestors_order(rq: A_ASSOCIATE, results: list[PresentationContext]) -> None:
    """Each accepted context gets the first transfer syntax the requestor proposed that the
    gateway supports (its preference: a client may decode only what it asked for first).
    pynetdicom's matching picks by the acceptor's order instead."""
    proposed = {cx.context_id: [str(ts) for ts in cx.transfer_syntax]
                for cx in rq.presentation_context_definition_list}
    for cx in results:
        if cx.result != 0x00:
            continue
        for syntax in proposed.get(cx.context_id, ()):
            if syntax in TRANSFER_SYNTAXES:
                cx.transfer_syntax = [syntax]
                break


def _user_information(primitive: A_ASSOCIATE) -> tuple[int, dict]:
    """The peer's Maximum Length Received and SCP/SCU Role Selection items."""
    peer_max_pdu = 0
    roles: dict[str, tuple[bool | None, bool | None]] = {}
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max_pdu = item.maximum_length_received or 0
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
            roles[str(item.sop_class_uid)] = (item.scu_role, item.scp_role)
    return peer_max_pdu, roles


def _agreement(primitive: A_ASSOCIATE, results: list[PresentationContext], peer_max_pdu: int,
               roles: dict) -> Agreement:
    accepted = [cx for cx in results if cx.result == 0x00]
    return Agreement(
        calling_ae=str(primitive.calling_ae_title or "").strip(),
        called_ae=str(primitive.called_ae_title or "").strip(),
        contexts={cx.context_id: str(cx.abstract_syntax) for cx in accepted},
        transfer_syntaxes={cx.context_id: str(cx.transfer_syntax[0]) for cx in accepted},
        peer_max_pdu=peer_max_pdu, roles=roles)


def _identity(max_pdu: int) -> list:
    """The user information items saying who we are and what we receive (PS3.7 D.3.3.1-2)."""
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return [max_length, class_uid, version]


def _accept_pdu(rq: A_ASSOCIATE, results: list[PresentationContext], role_replies: list,
                policy: Policy, window_proposed: bool) -> bytes:
    ac = A_ASSOCIATE()
    # The AC echoes both AE titles (PS3.8 Table 9-17: "should be" the RQ's values).
    ac.called_ae_title = rq.called_ae_title
    ac.calling_ae_title = rq.calling_ae_title
    ac.application_context_name = APPLICATION_CONTEXT
    ac.result = 0x00
    ac.presentation_context_definition_results_list = results
    info: list = [*_identity(policy.max_pdu), *role_replies]
    if window_proposed:
        # One request at a time each way (PS3.7 D.3.3.3): requests are served in order.
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        info.append(window)
    ac.user_information = info
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    return pdu.encode()


# ---- as the requestor ----------------------------------------------------------------------------

def proposal(context_id: int, abstract_syntax: str, transfer_syntaxes: tuple[str, ...], *,
             scu_role: bool | None = None, scp_role: bool | None = None) -> PresentationContext:
    """A presentation context to propose; ``scu_role``/``scp_role`` set: with a role selection
    item for its SOP class (PS3.7 D.3.3.4)."""
    cx = PresentationContext()
    cx.context_id = context_id
    cx.abstract_syntax = abstract_syntax
    for syntax in transfer_syntaxes:
        cx.add_transfer_syntax(syntax)
    cx.scu_role, cx.scp_role = scu_role, scp_role
    return cx


def request_pdu(calling_ae: str, called_ae: str, contexts: list[PresentationContext],
                max_pdu: int) -> bytes:
    """The A-ASSOCIATE-RQ proposing ``contexts``, with our Maximum Length Received and identity."""
    rq = A_ASSOCIATE()
    rq.application_context_name = APPLICATION_CONTEXT
    rq.calling_ae_title = calling_ae
    rq.called_ae_title = called_ae
    rq.presentation_context_definition_list = contexts
    roles = []
    for cx in contexts:
        if cx.scu_role is not None or cx.scp_role is not None:
            role = SCP_SCU_RoleSelectionNegotiation()
            role.sop_class_uid = cx.abstract_syntax
            role.scu_role, role.scp_role = bool(cx.scu_role), bool(cx.scp_role)
            roles.append(role)
    rq.user_information = [*_identity(max_pdu), *roles]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    return pdu.encode()


def read_acceptance(raw: bytes, proposed: list[PresentationContext]) -> Agreement:
    """An A-ASSOCIATE-AC PDU (header included) answering ``proposed``: the contexts the peer
    accepted, its transfer syntax each, the peer's maximum PDU and role replies. Raises on
    garbage."""
    pdu = A_ASSOCIATE_AC()
    pdu.decode(raw)
    ac = pdu.to_primitive()
    peer_max_pdu, roles = _user_information(ac)
    results = negotiate_as_requestor(proposed, ac.presentation_context_definition_results_list,
                                     roles or None)
    return _agreement(ac, results, peer_max_pdu, roles)


def read_rejection(raw: bytes) -> Rejection:
    """An A-ASSOCIATE-RJ PDU (header included) as the ``Rejection`` it says; raises on garbage."""
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(raw)
    return Rejection(pdu.result, pdu.source, pdu.reason_diagnostic,
                     f"{pdu.result_str.lower()}, by the {pdu.source_str}: {pdu.reason_str}")
