"""The audit trail (issue 17): DICOM audit messages (PS3.15 A.5) for REST and DIMSE operations,
authentication failures and refusals, to a file and to syslog (RFC 5424; UDP, TCP, TLS per
RFC 5425), from a bounded buffer that survives a collector that is down. Every message read
back is checked against the A.5.1 structure."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import aiohttp
import pytest
from pydicom.dataset import Dataset

from gateway.testing import free_port
from tests import dimse_util as d
from tests.certs import CertificateAuthority
from tests.event_receiver import WsListener
from tests.helpers import GatewayProcess, new_uid, state_payload, workitem

GLOBAL = "1.2.840.10008.5.1.4.34.5"
KEY = "audit-test-key-0123456789"
READER = "audit-reader-key-0123456789"
JSON = {"Content-Type": "application/dicom+json"}


# ---- the A.5.1 structure -------------------------------------------------------------------

def _coded(element: ET.Element | None, where: str) -> None:
    assert element is not None, f"{where} missing"
    assert element.get("csd-code") and element.get("codeSystemName") and \
        element.get("originalText"), f"{where} is not a coded value: {element.attrib}"


def check_structure(xml: bytes) -> ET.Element:
    """Assert the PS3.15 A.5.1 schema's structure; the parsed message."""
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage"
    tags = [child.tag for child in root]
    assert tags[0] == "EventIdentification"
    participants = [i for i, t in enumerate(tags) if t == "ActiveParticipant"]
    assert participants and participants == list(range(1, 1 + len(participants)))
    source = 1 + len(participants)
    assert tags[source] == "AuditSourceIdentification"
    assert all(t == "ParticipantObjectIdentification" for t in tags[source + 1:]), tags
    ident = root[0]
    assert ident.get("EventActionCode") in ("C", "R", "U", "D", "E")
    assert ident.get("EventOutcomeIndicator") in ("0", "4", "8", "12")
    assert ident.get("EventDateTime", "").endswith("+00:00")
    _coded(ident.find("EventID"), "EventID")
    for type_code in ident.findall("EventTypeCode"):
        _coded(type_code, "EventTypeCode")
    for i in participants:
        p = root[i]
        assert p.get("UserID") and p.get("UserIsRequestor") in ("true", "false")
        for role in p.findall("RoleIDCode"):
            _coded(role, "RoleIDCode")
    assert sum(root[i].get("UserIsRequestor") == "true" for i in participants) == 1
    src = root[source]
    assert src.get("AuditSourceID")
    for type_code in src.findall("AuditSourceTypeCode"):
        _coded(type_code, "AuditSourceTypeCode")
    for obj in root[source + 1:]:
        assert obj.get("ParticipantObjectID")
        assert obj.get("ParticipantObjectTypeCode") in ("1", "2", "3", "4")
        _coded(obj.find("ParticipantObjectIDTypeCode"), "ParticipantObjectIDTypeCode")
    return root


def event_id(message: ET.Element) -> str:
    return message.find("EventIdentification/EventID").get("csd-code")


def summary(message: ET.Element) -> dict:
    ident = message.find("EventIdentification")
    type_code = ident.find("EventTypeCode")
    requestor = next(p for p in message.findall("ActiveParticipant")
                     if p.get("UserIsRequestor") == "true")
    objects = {o.get("ParticipantObjectTypeCodeRole"): o
               for o in message.findall("ParticipantObjectIdentification")}
    return {"id": event_id(message), "action": ident.get("EventActionCode"),
            "outcome": ident.get("EventOutcomeIndicator"),
            "type": type_code.get("csd-code") if type_code is not None else None,
            "user": requestor.get("UserID"), "alt": requestor.get("AlternativeUserID"),
            "address": requestor.get("NetworkAccessPointID"),
            "workitem": objects["20"].get("ParticipantObjectID") if "20" in objects else None,
            "patient": objects["1"].get("ParticipantObjectID") if "1" in objects else None,
            "patient_name": objects["1"].findtext("ParticipantObjectName")
            if "1" in objects else None,
            "query": base64.b64decode(objects["24"].findtext("ParticipantObjectQuery")).decode()
            if "24" in objects else None}


