"""The XML media types of PS3.18 §8.7.3.2 for the Modality Worklist and MPPS services: datasets
in the Native DICOM Model (PS3.19 A.1), and the negotiation between it and DICOM JSON.

One dataset is ``application/dicom+xml``; a list of results is ``multipart/related;
type="application/dicom+xml"``, one part per dataset (also the answer to a search request that
accepts only ``application/dicom+xml``: a list has no single-document XML form).
"""

from __future__ import annotations

import uuid
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web
from pydicom.datadict import keyword_for_tag

from gateway.ups.dataset import Dataset

JSON, XML, MULTIPART_XML = "json", "xml", "multipart-xml"
DICOM_XML = "application/dicom+xml"
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def negotiate(request: web.Request) -> str:
    """JSON (the default) unless the client accepts only an XML form; 406 for neither."""
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return JSON
    xml = None
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", "application/dicom+json", "application/json", ""):
            return JSON
        if media.startswith("multipart/related"):
            if "dicom+json" in part or "type" not in part:
                return JSON
            if DICOM_XML in part:
                xml = MULTIPART_XML
        elif media == DICOM_XML:
            xml = xml or XML
    if xml:
        return xml
    raise web.HTTPNotAcceptable(text="Only application/dicom+json and application/dicom+xml "
                                "(also as multipart/related) responses are offered")


def response(datasets: list[Dataset], media: str, headers: dict[str, str], *,
             single: bool = False, status: int = 200) -> web.Response:
    """``datasets`` as XML: one document (``single``) or a multipart/related list."""
    if single:
        return web.Response(body=document(datasets[0]), status=status, headers=headers,
                            content_type=DICOM_XML, charset="utf-8")
    boundary = uuid.uuid4().hex
    parts = [b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom+xml; "
             b"charset=utf-8\r\n\r\n" + document(ds) + b"\r\n" for ds in datasets]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    headers = {**headers, "Content-Type":
               f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'}
    return web.Response(body=body, status=status, headers=headers)


def document(ds: Dataset) -> bytes:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<NativeDicomModel xml:space="preserve">', *_attributes(ds), "</NativeDicomModel>"]
    return "".join(lines).encode("utf-8")


def _attributes(ds: Dataset):
    for tag in sorted(ds):
        elem = ds[tag]
        vr = elem.get("vr", "UN")
        keyword = _keyword(tag)
        head = f"<DicomAttribute tag={quoteattr(tag)} vr={quoteattr(vr)}"
        if keyword:
            head += f" keyword={quoteattr(keyword)}"
        yield head + ">"
        if "InlineBinary" in elem:
            yield f"<InlineBinary>{escape(elem['InlineBinary'])}</InlineBinary>"
        for number, value in enumerate(elem.get("Value") or (), 1):
            if vr == "SQ":
                yield f'<Item number="{number}">'
                yield from _attributes(value or {})
                yield "</Item>"
            elif vr == "PN":
                yield _person_name(number, value)
            elif value is not None:
                yield f'<Value number="{number}">{escape(str(value))}</Value>'
        yield "</DicomAttribute>"


def _person_name(number: int, value) -> str:
    groups = value if isinstance(value, dict) else {"Alphabetic": str(value or "")}
    out = [f'<PersonName number="{number}">']
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        text = groups.get(group)
        if not text:
            continue
        out.append(f"<{group}>")
        for part, component in zip(_PN_PARTS, text.split("^")):
            if component:
                out.append(f"<{part}>{escape(component)}</{part}>")
        out.append(f"</{group}>")
    out.append("</PersonName>")
    return "".join(out)


def _keyword(tag: str) -> str:
    try:
        return keyword_for_tag(int(tag, 16)) or ""
    except ValueError:
        return ""
