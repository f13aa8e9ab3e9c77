"""TLS contexts from the configured PEM files (PS3.15 Annex B secure transport for DIMSE;
HTTPS/WSS for UPS-RS): TLS 1.2 at least, the library's default cipher choice."""

from __future__ import annotations

import ssl


def server_context(cert_file: str, key_file: str, client_ca_file: str | None = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A listener's context; with ``client_ca_file`` client certificates are verified against it
    (required when ``require_client_cert``, else optional but checked when sent)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(ca_file: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None) -> ssl.SSLContext:
    """An outgoing connection's context: the server's certificate verified (against
    ``ca_file``, else the system's CAs) and its name checked; our certificate when given."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def peer_subject(transport) -> str | None:
    """The verified client certificate's subject common name, if the peer sent one."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None