def read_file(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [summary(check_structure(line)) for line in path.read_bytes().splitlines() if line]


async def wait_until(found, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := found()):
        assert time.monotonic() < deadline, f"no audit message: {what}"
        await asyncio.sleep(0.05)
    return result


def matching(events: list[dict], **want) -> list[dict]:
    return [e for e in events if all(e.get(k) == v for k, v in want.items())]


# ---- syslog collectors -----------------------------------------------------------------------

class StreamCollector:
    """A syslog receiver over TCP or TLS: octet-counted RFC 5424 frames (RFC 5425 §4.3)."""

    def __init__(self, port: int | None = None, ssl=None):
        self.port = port or free_port()
        self.ssl = ssl
        self.frames: list[bytes] = []
        self.server = None

    async def start(self) -> "StreamCollector":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                 ssl=self.ssl, reuse_address=True)
        return self

    async def _client(self, reader: asyncio.StreamReader, writer) -> None:
        try:
            while True:
                length = int((await reader.readuntil(b" "))[:-1])
                self.frames.append(await reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class UdpCollector(asyncio.DatagramProtocol):
    def __init__(self):
        self.frames: list[bytes] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.frames.append(data)


def syslog_messages(frames: list[bytes]) -> list[dict]:
    out = []
    for frame in frames:
        header, bom, xml = frame.partition(b"\xef\xbb\xbf")
        assert bom and header.startswith(b"<85>1 "), header  # authpriv.notice, version 1
        assert b" ups-gateway " in header and b" DICOM+RFC3881 - " in header
        out.append(summary(check_structure(xml)))
    return out


# ---- the gateway ---------------------------------------------------------------------------

@pytest.fixture
async def tls_collector(tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    collector = await StreamCollector(ssl=ca.server_context(ca.issue("syslog", server=True))
                                      ).start()
    collector.ca = ca
    yield collector
    await collector.stop()


async def test_operations_are_audited_to_file_and_tls_syslog(tmp_path, tls_collector):
    audit_file = tmp_path / "audit.log"
    extra = {"auth": {"enabled": True, "api_keys": [
                {"key": KEY, "name": "ris", "scopes": ["ups.read", "ups.write", "ups.perform",
                                                       "ups.watch"], "ae_titles": ["AUDIT_WS"]},
                {"key": READER, "name": "viewer", "scopes": ["ups.read"], "ae_titles": []}]},
             "audit": {"file": str(audit_file), "syslog": {
                 "host": "127.0.0.1", "port": tls_collector.port, "transport": "tls",
                 "ca_file": tls_collector.ca.file}}}
    headers = {"Authorization": f"ApiKey {KEY}"}
    with GatewayProcess(tmp_path, extra=extra) as gw:
        async with aiohttp.ClientSession() as http:
            uid = new_uid()
            async with http.post(f"{gw.base}/workitems?workitem={uid}", headers={
                    **headers, **JSON}, json=workitem(patient_id="PID-AUDIT",
                                                      patient_name="Roe^Rita")) as r:
                assert r.status == 201
            async with http.get(f"{gw.base}/workitems/{uid}", headers=headers) as r:
                assert r.status == 200
            async with http.get(f"{gw.base}/workitems?PatientID=PID-AUDIT",
                                headers=headers) as r:
                assert r.status == 200
            async with http.put(f"{gw.base}/workitems/{uid}/state", headers={**headers, **JSON},
                                json=state_payload("IN PROGRESS", new_uid())) as r:
                assert r.status == 200
            async with http.post(f"{gw.base}/workitems/{GLOBAL}/subscribers/AUDIT_WS",
                                 headers=headers) as r:
                assert r.status == 201
            listener = await WsListener.open(http, f"{gw.ws_base}/ws/subscribers/AUDIT_WS",
                                             headers=headers)
            await listener.close()
            async with http.get(f"{gw.base}/workitems", headers={
                    "Authorization": "ApiKey wrong-key-0123456789"}) as r:
                assert r.status == 401
            async with http.post(f"{gw.base}/workitems", headers={
                    "X-API-Key": READER, **JSON}, json=workitem()) as r:
                assert r.status == 403
        with d.association(gw, ae_title="AUDIT_SCU") as assoc:
            identifier = Dataset()
            identifier.SOPInstanceUID = ""
            d.c_find(assoc, identifier)
            status, _ = d.n_create(assoc, workitem(patient_id="PID-DIMSE"), new_uid())
            assert d.status_of(status) == 0x0000
        assert not d.associate(gw, ae_title="AUDIT_SCU", called="NOT_US").is_established

        def events():
            return read_file(audit_file)
        await wait_until(lambda: matching(events(), id="110114", alt="AETITLES=AUDIT_SCU",
                                          outcome="4"), "association rejected")
    found = events()
    assert matching(found, id="110100", type="110120")  # application start
    assert matching(found, id="110100", type="110121")  # application stop
    [created] = matching(found, id="110111", action="C", user="apikey:ris")
    assert created["workitem"] == uid and created["patient"] == "PID-AUDIT"
    assert created["patient_name"] == "Roe^Rita" and created["user"] == "apikey:ris"
    assert created["address"] == "127.0.0.1" and created["outcome"] == "0"
    assert matching(found, id="110111", action="R", workitem=uid, patient="PID-AUDIT")
    assert matching(found, id="110111", action="U", workitem=uid)  # the claim
    assert matching(found, id="110111", action="U", workitem=GLOBAL)  # the subscription
    [query] = matching(found, id="110112", user="apikey:ris")
    assert query["query"] == "PatientID=PID-AUDIT"
    assert matching(found, id="110114", type="110122", alt="AETITLES=AUDIT_WS", outcome="0")
    assert matching(found, id="110114", type="110123", alt="AETITLES=AUDIT_WS")  # closed
    assert matching(found, id="110114", outcome="4", user="anonymous")  # the bad key
    assert matching(found, id="110113", user="apikey:viewer", outcome="4")  # refused
    assert matching(found, id="110114", alt="AETITLES=AUDIT_SCU", outcome="0")  # accepted
    assert matching(found, id="110112", alt="AETITLES=AUDIT_SCU")  # C-FIND
    assert matching(found, id="110111", action="C", alt="AETITLES=AUDIT_SCU",
                    patient="PID-DIMSE", patient_name="Doe^John")
    # The same messages went to syslog over TLS.
    over_syslog = await wait_until(lambda: len(tls_collector.frames) >= len(found) and
                                   syslog_messages(tls_collector.frames), "syslog")
    assert [e["id"] for e in over_syslog] == [e["id"] for e in found]


async def test_udp_syslog(tmp_path):
    loop = asyncio.get_running_loop()
    port = free_port()
    transport, collector = await loop.create_datagram_endpoint(
        UdpCollector, local_addr=("127.0.0.1", port))
    try:
        with GatewayProcess(tmp_path, dimse=False, extra={"audit": {"syslog": {
                "host": "127.0.0.1", "port": port, "transport": "udp"}}}) as gw:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{gw.base}/workitems") as r:
                    assert r.status in (200, 204)
            found = await wait_until(lambda: matching(syslog_messages(collector.frames),
                                                      id="110112"), "query over UDP")
            assert found[0]["user"] == "anonymous"
    finally:
        transport.close()


async def test_a_collector_that_is_down_gets_the_buffer_later_and_losses_are_counted(tmp_path):
    port = free_port()
    extra = {"audit": {"buffer": 5, "syslog": {"host": "127.0.0.1", "port": port,
                                                "transport": "tcp"}}}
    with GatewayProcess(tmp_path, dimse=False, extra=extra) as gw:
        async with aiohttp.ClientSession() as http:
            for _ in range(8):  # requests are answered although nobody takes their audit
                async with http.get(f"{gw.base}/workitems") as r:
                    assert r.status in (200, 204)
        lost = await gw.wait_for_log("audit messages lost: the buffer is full")
        assert lost["sink"] == "syslog" and lost["buffer"] == 5
        await gw.wait_for_log("audit sink unavailable; will retry")
        collector = await StreamCollector(port).start()
        try:
            messages = await wait_until(lambda: len(collector.frames) >= 5 and
                                        syslog_messages(collector.frames), "buffered messages",
                                        timeout=90)
            assert len(messages) == 5  # the buffer's worth; the rest was dropped and counted
            assert messages[0]["id"] == "110100"  # the start, in order
            report = await gw.wait_for_log("audit messages were lost")
            assert report["dropped"] >= 4
        finally:
            await collector.stop()
