"""DICOM audit messages (PS3.15 A.5, the schema of A.5.1) built with the standard library.

Every message has EventIdentification (EventID from A.5.3, action, time, outcome),
ActiveParticipant for the requestor (user or AE, its address) and for the gateway,
AuditSourceIdentification, and ParticipantObjectIdentification for the workitem, its patient
and the query, when there are such."""

from __future__ import annotations

import base64
import datetime
import time
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

# EventID (DCM): PS3.15 A.5.3
APPLICATION_ACTIVITY = ("110100", "Application Activity")
PROCEDURE_RECORD = ("110111", "Procedure Record")
QUERY = ("110112", "Query")
SECURITY_ALERT = ("110113", "Security Alert")
USER_AUTHENTICATION = ("110114", "User Authentication")
# EventTypeCode (DCM)
APPLICATION_START = ("110120", "Application Start")
APPLICATION_STOP = ("110121", "Application Stop")
LOGIN = ("110122", "Login")
LOGOUT = ("110123", "Logout")
USE_OF_RESTRICTED_FUNCTION = ("110132", "Use of a restricted function")
# EventOutcomeIndicator
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8

UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"


@dataclass
class AuditEvent:
    event_id: tuple[str, str]
    action: str  # C R U D E
    outcome: int = SUCCESS
    user: str | None = None  # who asked: a credential's name, else the calling AE / "anonymous"
    ae: str | None = None  # the requestor's AE title, when it has one
    address: str | None = None  # where from
    type_code: tuple[str, str] | None = None
    description: str | None = None  # what failed, for outcomes other than success
    workitem: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    query: str | None = None  # the search's parameters / C-FIND identifier, as text
    when: float = field(default_factory=time.time)


_CONTROL = dict.fromkeys(c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D))


def _clean(event: AuditEvent) -> AuditEvent:
    """The event with XML-unsafe control characters removed from its texts."""
    for name, value in vars(event).items():
        if isinstance(value, str):
            setattr(event, name, value.translate(_CONTROL))
    return event


def _code(parent: ET.Element, tag: str, code: tuple[str, str], system: str = "DCM") -> None:
    ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": system,
                                "originalText": code[1]})


def to_xml(event: AuditEvent, source_id: str, gateway_ae: str, gateway_address: str) -> bytes:
    event = _clean(event)
    root = ET.Element("AuditMessage")
    when = datetime.datetime.fromtimestamp(event.when, datetime.timezone.utc)
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action,
        "EventDateTime": when.isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": str(event.outcome)})
    _code(ident, "EventID", event.event_id)
    if event.type_code:
        _code(ident, "EventTypeCode", event.type_code)
    if event.description and event.outcome != SUCCESS:
        ET.SubElement(ident, "EventOutcomeDescription").text = event.description[:1000]

    requestor = {"UserID": event.user or event.ae or "anonymous", "UserIsRequestor": "true"}
    if event.ae:
        requestor["AlternativeUserID"] = f"AETITLES={event.ae}"
    if event.address:
        requestor["NetworkAccessPointID"] = event.address.rsplit(":", 1)[0] \
            if event.address.count(":") == 1 else event.address
        requestor["NetworkAccessPointTypeCode"] = "2"  # IP address
    participant = ET.SubElement(root, "ActiveParticipant", requestor)
    _code(participant, "RoleIDCode", ("110153", "Source Role ID"))
    gateway = ET.SubElement(root, "ActiveParticipant", {
        "UserID": gateway_ae, "AlternativeUserID": f"AETITLES={gateway_ae}",
        "UserIsRequestor": "false", "NetworkAccessPointID": gateway_address,
        "NetworkAccessPointTypeCode": "2"})
    _code(gateway, "RoleIDCode", ("110152", "Destination Role ID"))

    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    _code(source, "AuditSourceTypeCode", ("4", "Application Server Process"))

    if event.patient_id:
        patient = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": event.patient_id, "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1"})
        _code(patient, "ParticipantObjectIDTypeCode", ("2", "Patient Number"), "RFC-3881")
        if event.patient_name:
            ET.SubElement(patient, "ParticipantObjectName").text = event.patient_name
    if event.workitem:
        item = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": event.workitem, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "20"})  # Job
        _code(item, "ParticipantObjectIDTypeCode", ("UPS", "UPS SOP Instance UID"),
              "99UPSGW")
    if event.query is not None:
        query = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": UPS_PUSH, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "24"})  # Query
        _code(query, "ParticipantObjectIDTypeCode", ("110181", "SOP Class UID"))
        ET.SubElement(query, "ParticipantObjectQuery").text = \
            base64.b64encode(event.query.encode("utf-8", "replace")).decode()
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)
