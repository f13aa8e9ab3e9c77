"""TLS on both protocols (issue 17): HTTPS/WSS with an optional client CA, the DIMSE listener
(PS3.15 Annex B) with an optional required client certificate, and N-EVENT-REPORTs to a peer
over TLS — certificates generated here, real clients."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import UnifiedProcedureStepPush, Verification

from tests.certs import CertificateAuthority
from tests.event_receiver import EventReceiver, WsListener
from tests.helpers import GatewayProcess, new_uid, workitem

GLOBAL = "1.2.840.10008.5.1.4.34.5"
JSON = {"Content-Type": "application/dicom+json"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return CertificateAuthority(tmp_path_factory.mktemp("other-ca"), "Unknown CA")


def _echo(port: int, tls_args=None) -> bool:
    ae = AE(ae_title="TLS_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(UnifiedProcedureStepPush)
    assoc = ae.associate("127.0.0.1", port, ae_title="UPS_GATEWAY", tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        return assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


# ---- REST -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def https_gateway(tmp_path_factory, ca):
    server = ca.issue("gateway-rest", server=True)
    proc = GatewayProcess(tmp_path_factory.mktemp("https"), dimse=False, extra={
        "rest": {"tls": {"cert_file": server.cert, "key_file": server.key}}})
    proc.start()
    yield proc
    proc.stop()


async def test_https_and_wss(https_gateway, ca):
    context = ca.client_context()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        uid = new_uid()
        async with http.post(f"{https_gateway.base}/workitems?workitem={uid}", json=workitem(),
                             headers=JSON) as r:
            assert r.status == 201
            assert r.headers["Location"].startswith("https://")
        async with http.post(f"{https_gateway.base}/workitems/{GLOBAL}/subscribers/TLS_WS") as r:
            assert r.status == 201
            assert r.headers["Location"].startswith("wss://")
        listener = await WsListener.open(http, f"{https_gateway.ws_base}/ws/subscribers/TLS_WS")
        try:
            second = new_uid()
            async with http.post(f"{https_gateway.base}/workitems?workitem={second}",
                                 json=workitem(), headers=JSON) as r:
                assert r.status == 201
            await listener.wait(1, uid=second)
        finally:
            await listener.close()


async def test_https_port_serves_only_tls(https_gateway, ca, other_ca):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{https_gateway.rest_port}/health") as r:
                await r.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not our CA
            async with http.get(f"{https_gateway.url}/health",
                                ssl=other_ca.client_context()) as r:
                await r.read()


async def test_https_client_certificate_required(tmp_path, ca, other_ca):
    server = ca.issue("gateway-rest-mtls", server=True)
    client = ca.issue("rest-client", server=False)
    stranger = other_ca.issue("stranger", server=False)
    proc = GatewayProcess(tmp_path, dimse=False, extra={"rest": {"tls": {
        "cert_file": server.cert, "key_file": server.key, "client_ca_file": ca.file}}})
    proc.ssl_context = ca.client_context(client)
    with proc:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{proc.url}/health", ssl=ca.client_context(client)) as r:
                assert r.status == 200
            for context in (ca.client_context(), ca.client_context(stranger)):
                with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                    async with http.get(f"{proc.url}/health", ssl=context) as r:
                        await r.read()


# ---- DIMSE ------------------------------------------------------------------------------------

def test_dimse_listener_over_tls_with_client_certificates(tmp_path, ca, other_ca):
    server = ca.issue("gateway-dimse", server=True)
    client = ca.issue("dimse-client", server=False)
    stranger = other_ca.issue("dimse-stranger", server=False)
    proc = GatewayProcess(tmp_path, extra={"dimse": {"tls": {
        "cert_file": server.cert, "key_file": server.key, "ca_file": ca.file,
        "require_client_cert": True}}})
    with proc:
        assert _echo(proc.dimse_port, (ca.client_context(client), "localhost"))
        assert not _echo(proc.dimse_port, (ca.client_context(), "localhost"))  # no certificate
        assert not _echo(proc.dimse_port, (ca.client_context(stranger), "localhost"))
        assert not _echo(proc.dimse_port)  # plain TCP: the port serves only TLS
        assert proc.check_alive() is None


def test_dimse_listener_over_tls_without_client_certificates(tmp_path, ca, other_ca):
    server = ca.issue("gateway-dimse-2", server=True)
    proc = GatewayProcess(tmp_path, extra={"dimse": {"tls": {
        "cert_file": server.cert, "key_file": server.key}}})
    with proc:
        assert _echo(proc.dimse_port, (ca.client_context(), "localhost"))
        assert not _echo(proc.dimse_port, (other_ca.client_context(), "localhost"))


async def test_event_reports_to_a_tls_peer(tmp_path, ca, other_ca):
    receiver_pair = ca.issue("receiver", server=True)
    gateway_client = ca.issue("gateway-as-client", server=False)
    good = EventReceiver("TLS_PEER", ssl_context=ca.server_context(receiver_pair, client_ca=ca))
    rogue_pair = other_ca.issue("rogue", server=True)
    rogue = EventReceiver("ROGUE_PEER", ssl_context=other_ca.server_context(rogue_pair))
    peers = {"TLS_PEER": {**good.peer(), "tls": True, "ca_file": ca.file,
                          "cert_file": gateway_client.cert, "key_file": gateway_client.key},
             "ROGUE_PEER": {**rogue.peer(), "tls": True, "ca_file": ca.file}}
    with good, rogue, GatewayProcess(tmp_path, extra={
            "peers": peers, "events": {"retry_initial_seconds": 0.1,
                                       "retry_max_seconds": 0.5}}) as proc:
        async with aiohttp.ClientSession() as http:
            for ae in peers:
                async with http.post(f"{proc.base}/workitems/{GLOBAL}/subscribers/{ae}") as r:
                    assert r.status == 201
            uid = new_uid()
            async with http.post(f"{proc.base}/workitems?workitem={uid}", json=workitem(),
                                 headers=JSON) as r:
                assert r.status == 201
        assert good.wait_for(1, uid=uid)
        record = await proc.wait_for_log("N-EVENT-REPORT failed; will retry", ae="ROGUE_PEER")
        assert "certificate" in str(record).lower()
        assert not rogue.received(uid=uid)
